"""A grid in slices: the records of a large study are made from its points slice by slice, each
slice a Tune run of its own, so the driver's memory follows a slice and not the study (issue 23.3)."""

from __future__ import annotations

import pandas as pd
import pytest

from sensitivity import study as study_module
from sensitivity.study import Study
from sensitivity.sweep import grid, run_study

TASK = {"dataset": "digits", "model": "logreg", "batch_size": 256, "epochs": 1}


def grid_study(lrs, seeds=2) -> Study:
    return Study.from_dict({"name": "sliced", "task": TASK, "seeds": seeds,
                            "optimizers": [{"name": "sgd", "lr": lrs}, {"name": "adam-hd", "lr": [1e-3], "beta": [0.0, 1e-4]}]})


def test_slices_are_the_trials_in_order_and_a_large_study_keeps_no_list(monkeypatch):
    small = grid_study([0.01, 0.1, 1.0], seeds=3)
    every = small.trials()
    slices = list(small.trial_slices(4))
    assert [len(s) for s in slices] == [4, 4, 4, 3]
    assert [r.trial_id for s in slices for r in s] == [r.trial_id for r in every]
    assert [r.trial_id for r in small.point_records()] == [r.trial_id for r in every[::3]]

    monkeypatch.setattr(study_module, "KEEP_TRIALS", 10)  # "large": more trials than it keeps
    large = grid_study([0.01, 0.1, 1.0], seeds=3)
    assert [r.trial_id for r in large.iter_trials()] == [r.trial_id for r in every]
    assert [r.trial_id for s in large.trial_slices(5) for r in s] == [r.trial_id for r in every]
    assert large.trials() == every and not large._cache  # made again from the points, never kept


@pytest.mark.slow
def test_a_grid_runs_slice_by_slice_every_trial_once_and_resumes(tmp_path, ray_local, monkeypatch):
    monkeypatch.setattr(grid, "SLICE", 3)
    names = []
    tuner_run = grid.tuner_run
    monkeypatch.setattr(grid, "tuner_run", lambda *a, **k: names.append(k["name"]) or tuner_run(*a, **k))
    study = grid_study([0.01, 0.1])
    summary = run_study(study, out=tmp_path, quiet=True)
    trials = pd.read_parquet(tmp_path / "sliced" / "trials.parquet")
    assert summary.ran == 8 and summary.missing == 0 and summary.total == 8
    assert trials["trial_id"].is_unique and set(trials["trial_id"]) == {r.trial_id for r in study.trials()}
    assert len(names) == 3 and [n.split("-")[-1] for n in names[1:]] == ["slice1", "slice2"]

    names.clear()  # an edited grid: only the new trials run, in the slices that hold them
    edited = grid_study([0.01, 0.1, 1.0])
    again = run_study(edited, out=tmp_path, quiet=True)
    trials = pd.read_parquet(tmp_path / "sliced" / "trials.parquet")
    assert again.ran == 2 and again.skipped == 8 and len(trials) == 10 and trials["trial_id"].is_unique
    assert len(names) == 1
