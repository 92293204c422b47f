"""Trial identity: one id per effective config, repeats rejected, old tables migrated.

Budget: a few seconds; no Ray, no training.
"""

from __future__ import annotations

import json

import pytest

from sensitivity import identity, train
from sensitivity.identity import canonical_config, legacy_ids, legacy_trial_id, trial_id
from sensitivity.results import ResultsStore, load
from sensitivity.study import Study, StudyError

BASE = {"dataset": "digits", "model": "mlp", "model_args": {"hidden": [16]}, "optimizer": "sgdn",
        "lr": 1e-2, "seed": 0, "epochs": 2}
TASK = {"dataset": "digits", "model": "mlp", "model_args": {"hidden": [16]}, "epochs": 1}


@pytest.mark.parametrize("same", [
    {"weight_decay": 0},                       # an explicit default
    {"weight_decay": 0.0, "train_fraction": 1},
    {"momentum_in_args": 0.9},                 # the optimizer's own default, spelt out
    {"divergence_factor": 10},                 # 10 vs the default 10.0
    {"thresholds": []},
    {"batch_size": 128, "decay": None, "loss_smoothing": 0.98},
])
def test_a_config_written_two_ways_has_one_id(same):
    config = dict(BASE)
    if "momentum_in_args" in same:
        config["optimizer_args"] = {"momentum": same.pop("momentum_in_args")}
    assert trial_id({**config, **same}) == trial_id(BASE)


def test_numbers_lists_and_aliases_are_canonical():
    sgd = {**BASE, "optimizer": "sgd", "lr": 0.1}
    assert trial_id({**sgd, "divergence_factor": 5}) == trial_id({**sgd, "divergence_factor": 5.0})
    assert trial_id({**sgd, "thresholds": 0.5}) == trial_id({**sgd, "thresholds": [0.5]})
    assert trial_id({**sgd, "thresholds": [1.0, 0.5]}) == trial_id({**sgd, "thresholds": [0.5, 1]})
    hd = {**BASE, "optimizer": "sgd-hd", "beta": 1e-3}
    assert trial_id(hd) == trial_id({**hd, "optimizer": "sgd-hd-sgd"})
    assert trial_id(hd) == trial_id({**BASE, "optimizer": "sgd-hd"})  # beta 1e-3 is sgd-hd's default
    assert canonical_config(hd)["optimizer"] == "sgd-hd-sgd"
    # where and how a trial runs is not what it computes
    assert trial_id({**BASE, "device": "cpu", "data_dir": "/x", "label": "a", "study": "s"}) == trial_id(BASE)
    # the old (spelling-based) ids disagree on exactly these cases
    assert legacy_trial_id({**BASE, "weight_decay": 0}) != legacy_trial_id(BASE)


@pytest.mark.parametrize("change", [{"lr": 2e-2}, {"seed": 1}, {"epochs": 3}, {"weight_decay": 1e-4},
                                    {"optimizer_args": {"momentum": 0.5}}, {"thresholds": [0.4]},
                                    {"optimizer": "adam"}])
def test_what_a_trial_computes_changes_its_id(change):
    assert trial_id({**BASE, **change}) != trial_id(BASE)


def test_a_default_that_changes_between_versions_changes_the_id(monkeypatch):
    before = trial_id(BASE)
    identity._id_of.cache_clear()
    monkeypatch.setitem(train.DEFAULTS, "divergence_factor", 20.0)
    try:
        assert trial_id(BASE) != before
        assert trial_id({**BASE, "divergence_factor": 10.0}) == before
    finally:
        identity._id_of.cache_clear()


def _study(entries, **task):
    return Study.from_dict({"name": "s", "task": {**TASK, **task}, "seeds": 2, "optimizers": entries})


def test_a_study_with_an_explicit_default_expands_to_the_same_ids():
    plain = _study([{"name": "sgdn", "lr": [0.1, 1.0]}])
    spelt = _study([{"name": "sgdn", "lr": [0.1, 1], "momentum": 0.9}], weight_decay=0)
    assert {trial_id(c) for c in plain.trials()} == {trial_id(c) for c in spelt.trials()}


@pytest.mark.parametrize("entries, message", [
    ([{"name": "sgd", "lr": [0.01, 1.0e-2, 0.1]}], r"optimizers\[0\]\.lr: value 0.01 is given twice"),
    ([{"name": "sgdn", "lr": 0.1, "momentum": [0, 0.0]}], r"optimizers\[0\]\.momentum: value 0.0 is given twice"),
    ([{"name": "adam", "betas": [[0.9, 0.999], [0.9, 0.999]]}], r"optimizers\[0\]\.betas: value .* given twice"),
    ([{"name": "sgd-hd", "lr": 0.1}, {"name": "sgd-hd-sgd", "lr": 0.1}], r"optimizers\[1\]: repeats trials of "
                                                                          r"optimizers\[0\]"),
    ([{"name": "sgdn", "lr": 0.1}, {"name": "sgdn", "lr": 0.1, "momentum": 0.9}], r"optimizers\[1\]: repeats"),
])
def test_repeated_values_and_entries_are_rejected(entries, message):
    with pytest.raises(StudyError, match=message):
        _study(entries)


def test_validate_exits_2_on_a_repeated_value(tmp_path, capsys):
    import yaml

    from sensitivity.cli import main

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "task": TASK, "optimizers": [{"name": "sgd", "lr": [0.01, 1.0e-2]}]}))
    assert main(["validate", str(path)]) == 2
    assert "optimizers[0].lr: value 0.01 is given twice" in capsys.readouterr().err


def test_tables_with_legacy_ids_are_migrated_without_rerunning(tmp_path):
    study = _study([{"name": "sgdn", "lr": [0.1, 1.0], "momentum": 0.9}], weight_decay=0)
    pairs = list(study.spelled_trials())
    store = ResultsStore(tmp_path)
    old = [legacy_trial_id(spelled) for spelled, _ in pairs]
    store.append([{"trial_id": t, "status": "ok", "min_train_loss": 1.0} for t in old[:3]],
                 [{"trial_id": t, "epoch": 1, "train_loss": 1.0} for t in old[:3]])
    mapping = legacy_ids(pairs)
    assert set(old) <= set(mapping)
    assert store.rename(mapping) == 3
    new = [record.trial_id for _, record in pairs]
    again = ResultsStore(tmp_path)
    assert again.done_ids() == set(new[:3])
    trials, curves = load(tmp_path)
    assert set(curves["trial_id"]) == set(new[:3]) and len(curves) == 3
    assert again.rename(mapping) == 0  # a second run finds nothing to migrate


def test_rename_keeps_a_row_whose_new_id_is_already_stored(tmp_path):
    store = ResultsStore(tmp_path)
    store.append([{"trial_id": "old", "status": "ok"}, {"trial_id": "new", "status": "ok"}], [])
    assert store.rename({"old": "new"}) == 0
    assert sorted(ResultsStore(tmp_path).trials["trial_id"]) == ["new", "old"]


def test_which_stored_grid_rows_are_current_after_the_study_changes(tmp_path):
    from sensitivity.preflight import current_rows as _current

    before = _study([{"name": "sgd", "lr": [0.1, 1.0]}])
    store = ResultsStore(tmp_path)
    store.append([{"trial_id": trial_id(c), "status": "ok", "label": c.label} for c in before.trials()], [])
    # the default written out: the same trials, nothing stale, nothing to run again
    current = _current(_study([{"name": "sgd", "lr": [0.1, 1.0]}], weight_decay=0), store, False)
    assert current.stale() == 0 and set(current.labels) == store.done_ids()
    # a renamed label relabels the stored rows (analysis reads the labels from current.json)
    current = _current(_study([{"name": "sgd", "label": "plain", "lr": [0.1, 1.0]}]), store, False)
    assert current.stale() == 0 and set(current.labels.values()) == {"plain"}
    current.write()
    assert json.loads((tmp_path / "current.json").read_text())["trials"] == current.labels
    # a changed task: every stored row is stale, and every trial runs again
    current = _current(_study([{"name": "sgd", "lr": [0.1, 1.0]}], epochs=20), store, False)
    assert current.stale() == 4 and not set(current.labels) & store.done_ids()
