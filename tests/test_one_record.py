"""One record per trial: however a study spells a trial, it is one id, one series and one set of row columns.

Each reproducer of the issue that split series, lost tables or overwrote a study is a test here.
Budget: about 20 s; no Ray (the run plan's paths with nothing left to run never start it).
"""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import yaml

import analysis
from sensitivity import outcome, preflight, results
from sensitivity.cli import main
from sensitivity.lease import Lease
from sensitivity.preflight import plan_run
from sensitivity.record import TrialRecord
from sensitivity.results import ResultsStore
from sensitivity.study import Study, StudyError, load_study
from sensitivity.sweep.worker import run_one

pytestmark = pytest.mark.usefixtures("one_thread")
TASK = {"dataset": "digits", "model": "mlp", "model_args": {"hidden": [8]}, "batch_size": 256, "epochs": 1,
        "device": "cpu"}
BASE = {**TASK, "seed": 0}

SPELLINGS = [  # (what it tests, one spelling, another spelling of the same trial)
    ("an explicit default", {"optimizer": "adam", "lr": 0.01},
     {"optimizer": "adam", "lr": 0.01, "optimizer_args": {"betas": [0.9, 0.999], "eps": 1e-8}}),
    ("an explicit default of the task", {"optimizer": "sgd", "lr": 0.1},
     {"optimizer": "sgd", "lr": 0.1, "weight_decay": 0, "train_fraction": 1, "augment": False}),
    ("an alias", {"optimizer": "sgd-hd", "lr": 0.1}, {"optimizer": "sgd-hd-sgd", "lr": 0.1, "beta": 1e-3}),
    ("an int for a float", {"optimizer": "adam", "lr": 0.01, "optimizer_args": {"betas": [0, 0.9]}},
     {"optimizer": "adam", "lr": 0.01, "optimizer_args": {"betas": [0.0, 0.9]}}),
    ("an int momentum", {"optimizer": "sgdn", "lr": 0.01, "optimizer_args": {"momentum": 1}},
     {"optimizer": "sgdn", "lr": 0.01, "optimizer_args": {"momentum": 1.0}}),
    ("a scalar for a list", {"optimizer": "sgd", "lr": 0.1, "thresholds": 2.0},
     {"optimizer": "sgd", "lr": 0.1, "thresholds": [2]}),
    ("1e-3 and 0.001", {"optimizer": "sgd-hd", "lr": 1e-3, "beta": 1e-3},
     {"optimizer": "sgd-hd", "lr": 0.001, "beta": 0.0010}),
]


@pytest.mark.parametrize("what, one, other", SPELLINGS, ids=[s[0] for s in SPELLINGS])
def test_two_spellings_are_one_trial_one_series_and_one_set_of_columns(what, one, other):
    a, b = TrialRecord.from_config({**BASE, **one}), TrialRecord.from_config({**BASE, **other})
    assert a.trial_id == b.trial_id and a.columns() == b.columns()
    ok = run_one(a)[0]
    also = run_one(b)[0]
    error = outcome.error_row(b, "RuntimeError: boom", 0.1)
    identity = a.columns()
    for row in (ok, also, error):  # every row of the trial, whatever its status, spelt as the record
        assert {k: row[k] for k in identity} == identity
    other_lr = run_one(TrialRecord.from_config({**BASE, **other, "lr": a.lr * 2}))[0]
    table = analysis.prepare(pd.DataFrame([ok, {**error, "trial_id": "x" * 16}, other_lr]))
    assert table["series"].nunique() == 1, table["series"].unique()


@pytest.mark.slow
def test_study_files_that_spell_one_study_two_ways_run_it_once_and_load_one_series_each(tmp_path, capsys, ray_local):
    """Through the study file and the run path: a study run, then respelt (a scalar for a list, the
    canonical name for an alias, defaults spelt out, a float for an int), reruns nothing and keeps one
    series per entry (a renamed entry's old rows take its new label); an α0 added to the respelt study
    is one new trial of the same series. One Ray run (the rerun never starts Ray)."""
    out = tmp_path / "out"
    first = {"name": "spell", "task": TASK, "seeds": 1, "optimizers": [
        {"name": "adam", "lr": [0.01]},
        {"name": "sgd-hd", "lr": 0.1},
        {"name": "sgd", "lr": [0.1, 1]}]}
    second = {**first, "optimizers": [
        {"name": "adam", "lr": 0.01, "betas": [0.9, 0.999], "eps": 1.0e-8},
        {"name": "sgd-hd-sgd", "lr": 0.1, "beta": 0.001},
        {"name": "sgd", "lr": [0.1, 1.0], "weight_decay": 0.0}]}
    path = _write(tmp_path, first)
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    before = pd.read_parquet(out / "spell" / "trials.parquet")
    assert len(before) == 4
    path = _write(tmp_path, second)
    capsys.readouterr()
    assert main(["run", str(path), "--out", str(out)]) == 0
    assert "nothing to run; all 4 trials are in" in capsys.readouterr().out
    trials, curves = analysis.load(out / "spell")
    assert len(trials) == 4 and trials.attrs.get("stale_rows", 0) == 0
    assert sorted(trials["series"].unique()) == ["adam", "sgd", "sgd-hd-sgd"], trials["series"].unique()
    assert set(curves["trial_id"]) == set(before["trial_id"])
    # an α0 added to the respelt study is a point of the same series (its trial not yet run)
    added = load_study(_write(tmp_path, {**second, "optimizers": [{**second["optimizers"][0], "lr": [0.01, 0.003]},
                                                                  *second["optimizers"][1:]]}))
    new = [r for r in added.trials() if r.trial_id not in set(before["trial_id"])]
    assert [(r.optimizer, r.lr) for r in new] == [("adam", 0.003)]
    row = {**new[0].columns(), "status": "ok", "min_train_loss": 1.0, "min_test_loss": 1.0}
    both = analysis.prepare(pd.concat([trials, pd.DataFrame([row])], ignore_index=True))
    assert both.loc[both["optimizer"] == "adam", "series"].nunique() == 1


def test_an_errored_trial_carries_every_identity_column():
    record = TrialRecord.from_config({**BASE, "optimizer": "sgd", "lr": 0.1, "device": "cuda:7"})
    row, curve = run_one(record)  # no such device here: the trial raises
    assert row["status"] == "error" and curve == []
    assert {k: row[k] for k in record.columns()} == record.columns()
    fine = run_one(TrialRecord.from_config({**BASE, "optimizer": "sgd", "lr": 0.3}))[0]
    table = analysis.prepare(pd.DataFrame([fine, row]))
    assert table["series"].nunique() == 1 and "None" not in table["series"].iloc[0]


def _write(tmp_path, data: dict):
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _store_finished(location, records, *, smoke: bool, study: Study, rows=None) -> ResultsStore:
    """The tables a run leaves when it was killed after its last part and before its compaction."""
    store = ResultsStore(location)
    store.append(rows or [{**r.columns(), "status": "ok", "min_train_loss": 1.0, "min_test_loss": 1.0,
                           "init_train_loss": 2.3, "init_test_loss": 2.3} for r in records],
                 [{"trial_id": r.trial_id, "epoch": 1, "train_loss": 1.0, "test_loss": 1.0, "train_acc": 0.5,
                   "test_acc": 0.5, "lr": r.lr, "step": 6} for r in records])
    store.write_text("study.yaml", study.to_yaml(smoke))
    return store


def test_nothing_left_after_a_killed_compaction_still_leaves_both_tables(tmp_path, capsys):
    data = {"name": "killed", "task": TASK, "seeds": 2, "optimizers": [{"name": "sgd", "lr": [0.1, 1.0]}]}
    path = _write(tmp_path, data)
    study = load_study(path)
    _store_finished(tmp_path / "out" / "killed", study.trials(), smoke=False, study=study)
    assert not (tmp_path / "out" / "killed" / "trials.parquet").exists()
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    assert "nothing to run" in capsys.readouterr().out
    trials = pd.read_parquet(tmp_path / "out" / "killed" / "trials.parquet")  # as the README promises
    curves = pd.read_parquet(tmp_path / "out" / "killed" / "curves.parquet")
    assert len(trials) == 4 and len(curves) == 4 and not list((tmp_path / "out" / "killed").glob("parts/*"))


def test_smoke_with_nothing_left_never_overwrites_a_full_runs_record(tmp_path, capsys):
    # a full study whose trials are its own smoke trials (1 epoch, small batch, 1 seed, 2 lr)
    data = {"name": "full", "task": {**TASK, "batch_size": 16}, "seeds": 1,
            "optimizers": [{"name": "sgd", "lr": [0.1, 1.0]}]}
    path = _write(tmp_path, data)
    study = load_study(path)
    location = tmp_path / "out" / "full"
    _store_finished(location, study.trials(), smoke=False, study=study).compact()
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    saved = {name: (location / name).read_text() for name in ("study.yaml", "current.json")}
    capsys.readouterr()
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--smoke"]) == 2
    assert "already holds a full run" in capsys.readouterr().err
    assert {name: (location / name).read_text() for name in saved} == saved
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0  # the full study is still the full study


@pytest.mark.parametrize("large", [False, True])
def test_stored_rows_spelt_another_way_are_rewritten_to_one_series(tmp_path, monkeypatch, large):
    """Rows an older version wrote as the study spelt them (an alias, no defaults, a few columns in an
    error row) get the record's columns on the next run: one series, nothing rerun, curves kept. `large`:
    a study too large to hold, in miniature (its records made 2 at a time, its table read when asked)."""
    maps = []
    if large:
        monkeypatch.setattr(preflight, "RECORDS_AT_ONCE", 2)
        monkeypatch.setattr(results, "KEEP_ROWS", 2)
        real = ResultsStore.respell
        monkeypatch.setattr(ResultsStore, "respell", lambda self, records: real(
            self, [maps.append(len(m)) or m for m in records]))
    study = Study.from_dict({"name": "spelt", "task": TASK, "seeds": 1, "optimizers": [
        {"name": "adam", "lr": [0.001, 0.01, 0.1], "betas": [0.9, 0.999]},
        {"name": "sgd-hd", "lr": [0.01, 0.1]}]})
    records = study.trials()
    old = []
    for r in records:
        columns = r.columns()
        if r.optimizer == "adam" and r.lr < 0.1:  # the first run spelt no betas
            del columns["betas"], columns["eps"]
        if r.optimizer == "sgd-hd-sgd":
            columns.update(optimizer="sgd-hd")
            del columns["lr_min"], columns["lr_max"]
        if r.lr == 0.1 and r.optimizer == "adam":  # an error row of the old kind: a few raw keys
            columns = {k: columns[k] for k in ("trial_id", "study", "label", "optimizer", "lr", "seed")}
            columns.update(model_args=None, weight_decay=None, status="error", error="boom")
        else:
            columns.update(status="ok", min_train_loss=1.0 / r.lr, min_test_loss=1.0, init_train_loss=2.3,
                           init_test_loss=2.3)
        old.append(columns)
    location = tmp_path / "spelt"
    store = _store_finished(location, records, smoke=False, study=study, rows=old)
    store.compact()
    before = ResultsStore(location).trials
    assert "betas" not in before and set(before["optimizer"]) == {"adam", "sgd-hd"}
    with Lease(location) as lease:
        store = ResultsStore(location)
        store.guard = lease.check
        plan = plan_run(study, store)
    assert plan.rewritten == 5 and plan.left == 0
    assert not large or (max(maps) <= 2 and sum(maps) == 5)  # the records made 2 at a time
    trials, curves = analysis.load(location)
    assert sorted(trials["series"].unique()) == ["adam", "sgd-hd"]
    assert set(trials["trial_id"]) == {r.trial_id for r in records} and len(curves) == 5
    assert (trials.loc[trials["optimizer"] == "sgd-hd-sgd", "label"] == "sgd-hd").all()
    after = ResultsStore(location).trials.set_index("trial_id")
    for r in records:  # every row, the old error row included, spelt as its record
        for key, value in r.columns().items():
            if key not in ("trial_id", "label"):
                stored = after.at[r.trial_id, key]
                assert stored == value or (value is None and pd.isna(stored)), (r.trial_id, key, stored, value)
    with Lease(location) as lease:  # a second run finds nothing to rewrite
        store = ResultsStore(location)
        store.guard = lease.check
        assert plan_run(study, store).rewritten == 0


@pytest.mark.parametrize("thresholds, message", [
    ([2.0, 2.0000001], "print as 2"),
    ([0.5, 0.5], "given twice"),
])
def test_thresholds_that_would_share_a_column_are_rejected(tmp_path, capsys, thresholds, message):
    path = _write(tmp_path, {"name": "t", "task": {**TASK, "thresholds": thresholds},
                             "optimizers": [{"name": "sgd"}]})
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "thresholds" in err and message in err and len(err.strip().splitlines()) == 1


def test_integer_sequences_reach_torch_as_floats():
    row, _ = run_one(TrialRecord.from_config({**BASE, "optimizer": "adam", "lr": 0.01,
                                              "optimizer_args": {"betas": [0, 0.9]}}))
    assert row["status"] == "ok" and row["betas"] == "[0.0, 0.9]"
    study = Study.from_dict({"name": "b", "task": TASK, "optimizers": [{"name": "adam", "betas": [0, 0.9]}]})
    study.check_optimizers()  # what `run` checks before Ray starts, with torch


def test_compact_on_a_held_study_names_the_holder(tmp_path, capsys):
    location = tmp_path / "held"
    with Lease(location):  # a run that has not written its first part yet
        assert main(["compact", str(location)]) == 2
    err = capsys.readouterr().err
    assert "is in use by another run" in err and f"pid {os.getpid()}" in err, err


def test_a_corrupt_table_is_bad_input_for_every_command(tmp_path, capsys):
    data = {"name": "corrupt", "task": TASK, "optimizers": [{"name": "sgd", "lr": [0.1, 1.0]}]}
    path = _write(tmp_path, data)
    location = tmp_path / "out" / "corrupt"
    location.mkdir(parents=True)
    (location / "trials.parquet").write_bytes(b"this is not parquet")
    for argv in (["compact", str(location)], ["plot", str(location)],
                 ["run", str(path), "--out", str(tmp_path / "out")]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "trials.parquet" in err and len(err.strip().splitlines()) == 1, (argv, err)


@pytest.mark.parametrize("left", [False, True], ids=["nothing left", "trials left"])
@pytest.mark.parametrize("where", ["curves.parquet", "a curves part"])
def test_a_corrupt_curves_table_stops_every_command_before_anything_is_written(tmp_path, capsys, monkeypatch,
                                                                              where, left):
    """Before, `run` exited 0 with nothing left and left curves.parquet corrupt, or trained every trial
    left and then exited 2 at its compaction; now the plan checks both tables and their parts first."""
    import sensitivity.preflight

    data = {"name": "broken", "task": TASK, "optimizers": [{"name": "sgd", "lr": [0.1, 1.0]}]}
    path = _write(tmp_path, data)
    study = load_study(path)
    location = tmp_path / "out" / "broken"
    store = _store_finished(location, study.trials(), smoke=False, study=study)
    if where == "curves.parquet":
        store.compact()
        bad = location / "curves.parquet"
    else:
        (bad,) = location.glob("parts/*.curves.parquet")
    bad.write_bytes(b"garbage")
    if left:
        path = _write(tmp_path, {**data, "optimizers": [{"name": "sgd", "lr": [0.1, 1.0, 3.0]}]})

    def never(*args, **kwargs):
        raise AssertionError("a trial would train")

    monkeypatch.setattr(sensitivity.preflight, "check_local_data", never)  # the last step before Ray starts
    files = {p: p.read_bytes() for p in location.rglob("*.parquet")}
    for argv in (["run", str(path), "--out", str(tmp_path / "out")], ["compact", str(location)],
                 ["plot", str(location)]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert str(bad) in err and len(err.strip().splitlines()) == 1, (argv, err)
        assert {p: p.read_bytes() for p in location.rglob("*.parquet")} == files  # nothing rewritten, nothing lost


def test_search_mode_rewrites_current_json_a_logarithmic_number_of_times():
    from sensitivity.identity import Current

    class Store:
        writes = 0
        written = 0

        def write_text(self, name, text):
            Store.writes += 1
            Store.written += len(text)

    current = Current(Store(), "s", {})
    for k in range(5000):
        current.add([{"trial_id": f"{k:016x}", "label": "sgd"}])
    current.flush()
    assert json.loads(json.dumps(current.labels)) and len(current.labels) == 5000
    assert Store.writes <= 45  # log_1.25(5000) ≈ 38 rewrites, not 5000
    assert Store.written < 6 * 5000 * 30  # linear in the study's size (about 30 bytes a trial)
