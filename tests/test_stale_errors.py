"""Errored rows of an earlier version of the study are stale like any other row of it.

A study whose entry errored (a train_size digits does not have), edited so that the entry runs:
the old errored rows name no trial of the study any more. They are kept in the table, untouched,
and never counted: no "errored in an earlier run" warning, no pending retry, and ``--retry-errors``
neither drops nor reruns them, while it does drop and rerun an errored row of a current trial.

In-process and without Ray: rows are stored as a run stores them (real trial ids), and where a
run must start trials, the grid runner is replaced by one that stores an ok row for each trial
the real one would start. Budget: a few seconds.
"""

from __future__ import annotations

import pytest

from sensitivity.cli import main
from sensitivity.lease import Lease
from sensitivity.preflight import errored_rows, pending, plan_run
from sensitivity.results import ResultsStore, trial_id
from sensitivity.study import load_study

OLD = ("name: st\ntask: {dataset: digits, model: mlp, model_args: {hidden: [16]}, epochs: 1}\nseeds: 2\n"
       "optimizers:\n  - {name: sgd, lr: [0.1]}\n"
       "  - {name: adam, lr: [0.01], task: {dataset_args: {train_size: 5000}}}\n")
FIXED = OLD.replace("train_size: 5000", "train_size: 1000")  # the entry now runs: its old rows are stale
MORE = FIXED.replace("lr: [0.01]", "lr: [0.01, 0.001]")  # one more lr: something new to run
ERROR = "ValueError: dataset_args.train_size: 5000 is more than the 1437 examples digits has"


def _study(tmp_path, text, name="s.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path, load_study(path)


def _rows(records, status="ok"):
    return [{"trial_id": trial_id(r), "study": "st", "optimizer": r.optimizer, "lr": r.lr, "seed": r.seed,
             "status": status, "error": ERROR if status == "error" else None} for r in records]


def _fill(tmp_path, *, current_error: bool = False):
    """The tables after the old study errored and the fixed one ran: sgd ok (seed 1 errored with
    `current_error`), the old adam trials errored (stale), the fixed adam trials ok."""
    _, old = _study(tmp_path, OLD, "old.yaml")
    path, fixed = _study(tmp_path, FIXED)
    sgd = [r for r in fixed.trials() if r.optimizer == "sgd"]
    stale = [r for r in old.trials() if r.optimizer == "adam"]
    adam = [r for r in fixed.trials() if r.optimizer == "adam"]
    assert not {r.trial_id for r in stale} & {r.trial_id for r in fixed.trials()}  # the edit changed their ids
    rows = _rows(sgd[:1]) + _rows(sgd[1:], "error" if current_error else "ok") + _rows(stale, "error") + _rows(adam)
    out = tmp_path / "out"
    store = ResultsStore(out / "st")
    store.append(rows, [])
    store.compact()
    return path, out, {r.trial_id for r in stale}, sgd[1].trial_id


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if anything tries to start or join Ray."""
    from sensitivity.sweep import cluster

    def refuse(*args, **kwargs):
        raise AssertionError("Ray must not start")

    monkeypatch.setattr(cluster.ray, "init", refuse)


def _stored(out):
    trials = ResultsStore(out / "st").trials
    return dict(zip(trials["trial_id"], trials["status"]))


@pytest.mark.parametrize("current_error", [False, True])
def test_stale_errored_rows_are_neither_counted_nor_named(tmp_path, capsys, no_ray, current_error):
    path, out, stale, errored = _fill(tmp_path, current_error=current_error)
    study = load_study(path)
    store = ResultsStore(out / "st")
    todo = pending(study, store)
    assert (todo.total, todo.left, todo.errored) == (4, 0, int(current_error))
    assert pending(study, store, retry_errors=True).left == int(current_error)
    with Lease(out / "st") as lease:
        store.guard = lease.check
        plan = plan_run(study, store)
    assert (plan.left, plan.errored) == (0, int(current_error))

    assert main(["run", str(path), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "nothing to run; all 4 trials are in" in captured.out and "2 stale rows" in captured.out
    if current_error:  # the current trial's errored row is still named, and only it
        assert captured.err.splitlines() == ["sensitivity: 1 trial(s) errored in an earlier run and were not run "
                                             "again; --retry-errors runs them"]
    else:
        assert captured.err == ""
    assert {tid: s for tid, s in _stored(out).items() if tid in stale} == {tid: "error" for tid in stale}
    assert len(errored_rows(store, None)) == 2 + current_error  # every errored row, stale ones too
    current = errored_rows(store, {r.trial_id for r in study.trials()})
    assert set(current["trial_id"]) == ({errored} if current_error else set())


def test_retry_errors_with_nothing_current_to_retry_keeps_the_stale_rows(tmp_path, capsys, no_ray):
    path, out, stale, _ = _fill(tmp_path)
    for _ in range(2):  # --retry-errors finds nothing to run, and the plain run after it warns of nothing
        assert main(["run", str(path), "--out", str(out), "--retry-errors"]) == 0
        assert main(["run", str(path), "--out", str(out)]) == 0
        captured = capsys.readouterr()
        assert captured.out.count("nothing to run; all 4 trials are in") == 2 and captured.err == ""
    stored = _stored(out)
    assert len(stored) == 6 and all(stored[tid] == "error" for tid in stale)


@pytest.fixture
def fake_grid(monkeypatch):
    """run_study without Ray: the grid runner stores an ok row for each trial the real one would start
    (a trial of the study not in the tables), and the ids it started are kept in the returned list."""
    from sensitivity.sweep import driver
    from sensitivity.sweep.tuner import Summary

    started: list[str] = []

    def run_grid(study, store, smoke, resources, ray_storage, stamp, checkpoint_root, max_concurrent, quiet, plan):
        todo = [r for r in study.iter_trials(smoke) if r.trial_id not in store]
        started.extend(r.trial_id for r in todo)
        store.append(_rows(todo), [])
        total = sum(study.counts(smoke))
        return Summary(location=store.location, trials_path="t", curves_path="c", total=total,
                       skipped=total - len(todo), ran=len(todo))

    monkeypatch.setattr(driver, "connect", lambda address, timeout_s=None: False)
    monkeypatch.setattr(driver, "check_devices", lambda study, plan: None)
    monkeypatch.setattr(driver, "trial_resources", lambda study, smoke, quiet: {"cpu": 1, "gpu": 0})
    monkeypatch.setattr(driver, "run_grid", run_grid)
    return started


def test_retry_errors_reruns_a_current_errored_row_and_keeps_a_stale_one(tmp_path, capsys, fake_grid):
    path, out, stale, errored = _fill(tmp_path, current_error=True)
    path.write_text(MORE)  # one more lr: something new to run besides the current errored trial
    new = {r.trial_id for r in load_study(path).trials() if r.lr == 0.001}
    assert main(["run", str(path), "--out", str(out), "--retry-errors"]) == 0
    assert sorted(fake_grid) == sorted(new | {errored})  # the current errored trial ran again; no stale one did
    stored = _stored(out)
    assert stored[errored] == "ok" and all(stored[tid] == "ok" for tid in new)
    assert {tid: stored.get(tid) for tid in stale} == {tid: "error" for tid in stale}  # kept, untouched
    assert len(stored) == 8
    captured = capsys.readouterr()
    assert "errored in an earlier run" not in captured.err and "2 stale rows" in captured.out
    assert main(["run", str(path), "--out", str(out)]) == 0  # the plain run after it: nothing, no warning
    captured = capsys.readouterr()
    assert "nothing to run; all 6 trials are in" in captured.out and captured.err == ""


def test_a_search_counts_only_its_own_errored_rows(tmp_path):
    from sensitivity.sweep.points import point_text

    search = "search: {trials: 2, space: {lr: {low: 1.0e-4, high: 1.0, log: true}}}\n"
    old_text = OLD.replace("lr: [0.1]", "lr: 0.1").replace("lr: [0.01]", "lr: 0.01") + search
    _, old = _study(tmp_path, old_text, "old.yaml")
    path, study = _study(tmp_path, old_text.replace("train_size: 5000", "train_size: 1000"))

    def rows(s, entry: int, lr: float, status="ok"):
        values = {"lr": lr}
        return [{**row, "search_point": point_text(values), "search_entry": entry}
                for row in _rows(s.search_configs(entry, values), status)]

    store = ResultsStore(tmp_path / "out" / "st")
    store.append(rows(study, 0, 0.1) + rows(old, 1, 0.01, "error") + rows(study, 1, 0.01), [])
    todo = pending(study, store)
    assert (todo.total, todo.errored) == (8, 0)
    assert pending(study, store, retry_errors=True).left == todo.left  # nothing of the study to retry
