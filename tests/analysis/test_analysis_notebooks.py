"""The notebooks run top to bottom (nbclient, the venv's python3 kernel) on generated results."""
from __future__ import annotations

import json
import os
import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "analysis" / "notebooks"
KERNEL = "sensitivity-analysis-tests"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A kernelspec that runs this very interpreter (the venv's), found first through JUPYTER_PATH.

    A user-level "python3" kernel could point at another Python without this project installed.
    """
    pytest.importorskip("ipykernel")
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "sensitivity tests", "language": "python",
        "env": {"PYTHONPATH": str(ROOT), "MPLBACKEND": "module://matplotlib_inline.backend_inline"},
    }))
    previous = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(root), previous]))
    yield KERNEL
    if previous is None:
        os.environ.pop("JUPYTER_PATH")
    else:
        os.environ["JUPYTER_PATH"] = previous


def run(name: str, first_cell: str, cwd: pathlib.Path, kernel: str):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert notebook.cells[0].cell_type == "code" and "RESULTS_DIR" in notebook.cells[0].source
    notebook.cells[0].source = first_cell
    client = nbclient.NotebookClient(notebook, timeout=240, kernel_name=kernel,
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return notebook


def images(notebook) -> int:
    return sum("image/png" in out.get("data", {}) for cell in notebook.cells for out in cell.get("outputs", []))


def test_study_notebook(results_dir, tmp_path, kernel):
    notebook = run("study.ipynb", f"RESULTS_DIR = {str(results_dir)!r}", tmp_path, kernel)
    assert images(notebook) >= 8  # valley, decay, hd, expected best, importance, curves, lr, gamma, ...


def test_compare_notebook(two_results_dirs, tmp_path, kernel):
    vgg, resnet = two_results_dirs
    first = f"RESULTS_DIRS = {{'VGG16': {str(vgg)!r}, 'ResNet-18': {str(resnet)!r}}}"
    notebook = run("compare.ipynb", first, tmp_path, kernel)
    assert images(notebook) == 2
    widths = next(out["data"]["text/plain"] for cell in notebook.cells for out in cell.get("outputs", [])
                  if "width_decades" in cell.source and "data" in out)
    assert "ResNet-18" in widths and "VGG16" in widths


def test_compare_notebook_opens_what_make_demo_writes(results_dir, tmp_path, kernel):
    # the shipped first cell, run from analysis/notebooks' place relative to results/quickstart
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "quickstart").symlink_to(results_dir)
    cwd = tmp_path / "analysis" / "notebooks"
    cwd.mkdir(parents=True)
    shipped = nbformat.read(NOTEBOOKS / "compare.ipynb", as_version=4).cells[0].source
    assert "../../results/quickstart" in shipped
    notebook = run("compare.ipynb", shipped, cwd, kernel)
    assert images(notebook) == 2
