"""The shipped study files: each validates, smoke-runs, names what it reproduces, and has its trial
count stated correctly in experiments/README.md (the quickstart's also in README.md, if claimed there).

Budget: the validation and README tests take about 15 s in all. The smoke runs share one local Ray
session; the small-model files take about 2 minutes on 2 cores, mostly Ray Tune's fixed cost of about
5 s per study. The eight VGG16/ResNet files' Ray smoke runs (about 3 minutes) are marked `exhaustive`
and run under `make test-all`; `make test` trains one smoke trial of each kind they contain instead.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sensitivity.study import load_study

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
STUDY_FILES = sorted(EXPERIMENTS.rglob("*.yaml"))
IDS = [p.relative_to(EXPERIMENTS).as_posix() for p in STUDY_FILES]
QUICKSTART = EXPERIMENTS / "quickstart.yaml"


def _header(path: Path) -> str:
    """The comment block at the top of a study file, as one line of text."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# "))
    return " ".join(lines)


def _readme_counts() -> dict[str, int]:
    """Study file (relative to experiments/) -> trial count, from the studies table of the README.

    A row names its file as `path.yaml` in its first cell and the count in the cell after the
    `trials` header.
    """
    text = (EXPERIMENTS / "README.md").read_text()
    counts: dict[str, int] = {}
    col = None
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if not cells:
            col = None
            continue
        if "trials" in cells:
            col = cells.index("trials")
            continue
        match = re.search(r"`([\w/.-]+\.yaml)`", cells[0])
        if col is not None and match and len(cells) > col:
            counts[match.group(1)] = int(cells[col].replace(",", ""))
    return counts


def test_every_directory_of_the_issue_has_studies():
    names = set(IDS)
    assert "quickstart.yaml" in names
    for folder in ("robustness", "hypergradient_variants", "camhd"):
        assert any(n.startswith(folder + "/") for n in names), folder


@pytest.mark.parametrize("path", STUDY_FILES, ids=IDS)
def test_study_file_validates_and_names_its_source(path):
    study = load_study(path)
    assert sum(study.counts()) > 0
    header = _header(path)
    assert re.search(r"\bpaper 00[123]\b", header, re.I), f"{path.name}: header does not name the paper"
    assert re.search(r"\b(Figures?|Table|Section) \d", header), f"{path.name}: header names no figure/table"


def test_study_names_are_unique():
    names = [load_study(p).name for p in STUDY_FILES]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_cli_validate_agrees_with_load_study():
    proc = subprocess.run([sys.executable, "-m", "sensitivity.cli", "validate", str(QUICKSTART)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    total = sum(load_study(QUICKSTART).counts())
    assert re.search(rf"\btotal\b\D*\b{total}\b", proc.stdout, re.I), proc.stdout


def test_readme_states_every_study_and_its_trial_count():
    stated = _readme_counts()
    assert set(stated) == set(IDS), {"missing": sorted(set(IDS) - set(stated)),
                                     "unknown": sorted(set(stated) - set(IDS))}
    for name, count in stated.items():
        assert sum(load_study(EXPERIMENTS / name).counts()) == count, name


# every figure and table of the three papers, by the README section of its paper
PAPER_ITEMS = {
    "Paper 003": [f"Figure {n}" for n in range(1, 8)] + ["Appendix A"],
    "Paper 001": ["Figure 1", "Section 4"],
    "Paper 002": [f"Figure {n}" for n in range(1, 11)] + [f"Table {n}" for n in range(1, 4)],
}


def test_readme_maps_every_figure_and_table_to_a_study_file_and_an_output():
    text = (EXPERIMENTS / "README.md").read_text()
    for paper, items in PAPER_ITEMS.items():
        section = text.split(paper + ":", 1)[1].split("\nPaper 00", 1)[0].split("\n## ", 1)[0]
        rows = [[c.strip() for c in line.strip().strip("|").split("|")]
                for line in section.splitlines() if line.startswith("| ")]
        for item in items:
            row = next((r for r in rows if re.match(rf"{item}(?!\d)", r[0])), None)
            assert row is not None, f"{paper}: no row for {item}"
            files = re.findall(r"`([\w/.-]+\.yaml)`", row[2])
            assert files and all((EXPERIMENTS / f).exists() for f in files), (paper, item, row[2])
            assert row[3], (paper, item)


def test_quickstart_claims_match_its_trial_count():
    total = sum(load_study(QUICKSTART).counts())
    text = (EXPERIMENTS / "README.md").read_text()
    claims = re.findall(r"quickstart[^\n]*?\b(\d[\d,]*) trials", text, re.I)
    assert claims, "experiments/README.md states no quickstart trial count"
    assert {int(c.replace(",", "")) for c in claims} == {total}
    readme = ROOT / "README.md"  # the top-level README quotes the same number, when it states one
    if readme.exists():
        quoted = re.findall(r"quickstart[^\n]*?\b(\d[\d,]*) trials", readme.read_text(), re.I)
        assert {int(c.replace(",", "")) for c in quoted} <= {total}


HEAVY_MODELS = {"vgg16", "resnet18", "resnet34"}


def _is_heavy(path: Path) -> bool:
    return load_study(path).trials(smoke=True)[0].model in HEAVY_MODELS


SMOKE_RUNS = [pytest.param(p, id=i, marks=[pytest.mark.slow] + ([pytest.mark.exhaustive] if _is_heavy(p) else []))
              for p, i in zip(STUDY_FILES, IDS)]


@pytest.mark.parametrize("path", SMOKE_RUNS)
def test_study_file_smoke_runs(path, tmp_path, ray_local):
    """`sensitivity run --smoke` of every file through Ray Tune. The eight VGG16/ResNet files are
    marked `exhaustive` (about 3 minutes on 2 cores): `make test-all` runs them, `make test` covers
    their trials with the in-process check below."""
    from sensitivity.sweep import run_study

    study = load_study(path)
    run_study(study, out=tmp_path, smoke=True, quiet=True)
    trials = pd.read_parquet(tmp_path / study.name / "trials.parquet")
    assert len(trials) == sum(study.counts(smoke=True))
    errors = trials[trials["status"] == "error"]
    assert errors.empty, errors[["optimizer", "error"]].to_string()
    # every entry ran, under its display name
    assert set(trials["label"]) == {study.label(i) for i in range(len(study.entries))}
    assert (tmp_path / study.name / "curves.parquet").exists()


@pytest.mark.slow
def test_every_kind_of_heavy_smoke_trial_trains():
    """Each heavy model, and each distinct (optimizer, its hyperparameter keys, decay, augment) among
    the smoke trials of the VGG16/ResNet files, trains to an `ok` row, in-process and without Ray.

    An optimizer kind trains on one of the models its files give it (the update rule does not depend
    on the model); every model trains at least once."""
    import torch

    from sensitivity.train import run_trial

    kinds, first = {}, {}
    for path in STUDY_FILES:
        for config in load_study(path).trials(smoke=True):
            if config.model not in HEAVY_MODELS:
                continue
            key = (config.optimizer, tuple(sorted(config.optimizer_args)), config.decay is not None, config.augment)
            kinds.setdefault(key, config)
            first.setdefault(config.model, config)
    for model, config in first.items():  # a model no kind landed on
        if all(c.model != model for c in kinds.values()):
            kinds[("model", model)] = config
    assert {c.model for c in kinds.values()} == set(HEAVY_MODELS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for key, config in kinds.items():
            row = run_trial(config).row
            assert row["status"] == "ok", (key, row.get("error"))
            assert row["steps"] >= 1
    finally:
        torch.set_num_threads(threads)
