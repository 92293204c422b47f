"""The results tables: stable trial ids, appends as parts, compaction, crash leftovers, unwritable output.

Budget: a few seconds (one kill -9 loop in subprocesses); no Ray, no training.
"""

from __future__ import annotations

import io

import json
import math

import pandas as pd
import pytest

from analysis import load as analysis_load_prepared
from sensitivity import results
from sensitivity.results import (CURVES, PARTS, TRIALS, ResultsStore, ResultsWriteError, clean_row, load,
                                 trial_id)

BASE = {"dataset": "digits", "model": "mlp", "model_args": {"hidden": [16]}, "optimizer": "sgd-hd",
        "lr": 1e-3, "beta": 1e-4, "seed": 0, "epochs": 2, "decay": {"every_epochs": 5, "factor": 0.5}}


def row(tid, status="ok", loss=1.0):
    return {"trial_id": tid, "status": status, "min_train_loss": loss, "min_test_loss": loss,
            "final_train_loss": loss, "final_test_loss": loss, "error": None, "optimizer": "sgd", "lr": 0.1,
            "beta": None, "decay": None, "seed": 0, "best_test_acc": 0.5, "final_test_acc": 0.5}


def analysis_load(path):
    """analysis.load reads the same files without importing sensitivity."""
    trials, curves = analysis_load_prepared(path)
    return trials, curves


def curve(tid, epochs=2):
    return [{"trial_id": tid, "epoch": e, "step": e, "train_loss": 1.0 / e, "test_loss": 1.0, "train_acc": 0.5,
             "test_acc": 0.5, "lr": 0.1} for e in range(1, epochs + 1)]


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


def _parts(path):
    return sorted(p.name for p in (path / PARTS).iterdir()) if (path / PARTS).exists() else []


def test_append_writes_new_parts_only_and_each_trial_once(tmp_path):
    path = tmp_path / "study"
    store = ResultsStore(path)
    assert store.append([row("a"), row("b", "diverged", math.inf)], curve("a") + curve("b")) == 2
    first = {p: (path / PARTS / p).stat().st_mtime_ns for p in _parts(path)}
    assert len(first) == 2  # one curves part and one trials part
    # a retried trial (lost worker) reports again: it is not stored twice
    assert store.append([row("a"), row("c")], curve("a") + curve("c")) == 1
    assert store.append([row("c")], curve("c")) == 0
    assert len(_parts(path)) == 4 and all((path / PARTS / p).stat().st_mtime_ns == t for p, t in first.items())
    for loaded in (load(path), analysis_load(path)):  # the parts read like one table, in both readers
        trials, curves = loaded
        assert sorted(trials["trial_id"]) == ["a", "b", "c"]
        assert curves.groupby("trial_id").size().to_dict() == {"a": 2, "b": 2, "c": 2}
        assert trials.loc[trials.trial_id == "b", "min_train_loss"].item() == math.inf
    # a new store (a resumed run) sees the same done set
    assert ResultsStore(path).done_ids() == {"a", "b", "c"}


def test_a_long_run_keeps_no_table_in_memory_yet_reads_every_row(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "KEEP_ROWS", 3)  # a million-trial run's writer, in miniature
    store = ResultsStore(tmp_path / "study")
    for k in range(3):
        store.append([row(f"t{k}a"), row(f"t{k}b")], [])
    assert store._trials_frames is None  # past KEEP_ROWS appended rows: nothing held
    assert sorted(store.trials["trial_id"]) == sorted(f"t{k}{x}" for k in range(3) for x in "ab")
    store.append([row("t3a")], [])  # (a read, then more rows: read again when asked)
    assert len(store.trials) == 7 and "t3a" in store and store.trials["trial_id"].is_unique


def test_compact_folds_parts_into_the_two_plain_tables(tmp_path):
    store = ResultsStore(tmp_path)
    for tid in "abc":
        store.append([row(tid)], curve(tid, 3))
    store.compact()
    assert sorted(p.name for p in tmp_path.iterdir()) == [CURVES, PARTS, TRIALS] and _parts(tmp_path) == []
    trials, curves = pd.read_parquet(tmp_path / TRIALS), pd.read_parquet(tmp_path / CURVES)  # plain pandas
    assert sorted(trials["trial_id"]) == ["a", "b", "c"] and len(curves) == 9
    store.append([row("d")], curve("d"))  # appends go on after a compaction
    assert sorted(ResultsStore(tmp_path).done_ids()) == ["a", "b", "c", "d"]
    assert sorted(analysis_load(tmp_path)[0]["trial_id"]) == ["a", "b", "c", "d"]


def _write_part(path, seq, kind, frame):
    (path / PARTS).mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path / PARTS / f"{seq:08d}-feedbeef.{kind}.parquet")


def test_overlapping_parts_keep_each_trials_newest_row_and_curve(tmp_path):
    store = ResultsStore(tmp_path)
    store.append([row("a", loss=3.0), row("b")], curve("a", 3) + curve("b"))
    store.compact()
    # a later part holds "a" again (a second writer in a lease race, or a compaction cut short)
    _write_part(tmp_path, 7, "curves", pd.DataFrame(curve("a", 2)))
    _write_part(tmp_path, 7, "trials", pd.DataFrame([row("a", loss=2.0)]))
    for trials, curves in (load(tmp_path), analysis_load(tmp_path)):
        assert trials["trial_id"].is_unique and len(trials) == 2
        assert trials.set_index("trial_id").loc["a", "min_train_loss"] == 2.0
        assert curves.groupby("trial_id").size().to_dict() == {"a": 2, "b": 2}
    resumed = ResultsStore(tmp_path)
    resumed.append([row("c")], curve("c"))
    assert _parts(tmp_path)[-1].startswith("00000008-")  # numbering goes on after the foreign part


def test_curves_of_unfinished_trials_are_dropped_on_load(tmp_path):
    store = ResultsStore(tmp_path)
    store.append([row("a")], curve("a"))
    # a crash between a flush's curves part and its trials part leaves curves of a trial not done
    _write_part(tmp_path, 2, "curves", pd.DataFrame(curve("x")))
    resumed = ResultsStore(tmp_path)
    assert set(resumed.curves["trial_id"]) == {"a"} and set(analysis_load(tmp_path)[1]["trial_id"]) == {"a"}
    resumed.append([row("x")], curve("x"))  # the rerun of x: its curve once, not twice
    assert (load(tmp_path)[1]["trial_id"] == "x").sum() == 2
    resumed.compact()
    assert (pd.read_parquet(tmp_path / CURVES)["trial_id"] == "x").sum() == 2


def test_a_compaction_cut_short_at_any_step_leaves_every_trial_once(tmp_path, monkeypatch):
    import sensitivity.results as results

    for step in range(4):  # die after 0..3 of: curves table, trials table, part deletions
        path = tmp_path / str(step)
        store = ResultsStore(path)
        for tid in "abcd":
            store.append([row(tid)], curve(tid))
        calls = {"n": 0}
        real_write, real_delete = results.write_atomic, store._delete

        def dying(*args, _real=real_write, **kwargs):
            if calls["n"] == step:
                raise KeyboardInterrupt  # a kill -9 between two steps
            calls["n"] += 1
            return _real(*args, **kwargs)

        def dying_delete(p, _real=real_delete):
            if calls["n"] >= step:
                raise KeyboardInterrupt
            calls["n"] += 1
            return _real(p)

        monkeypatch.setattr(results, "write_atomic", dying)
        monkeypatch.setattr(store, "_delete", dying_delete)
        with pytest.raises(KeyboardInterrupt):
            store.compact()
        monkeypatch.setattr(results, "write_atomic", real_write)
        for trials, curves in (load(path), analysis_load(path)):
            assert sorted(trials["trial_id"]) == list("abcd"), step
            assert curves.groupby("trial_id").size().to_dict() == dict.fromkeys("abcd", 2), step
        ResultsStore(path).compact()  # the next compaction cleans up
        assert _parts(path) == [] and sorted(load(path)[0]["trial_id"]) == list("abcd")


def test_temporary_files_of_a_killed_write_are_ignored_then_removed(tmp_path):
    store = ResultsStore(tmp_path)
    store.append([row("a")], curve("a"))
    (tmp_path / PARTS / "00000002-feedbeef.trials.parquet.tmp-1234abcd").write_bytes(b"half a file")
    (tmp_path / f"{TRIALS}.tmp-1234abcd").write_bytes(b"half a file")
    assert list(load(tmp_path)[0]["trial_id"]) == ["a"] and list(analysis_load(tmp_path)[0]["trial_id"]) == ["a"]
    store.compact()
    assert sorted(p.name for p in tmp_path.iterdir()) == [CURVES, PARTS, TRIALS] and _parts(tmp_path) == []


KILL_WRITER = """
import json, sys
from sensitivity.results import ResultsStore
ROW, CURVE = json.loads(sys.argv[2]), json.loads(sys.argv[3])
row = lambda t: {**ROW, "trial_id": t}
curve = lambda t: [{**c, "trial_id": t} for c in CURVE]
store = ResultsStore(sys.argv[1])
n = len(store.done_ids())
while True:
    tids = [f"t{n + k}" for k in range(3)]
    store.append([row(t) for t in tids], [c for t in tids for c in curve(t)])
    print(*tids, flush=True)
    n += 3
    if n % 12 == 0:
        store.compact()
"""


def test_kill_9_at_any_point_leaves_tables_that_load(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    finished: set[str] = set()
    for delay in (0.0, 0.07, 0.15, 0.25):  # kill at many points of flushes and compactions
        proc = subprocess.Popen([sys.executable, "-c", KILL_WRITER, str(tmp_path), json.dumps(row("")),
                                 json.dumps(curve(""))], stdout=subprocess.PIPE, text=True)
        finished |= set(proc.stdout.readline().split())  # writing has started
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        finished |= set(out.split())  # flushes that returned before the kill
        for trials, curves in (load(tmp_path), analysis_load(tmp_path)):
            assert trials["trial_id"].is_unique and finished <= set(trials["trial_id"])
            assert (curves.groupby("trial_id").size() == 2).all() and set(curves["trial_id"]) == set(trials["trial_id"])
    assert len(finished) > 12  # the writer got through flushes and compactions


def test_drop_forgets_trials_so_they_run_again(tmp_path):
    store = ResultsStore(tmp_path)
    store.append([row("a"), row("b", "error")], curve("a") + curve("b"))
    store.drop(["b"])
    trials, curves = load(tmp_path)
    assert list(trials["trial_id"]) == ["a"] and set(curves["trial_id"]) == {"a"}
    assert store.done_ids() == {"a"}
    store.append([row("b")], curve("b"))  # the rerun
    assert sorted(load(tmp_path)[0]["trial_id"]) == ["a", "b"]


def test_ensure_tables_and_missing_results(tmp_path):
    with pytest.raises(FileNotFoundError, match="trials"):
        load(tmp_path / "nothing")
    store = ResultsStore(tmp_path / "empty")
    store.ensure_tables()
    trials, curves = load(tmp_path / "empty")
    assert trials.empty and curves.empty and "trial_id" in trials


def test_an_unwritable_destination_names_the_path_and_keeps_earlier_results(tmp_path, monkeypatch):
    import errno

    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ResultsWriteError, match=f"cannot write {tmp_path / 'file'}.*a parent of it is a file"):
        ResultsStore(tmp_path / "file" / "study").append([row("a")], curve("a"))

    store = ResultsStore(tmp_path / "study")
    store.append([row("a")], curve("a"))

    class Full(io.RawIOBase):  # the disk fills up in the middle of a file
        def __init__(self, path):
            super().__init__()
            self.path = path

        def writable(self):
            return True

        def write(self, data):
            with open(self.path, "wb") as handle:
                handle.write(bytes(data)[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

    class FullDisk:
        def __init__(self, fs):
            self.fs = fs

        def __getattr__(self, name):
            return getattr(self.fs, name)

        def open_output_stream(self, path, *args, **kwargs):
            return Full(path)

    real, store.fs = store.fs, FullDisk(store.fs)
    with pytest.raises(ResultsWriteError, match=r"cannot write .*parts/.*no space left"):
        store.append([row("b")], curve("b"))
    with pytest.raises(ResultsWriteError, match=f"cannot write {tmp_path / 'study'}.*no space left"):
        store.compact()
    store.fs = real
    trials, curves = load(tmp_path / "study")
    assert list(trials["trial_id"]) == ["a"] and len(curves) == 2  # nothing earlier lost, nothing half-written
    assert not [p for p in (tmp_path / "study").rglob("*") if ".tmp-" in p.name]


def test_a_large_table_is_read_when_asked_and_its_columns_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "KEEP_ROWS", 2)  # a million-row table, in miniature
    store = ResultsStore(tmp_path)
    store.append([row("a"), row("b", "error")], [])
    store.append([row("c"), row("b", "ok")], [])  # "b" again: not stored twice
    store.compact()
    store = ResultsStore(tmp_path)
    assert store._trials_frames is None and store.count() == 3  # the ids alone were read
    assert sorted(store.trials["trial_id"]) == ["a", "b", "c"] and store._trials_frames is None  # not kept
    read, real = [], results.read_parquet
    monkeypatch.setattr(results, "read_parquet", lambda *a, columns=None, **k: read.append(columns) or real(
        *a, columns=columns, **k))
    errors = store.columns(["status", "error", "no-such-column"])
    assert read and all(c == ["trial_id", "status", "error", "no-such-column"] for c in read)  # no other column read
    assert list(errors.columns) == ["trial_id", "status", "error"]
    assert errors.set_index("trial_id")["status"].to_dict() == {"a": "ok", "b": "error", "c": "ok"}
    small = ResultsStore(tmp_path / "small")
    small.append([row("x")], [])
    assert list(small.columns(["status"]).columns) == ["trial_id", "status"] and small.has_tables
    assert ResultsStore(tmp_path / "none").columns(["status"]) is None and not ResultsStore(tmp_path / "none").has_tables
