"""A trial that kills its worker every time (an out-of-memory kill, a segfault) ends with an error row.

Before, Ray Tune retried its bundle until it gave up, the trial never got a row, and every rerun
exited 1 "rerun to resume" forever. Now the trial gets an error row that says the worker died (and
Ray's words for how), every other trial of its bundle or array runs, and --retry-errors runs it again.
Budget: about 40 s (its own Ray in a subprocess: the fault is injected through the environment).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sensitivity.study import load_study

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
    assert "Worker exit type" in message, message  # and with what: Ray's words on how the process ended
    assert set(trials.loc[trials["status"] != "error", "status"]) <= {"ok", "diverged"}
    for column in records[0].columns():  # an error row spelt as every other row
        assert errors[column].notna().all() or trials[column].isna().all(), column

    again = _run(path, out, ray_temp, kill=doomed.trial_id)  # without --retry-errors: nothing left to run
    assert again.returncode == 0 and "--retry-errors" in again.stderr, again.stderr[-2000:]
    retried = _run(path, out, ray_temp, "--retry-errors")  # the cause is gone: it runs and finishes
    assert retried.returncode == 0, retried.stderr[-3000:]
    trials = pd.read_parquet(out / "dies" / "trials.parquet")
    assert len(trials) == len(records) and (trials["status"] != "error").all()
