"""Fixtures for the analysis tests: generated results directories (see synthetic_results.py)."""
from __future__ import annotations

import pathlib
import sys

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot

import pytest
from synthetic_results import generate, write

ROOT = pathlib.Path(__file__).resolve().parents[2]
# pytest puts tests/ on sys.path, where this directory (tests/analysis, no __init__.py) is a
# namespace package called `analysis`. Without the repo root on sys.path (`.venv/bin/pytest`
# rather than `python -m pytest`) it would shadow the real package; a regular package found
# anywhere on sys.path wins over namespace portions, so the root only has to be there.
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))


@pytest.fixture(scope="session")
def results_dir(tmp_path_factory) -> pathlib.Path:
    """A results directory of the generated study (gammas stored as lists)."""
    return write(tmp_path_factory.mktemp("results") / "fixture", *generate())


@pytest.fixture(scope="session")
def two_results_dirs(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """Two studies to compare: narrow valleys ("vgg") and wide ones ("resnet", gammas as strings)."""
    root = tmp_path_factory.mktemp("compare")
    return (write(root / "vgg", *generate("vgg", width=0.7, seed=1)),
            write(root / "resnet", *generate("resnet", width=2.0, seed=2, gammas_as="str")))
