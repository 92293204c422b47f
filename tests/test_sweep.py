"""Sweeps on Ray Tune: end to end, errors, Optuna with divergence, kill -9 and resume, two real nodes.

Budget: about 2.5 minutes on 2 busy cores, nearly all in the tests marked slow. They share the
session's in-process Ray (`ray_local`, tests/conftest.py); the kill test and the two-node test
start their own Ray in subprocesses, with private temp dirs and free ports, and stop only those.
"""

from __future__ import annotations

import io
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sensitivity.progress import Progress
from sensitivity.results import trial_id
from sensitivity.study import Study, StudyError, load_study
from sensitivity.sweep import bundle_size, error_row, is_short, make_bundles, mean_metric, run_one, run_study

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TRIAL_COLUMNS = ["trial_id", "study", "dataset", "model", "optimizer", "lr", "beta", "decay", "seed",
                 "batch_size", "epochs", "weight_decay", "status", "min_train_loss", "min_test_loss",
                 "final_train_loss", "final_test_loss", "best_test_acc", "final_test_acc", "final_lr",
                 "epochs_completed", "steps", "wall_time_s", "error", "node", "label"]
CURVE_COLUMNS = ["trial_id", "epoch", "step", "train_loss", "test_loss", "train_acc", "test_acc", "lr"]
LOSSES = ["min_train_loss", "min_test_loss", "final_train_loss", "final_test_loss"]
TASK = {"dataset": "digits", "model": "mlp", "model_args": {"hidden": [16]}, "batch_size": 64, "epochs": 2}


def write_study(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def assert_exactly_once(results: Path, study: Study, smoke: bool = False):
    trials = pd.read_parquet(results / "trials.parquet")
    curves = pd.read_parquet(results / "curves.parquet")
    expected = {trial_id(c) for c in study.trials(smoke=smoke)}
    assert trials["trial_id"].is_unique
    assert set(trials["trial_id"]) == expected
    per_trial = curves.groupby("trial_id").size()
    completed = trials.set_index("trial_id")["epochs_completed"]
    assert (per_trial.reindex(completed.index, fill_value=0) == completed).all()
    return trials, curves


# ---------------------------------------------------------------------------
# fast: the pieces


def test_bundles_only_short_trials_and_interleave():
    short = [{"dataset": "digits", "model": "mlp", "epochs": 15, "i": i} for i in range(40)]
    assert all(is_short(c) for c in short)
    assert bundle_size("auto", short, slots=2) == 5
    assert bundle_size("auto", short[:2], slots=2) == 1
    assert bundle_size(3, short, slots=2) == 3
    long = [{"dataset": "cifar10", "model": "resnet18", "epochs": 200}]
    assert not is_short(long[0]) and bundle_size("auto", short + long, slots=2) == 1
    bundles = make_bundles(short, 5)
    assert len(bundles) == 8 and sorted(c["i"] for b in bundles for c in b) == list(range(40))
    assert [c["i"] for c in bundles[0][:3]] == [0, 8, 16]  # neighbours in the grid spread over tasks


def test_error_row_keeps_identity_and_never_nan():
    config = {"study": "s", "dataset": "digits", "model": "mlp", "optimizer": "adam", "lr": 0.1, "seed": 3,
              "decay": {"every_epochs": 5, "factor": 0.5}, "optimizer_args": {"betas": [0.9, 0.99]}}
    row = error_row(config, RuntimeError("boom\nsecond line"), 1.5)
    assert row["status"] == "error" and row["error"] == "RuntimeError: boom second line"
    assert row["decay"] == "step:5:0.5" and row["betas"] == [0.9, 0.99] and row["lr"] == 0.1
    assert all(row[k] == math.inf for k in LOSSES)


def test_long_trials_checkpoint_beside_the_tables_or_mirrored_to_a_uri(tmp_path, monkeypatch):
    from sensitivity.sweep import worker

    config = {"study": "s", **TASK, "optimizer": "sgd", "lr": 0.1, "seed": 0}
    local = tmp_path / "checkpoints" / trial_id(config)
    row, curve = run_one(config, str(local))
    assert row["status"] == "ok" and len(curve) == 2 and not list(local.glob("*.pt"))  # removed when done

    monkeypatch.setattr(worker, "CHECKPOINT_SYNC_S", 0.05)
    remote = tmp_path / "remote" / "t1"
    remote.mkdir(parents=True)
    (remote / "t1.pt").write_bytes(b"epoch 3")
    mirror = worker.Mirror(f"file://{remote}")
    assert (Path(mirror.local) / "t1.pt").read_bytes() == b"epoch 3"  # a retried trial starts from it
    (Path(mirror.local) / "t1.pt").write_bytes(b"epoch 4")
    deadline = time.monotonic() + 10
    while (remote / "t1.pt").read_bytes() != b"epoch 4":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    mirror.close()
    assert not Path(mirror.local).exists()


def test_optuna_objective_is_inf_never_nan():
    assert mean_metric([1.0, 3.0]) == 2.0
    assert mean_metric([1.0, math.inf]) == math.inf
    assert mean_metric([]) == math.inf


def test_progress_line():
    stream = io.StringIO()
    progress = Progress(4, name="s", stream=stream, every=0)
    progress.add([{"status": "ok"}, {"status": "diverged"}, {"status": "error"}])
    line = stream.getvalue().strip().splitlines()[-1]
    assert line.startswith("s: 3/4 trials | 1 diverged | 1 errored |") and "ETA" in line
    quiet = io.StringIO()
    Progress(4, quiet=True, stream=quiet).add([{"status": "ok"}])
    assert quiet.getvalue() == ""


# ---------------------------------------------------------------------------
# slow: real sweeps


@pytest.mark.slow
def test_smoke_study_end_to_end_then_resume_is_a_no_op(tmp_path, ray_local):
    study = Study.from_dict({
        "name": "e2e", "task": {**TASK, "thresholds": [2.0], "epochs": 3}, "seeds": 2,
        "optimizers": [{"name": "sgd", "lr": [0.1, 0.5, 100.0]},
                       {"name": "adam-hd", "label": "adam-hd-small", "lr": 1e-3, "beta": [1e-7, 1e-5]}]})
    # --storage with a URI: the same code path as s3:// or gs://, on the local filesystem
    summary = run_study(study, storage=f"file://{tmp_path}", smoke=True, quiet=True)
    results = tmp_path / "e2e"
    assert summary.missing == 0 and summary.ran == 3 and summary.total == 3
    assert summary.trials_path == f"file://{tmp_path}/e2e/trials.parquet"
    trials, curves = assert_exactly_once(results, study, smoke=True)
    assert set(TRIAL_COLUMNS) | {"iters_to_2"} <= set(trials.columns)
    assert set(CURVE_COLUMNS) <= set(curves.columns)
    assert not trials[LOSSES].isna().any().any()
    assert set(trials["status"]) <= {"ok", "diverged"} and (trials["lr"] == 100.0).sum() == 1
    assert trials.loc[trials.lr == 100.0, "status"].item() == "diverged"
    assert set(trials["label"]) == {"sgd", "adam-hd-small"} and (trials["epochs"] == 1).all()
    assert trials["node"].str.len().gt(0).all()
    saved = (results / "study.yaml").read_text()
    assert saved.startswith("# resolved by sensitivity: smoke: true") and load_study(results / "study.yaml")
    assert not (results / "ray").exists()  # Tune's own state is removed after a complete run

    again = run_study(study, out=tmp_path, smoke=True, quiet=True)  # the same directory as a path
    assert again.ran == 0 and again.skipped == 3
    assert_exactly_once(results, study, smoke=True)
    with pytest.raises(StudyError, match="already holds a --smoke run"):
        run_study(study, out=tmp_path, smoke=False, quiet=True)


def test_a_trial_that_raises_becomes_an_error_row(tmp_path):
    empty = tmp_path / "no-data"
    empty.mkdir()
    config = {"study": "s", "label": "mnist-missing", **TASK, "dataset": "mnist", "data_dir": str(empty),
              "optimizer": "sgd", "lr": 0.1, "seed": 0, "epochs": 1}
    row, curve = run_one(config)
    assert row["status"] == "error" and str(empty) in row["error"] and curve == []
    assert row["trial_id"] == trial_id(config) and row["label"] == "mnist-missing"
    assert all(row[k] == math.inf for k in LOSSES) and "host" in row and "node" in row


@pytest.mark.slow
def test_optuna_over_a_diverging_region_finishes_without_nan(tmp_path, ray_local):
    study = Study.from_dict({
        "name": "optuna", "task": {**TASK, "epochs": 1}, "seeds": 2,
        "optimizers": [{"name": "sgd"}],
        "search": {"trials": 5, "sampler": "random", "space": {"lr": {"low": 0.5, "high": 1.0e4, "log": True}}}})
    summary = run_study(study, out=tmp_path, quiet=True)
    trials = pd.read_parquet(tmp_path / "optuna" / "trials.parquet")
    assert summary.missing == 0 and len(trials) == 10 and trials["trial_id"].is_unique
    assert not trials[LOSSES].isna().any().any()
    assert (trials["status"] == "diverged").any()
    per_point = trials.groupby("search_point").agg(n=("seed", "size"), lrs=("lr", "nunique"))
    assert len(per_point) == 5 and (per_point["n"] == 2).all() and (per_point["lrs"] == 1).all()
    assert trials["lr"].between(0.5, 1.0e4).all()
    again = run_study(study, out=tmp_path, quiet=True)  # every point complete: nothing to run
    assert again.ran == 0 and len(pd.read_parquet(tmp_path / "optuna" / "trials.parquet")) == 10
    # a point cut off after one of its seeds is finished on the next run, not sampled anew
    from sensitivity.results import ResultsStore

    cut = trials.iloc[-1]
    ResultsStore(tmp_path / "optuna").drop([cut["trial_id"]])
    resumed = run_study(study, out=tmp_path, quiet=True)
    after = pd.read_parquet(tmp_path / "optuna" / "trials.parquet")
    assert resumed.ran == 1 and len(after) == 10 and after["trial_id"].is_unique
    assert set(after["search_point"]) == set(trials["search_point"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_processes(marker: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if marker in line and "ps -eo" not in line]


@pytest.mark.slow
def test_sigkill_then_resume_runs_every_trial_exactly_once(tmp_path, ray_local):
    empty = tmp_path / "no-data"  # MNIST files that exist (the driver's check passes) but do not parse
    (empty / "MNIST" / "raw").mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (empty / "MNIST" / "raw" / name).write_bytes(b"not an idx file")
    path = write_study(tmp_path / "kill.yaml", {
        "name": "kill", "task": {**TASK, "epochs": 3}, "seeds": 4, "bundle": 4,
        "optimizers": [{"name": "sgd", "lr": [0.01, 0.1, 1.0]}, {"name": "adam", "lr": 1e-3},
                       # trials that raise: recorded with status error, and the sweep goes on
                       {"name": "sgd", "lr": 0.1, "label": "mnist-missing",
                        "task": {"dataset": "mnist", "data_dir": str(empty)}}]})
    study = load_study(path)
    trials_file = tmp_path / "out" / "kill" / "trials.parquet"
    temp = tempfile.mkdtemp(prefix="rk-", dir="/tmp")  # this run's own Ray, found by its temp dir
    env = {**os.environ, "RAY_TMPDIR": temp}
    proc = subprocess.Popen([str(BIN / "sensitivity"), "run", str(path), "--out", str(tmp_path / "out"), "--quiet"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 150
        done = 0
        while time.monotonic() < deadline and proc.poll() is None:
            if trials_file.exists():
                done = len(pd.read_parquet(io.BytesIO(trials_file.read_bytes())))  # one read: the file is renamed over
                if done >= 3:
                    break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        try:  # Ray's helper processes of the killed driver share its process group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(temp, ignore_errors=True)
    before = pd.read_parquet(trials_file)
    assert 3 <= len(before) < 20, "the kill must land mid-sweep"

    summary = run_study(study, out=tmp_path / "out", quiet=True)
    assert summary.skipped == len(before) and summary.ran == 20 - len(before) and summary.missing == 0
    trials, _ = assert_exactly_once(tmp_path / "out" / "kill", study)
    errors = trials[trials["status"] == "error"]
    assert len(errors) == 4 and set(errors["label"]) == {"mnist-missing"}
    assert errors["error"].notna().all()
    assert set(trials.loc[trials.label != "mnist-missing", "status"]) <= {"ok", "diverged"}
    kept = trials.set_index("trial_id").loc[before["trial_id"], "wall_time_s"]
    assert (kept.values == before["wall_time_s"].values).all()  # finished trials were not rerun


@pytest.mark.slow
def test_two_ray_nodes_on_one_machine_both_run_trials(tmp_path):
    path = write_study(tmp_path / "two.yaml", {
        "name": "two-nodes", "task": {**TASK, "epochs": 2}, "seeds": 4,
        "optimizers": [{"name": "sgd", "lr": [0.01, 0.1]}, {"name": "adam", "lr": [1e-3, 1e-2]}]})
    temp = tempfile.mkdtemp(prefix="r2-", dir="/tmp")
    port = _free_port()
    # a private token: the nodes and the driver of this test authenticate to each other only
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--temp-dir", temp, "--block",
              "--disable-usage-stats", "--dashboard-agent-listen-port", "0"]
    nodes = []

    def start(args, log):
        nodes.append(subprocess.Popen([str(BIN / "ray"), "start", *args, *common,
                                       "--metrics-export-port", str(_free_port())],
                                      env=env, start_new_session=True, stdout=open(log, "w"),
                                      stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in Path(log).read_text():
            assert nodes[-1].poll() is None and time.monotonic() < deadline, Path(log).read_text()[-2000:]
            time.sleep(0.3)

    try:
        start(["--head", "--port", str(port), "--include-dashboard", "false"], tmp_path / "head.log")
        start(["--address", f"127.0.0.1:{port}"], tmp_path / "worker.log")
        run = subprocess.run([str(BIN / "sensitivity"), "run", str(path), "--smoke", "--out", str(tmp_path / "out"),
                              "--address", f"127.0.0.1:{port}"], env=env, capture_output=True, text=True,
                             timeout=240)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "trials.parquet" in run.stdout
    finally:
        for node in nodes:
            try:
                os.killpg(node.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for node in nodes:
            try:
                node.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
    trials = pd.read_parquet(tmp_path / "out" / "two-nodes" / "trials.parquet")
    assert len(trials) == 4 and trials["trial_id"].is_unique
    assert trials["node"].nunique() == 2, trials["node"].value_counts()
    time.sleep(1)
    assert _ray_processes(temp) == [], "both nodes must be stopped"
    shutil.rmtree(temp, ignore_errors=True)
