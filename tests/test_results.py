"""The results tables: stable trial ids, append without duplicates, atomic files, crash leftovers.

Budget: under a second; no Ray, no training.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from sensitivity.results import CURVES, TRIALS, ResultsStore, clean_row, load, trial_id

BASE = {"dataset": "digits", "model": "mlp", "model_args": {"hidden": [16]}, "optimizer": "sgd-hd",
        "lr": 1e-3, "beta": 1e-4, "seed": 0, "epochs": 2, "decay": {"every_epochs": 5, "factor": 0.5}}


def row(tid, status="ok", loss=1.0):
    return {"trial_id": tid, "status": status, "min_train_loss": loss, "min_test_loss": loss,
            "final_train_loss": loss, "final_test_loss": loss, "error": None}


def curve(tid, epochs=2):
    return [{"trial_id": tid, "epoch": e, "train_loss": 1.0 / e} for e in range(1, epochs + 1)]


def test_trial_id_is_stable_and_ignores_where_a_trial_runs():
    tid = trial_id(BASE)
    assert len(tid) == 16 and int(tid, 16) >= 0
    reordered = dict(reversed(list(BASE.items())))
    assert trial_id(reordered) == tid
    assert trial_id({**BASE, "lr": 0.001}) == tid  # one number, one id
    assert trial_id({**BASE, "model_args": {"hidden": (16,)}}) == tid
    assert trial_id({**BASE, "data_dir": "/data", "device": "cuda", "label": "x", "study": "s"}) == tid
    assert trial_id({**BASE, "optimizer_args": {}, "thresholds": None}) == tid  # defaults, spelled out


@pytest.mark.parametrize("change", [{"lr": 2e-3}, {"seed": 1}, {"beta": 1e-5}, {"epochs": 3},
                                    {"decay": None}, {"model_args": {"hidden": [32]}}])
def test_trial_id_changes_with_what_a_trial_computes(change):
    assert trial_id({**BASE, **change}) != trial_id(BASE)


def test_clean_row_never_leaves_nan_losses_and_flattens_nested_values():
    cleaned = clean_row({"trial_id": "a", "min_train_loss": float("nan"), "min_test_loss": None,
                         "gammas": [0.2, 0.8], "lr": 0.1})
    assert cleaned["min_train_loss"] == math.inf and cleaned["min_test_loss"] == math.inf
    assert cleaned["gammas"] == "[0.2, 0.8]" and cleaned["lr"] == 0.1


def test_append_writes_both_tables_once_per_trial(tmp_path):
    store = ResultsStore(tmp_path / "study")
    assert store.append([row("a"), row("b", "diverged", math.inf)], curve("a") + curve("b")) == 2
    # a retried trial (lost worker) reports again: it is not stored twice
    assert store.append([row("a"), row("c")], curve("a") + curve("c")) == 1
    trials, curves = load(tmp_path / "study")
    assert sorted(trials["trial_id"]) == ["a", "b", "c"]
    assert curves.groupby("trial_id").size().to_dict() == {"a": 2, "b": 2, "c": 2}
    assert trials.loc[trials.trial_id == "b", "min_train_loss"].item() == math.inf
    assert sorted(p.name for p in (tmp_path / "study").iterdir()) == [CURVES, TRIALS]  # no temp files left
    # a new store (a resumed run) sees the same done set
    assert ResultsStore(tmp_path / "study").done_ids() == {"a", "b", "c"}


def test_curves_of_unfinished_trials_are_dropped_on_load(tmp_path):
    store = ResultsStore(tmp_path)
    store.append([row("a")], curve("a"))
    # a crash between the curves write and the trials write leaves curves of a trial not done
    orphan = pd.concat([store.curves, pd.DataFrame(curve("x"))], ignore_index=True)
    orphan.to_parquet(tmp_path / CURVES)
    resumed = ResultsStore(tmp_path)
    assert set(resumed.curves["trial_id"]) == {"a"}
    resumed.append([row("x")], curve("x"))  # the rerun of x: its curve once, not twice
    assert (load(tmp_path)[1]["trial_id"] == "x").sum() == 2


def test_drop_forgets_trials_so_they_run_again(tmp_path):
    store = ResultsStore(tmp_path)
    store.append([row("a"), row("b", "error")], curve("a") + curve("b"))
    store.drop(["b"])
    trials, curves = load(tmp_path)
    assert list(trials["trial_id"]) == ["a"] and set(curves["trial_id"]) == {"a"}


def test_ensure_tables_and_missing_results(tmp_path):
    with pytest.raises(FileNotFoundError, match="trials"):
        load(tmp_path / "nothing")
    store = ResultsStore(tmp_path / "empty")
    store.ensure_tables()
    trials, curves = load(tmp_path / "empty")
    assert trials.empty and curves.empty and "trial_id" in trials
