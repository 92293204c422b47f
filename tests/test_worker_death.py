"""A trial that kills its worker every time (an out-of-memory kill, a segfault) ends with an error row.

Before, Ray Tune retried its bundle until it gave up, the trial never got a row, and every rerun
exited 1 "rerun to resume" forever. Now the trial gets an error row that says the worker died and
with what (the signal or exit code its watcher recorded, `sweep.exits`; Ray itself reports only a
closed connection), every other trial of its bundle or array runs, and --retry-errors runs it again.
Budget: about 40 s for the Ray test (its own Ray in a subprocess: the fault is injected through the
environment), about 2 s for the watcher's own tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sensitivity.study import load_study
from sensitivity.sweep import exits

BIN = Path(sys.executable).parent
TASK = {"dataset": "digits", "model": "mlp", "model_args": {"hidden": [16]}, "batch_size": 64, "epochs": 2}


def _run(path: Path, out: Path, temp: str, *extra: str, kill: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "SENSITIVITY_FAULT_KILL": kill, "RAY_TMPDIR": temp}
    return subprocess.run([str(BIN / "sensitivity"), "run", str(path), "--out", str(out), "--quiet", *extra],
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def ray_temp():
    temp = tempfile.mkdtemp(prefix="rd-", dir="/tmp")  # short: Ray's socket paths stay under 107 characters
    yield temp
    shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_a_trial_that_kills_its_worker_gets_an_error_row_and_can_be_retried(tmp_path, ray_temp):
    path = tmp_path / "dies.yaml"
    path.write_text(yaml.safe_dump({"name": "dies", "task": TASK, "seeds": 2, "bundle": 3, "fuse": "auto",
                                    # one fused array, whose members then run alone, in bundles of 3
                                    "optimizers": [{"name": "sgd", "lr": [0.01, 0.1, 1.0]}]}))
    records = load_study(path).trials()
    doomed = records[2]
    out = tmp_path / "out"
    first = _run(path, out, ray_temp, kill=doomed.trial_id)
    assert first.returncode == 1, first.stderr[-3000:]
    assert "1 trial(s) errored" in first.stderr and "WorkerDied" in first.stderr, first.stderr[-3000:]
    trials = pd.read_parquet(out / "dies" / "trials.parquet")
    assert sorted(trials["trial_id"]) == sorted(r.trial_id for r in records)  # every trial has its row
    errors = trials[trials["status"] == "error"]
    assert list(errors["trial_id"]) == [doomed.trial_id]
    message = errors["error"].item()
    assert message.startswith("WorkerDied: the worker process died while training this trial")
    if exits.exit_status_supported():  # and with what: the fault kills with SIGKILL
        assert "it ended with signal 9 (SIGKILL) (pid " in message, message
    else:
        assert "how it ended is unknown: the kernel reported no exit status" in message, message
    assert "Worker exit type" in message, message  # and Ray's words
    assert set(trials.loc[trials["status"] != "error", "status"]) <= {"ok", "diverged"}
    for column in records[0].columns():  # an error row spelt as every other row
        assert errors[column].notna().all() or trials[column].isna().all(), column

    again = _run(path, out, ray_temp, kill=doomed.trial_id)  # without --retry-errors: nothing left to run
    assert again.returncode == 0 and "--retry-errors" in again.stderr, again.stderr[-2000:]
    retried = _run(path, out, ray_temp, "--retry-errors")  # the cause is gone: it runs and finishes
    assert retried.returncode == 0, retried.stderr[-3000:]
    trials = pd.read_parquet(out / "dies" / "trials.parquet")
    assert len(trials) == len(records) and (trials["status"] != "error").all()


DIE = {  # how the worker process ends while it trains trial "t1"
    "SIGKILL": "os.kill(os.getpid(), signal.SIGKILL)",
    "SIGSEGV": "os.kill(os.getpid(), signal.SIGSEGV)",
    "exit code 3": "os._exit(3)",
}


def _worker(folder: Path, death: str, training: bool = True) -> int:
    """A process standing in for a Ray worker: its watcher learns what it trains, then it dies.
    Returns the watcher's pid."""
    code = ("import os, resource, signal\nresource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file\n"
            "from sensitivity.sweep import exits\nw = exits.watcher()\nassert w.ready\n"
            "print(w.process.pid, flush=True)\n"
            + (f"w.training({str(folder)!r}, ['t1', 't2'])\n" if training else "w.idle()\n") + DIE[death] + "\n")
    # stdout only: the watcher inherits stderr, and a pipe it holds would keep this process from reaping
    # the worker, which the kernel needs before it keeps an exit status for the watcher
    done = subprocess.run([sys.executable, "-c", code], timeout=60, cwd=folder, stdout=subprocess.PIPE, text=True)
    return int(done.stdout.split()[0])


def _ended(pid: int, wait_s: float) -> bool:
    """Whether process `pid` has exited (gone, or a zombie nobody reaped) within `wait_s`."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/status") as handle:
                if any(line.startswith("State:") and "Z" in line.split()[1] for line in handle):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def _record(folder: Path, tid: str, wait_s: float = 10.0) -> dict | None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:  # the watcher writes once the kernel has reaped the worker
        found = exits.read_exit(str(folder), tid)
        if found:
            return found
        time.sleep(0.05)
    return None


@pytest.mark.parametrize("death", list(DIE))
def test_the_watcher_records_the_signal_or_exit_code_a_worker_died_of(tmp_path, death):
    _worker(tmp_path, death)
    for tid in ("t1", "t2"):  # every trial the worker was training (an array's members)
        record = _record(tmp_path, tid)
        assert record is not None and record["trial_id"] == tid
        if exits.exit_status_supported():
            assert record["ending"].startswith("exit code 3" if death == "exit code 3" else "signal ") \
                and death in record["ending"], record
        else:
            assert "no exit status" in record["unknown"], record


def test_a_worker_that_dies_idle_leaves_no_record(tmp_path):
    watcher = _worker(tmp_path, "SIGKILL", training=False)
    assert _ended(watcher, wait_s=exits.STATUS_WAIT_S + 5)  # the watcher ends after any record it writes
    assert exits.read_exit(str(tmp_path), "t1") is None


def test_a_search_points_seeds_say_how_their_worker_ended(tmp_path):
    """Optuna mode: the seeds a dead worker left without a row get error rows with the watcher's record."""
    from sensitivity.study import Study
    from sensitivity.sweep.search import point_failures

    study = Study.from_dict({"name": "s", "task": TASK, "seeds": 2, "optimizers": [{"name": "sgd"}],
                             "search": {"trials": 1, "space": {"lr": {"low": 1e-3, "high": 1.0, "log": True}}}})
    config = {"entry": 0, "point": {"lr": 0.01}}
    first, second = study.search_configs(0, {"lr": 0.01}, False)
    (tmp_path / f"{first.trial_id}.json").write_text(
        '{"trial_id": "%s", "ending": "signal 9 (SIGKILL)", "pid": 7, "host": "h"}' % first.trial_id)

    class Store:  # the driver holds no row of either seed
        def __contains__(self, tid):
            return False

    rows = point_failures(study, Store(), False, [(config, "Worker exit type: SYSTEM_ERROR")], str(tmp_path))
    by_id = {row["trial_id"]: row for row in rows}
    assert set(by_id) == {first.trial_id, second.trial_id}
    assert "it ended with signal 9 (SIGKILL) (pid 7 on h)" in by_id[first.trial_id]["error"]
    assert "no watcher recorded it" in by_id[second.trial_id]["error"]
    assert by_id[first.trial_id]["search_point"] == '{"lr": 0.01}'


def test_describe_names_signals_and_exit_codes():
    assert exits.describe(9) == "signal 9 (SIGKILL)"
    assert exits.describe(3 << 8) == "exit code 3"
    assert exits.describe(11 | 0x80) == "signal 11 (SIGSEGV), core dumped"



def test_a_watcher_that_cannot_start_is_tried_once_per_worker(monkeypatch):
    tries = []

    def cannot(*_):
        tries.append(1)
        raise OSError("no select on pipes here")

    monkeypatch.setattr(exits, "Watcher", cannot)
    monkeypatch.setattr(exits, "_WATCHER", None)
    monkeypatch.setattr(exits, "_CANNOT_START", False)
    assert exits.watcher() is None and exits.watcher() is None  # units train on without one
    assert len(tries) == 1
