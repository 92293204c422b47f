"""Sweeps on Ray Tune: end to end, errors, Optuna with divergence, a lost worker, kill -9 and resume, two nodes.

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
import pyarrow.parquet as pq
import pytest
import yaml

from sensitivity.progress import Progress
from sensitivity.record import TrialRecord
from sensitivity.results import ResultsStore, load, trial_id
from sensitivity.storage import join, resolve
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


def read_table(location, name: str) -> pd.DataFrame:
    """A compacted table of a study location, a path or a URI."""
    fs, path = resolve(join(str(location), name))
    return pq.read_table(path, filesystem=fs).to_pandas()


def assert_exactly_once(results, study: Study, smoke: bool = False):
    trials = read_table(results, "trials.parquet")
    curves = read_table(results, "curves.parquet")
    expected = {trial_id(c) for c in study.trials(smoke=smoke)}
    assert trials["trial_id"].is_unique
    assert set(trials["trial_id"]) == expected
    per_trial = curves.groupby("trial_id").size()
    completed = trials.set_index("trial_id")["epochs_completed"]
    assert (per_trial.reindex(completed.index, fill_value=0) == completed).all()
    return trials, curves


# ---------------------------------------------------------------------------
# fast: the pieces


def _records(configs) -> list[TrialRecord]:
    return [TrialRecord.from_config(c) for c in configs]


def test_bundles_only_short_trials_and_interleave():
    short = _records({"dataset": "digits", "model": "mlp", "optimizer": "sgd", "epochs": 15, "seed": i}
                     for i in range(40))
    assert all(is_short(c) for c in short)
    assert bundle_size("auto", short, slots=2) == 5
    assert bundle_size("auto", short[:2], slots=2) == 1
    assert bundle_size(3, short, slots=2) == 3
    long = _records([{"dataset": "cifar10", "model": "resnet18", "optimizer": "sgd", "epochs": 200}])
    assert not is_short(long[0]) and bundle_size("auto", short + long, slots=2) == 1
    bundles = make_bundles(short, 5)
    assert len(bundles) == 8 and sorted(c.seed for b in bundles for c in b) == list(range(40))
    assert [c.seed for c in bundles[0][:3]] == [0, 8, 16]  # neighbours in the grid spread over tasks


def test_error_row_keeps_identity_and_never_nan():
    config = {"study": "s", "dataset": "digits", "model": "mlp", "optimizer": "adam", "lr": 0.1, "seed": 3,
              "decay": {"every_epochs": 5, "factor": 0.5}, "optimizer_args": {"betas": [0.9, 0.99]}}
    record = TrialRecord.from_config(config)
    row = error_row(record, RuntimeError("boom\nsecond line"), 1.5)
    assert row["status"] == "error" and row["error"] == "RuntimeError: boom second line"
    assert row["decay"] == "step:5:0.5" and row["betas"] == "[0.9, 0.99]" and row["lr"] == 0.1
    assert all(row[k] == math.inf for k in LOSSES)
    assert {k: row[k] for k in record.columns()} == record.columns()  # spelt as every row of the trial


def test_long_trials_checkpoint_beside_the_tables_or_mirrored_to_a_uri(tmp_path, monkeypatch):
    from sensitivity.sweep import worker

    record = TrialRecord.from_config({"study": "s", **TASK, "optimizer": "sgd", "lr": 0.1, "seed": 0})
    local = tmp_path / "checkpoints"
    row, curve = run_one(record, str(local))
    assert row["status"] == "ok" and len(curve) == 2 and not list(local.glob("*.pt"))  # removed when done

    monkeypatch.setattr(worker, "CHECKPOINT_SYNC_S", 0.05)
    remote = tmp_path / "remote"
    remote.mkdir(parents=True)
    (remote / "t1.pt").write_bytes(b"epoch 3")
    mirror = worker.Mirror(f"file://{remote}", ["t1.pt"])
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


def test_the_eta_waits_for_a_second_arrival(monkeypatch):
    """A fused array's 50 trials arrive at once: no rate (and no 'ETA 0:00') until the next arrival."""
    from sensitivity import progress as progress_module

    now = [100.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    progress = Progress(900, name="s", stream=io.StringIO(), every=0)
    now[0] = 110.0
    progress.add([{"status": "ok"}] * 50)
    assert progress.line().endswith("ETA ?")
    now[0] = 120.0
    progress.add([{"status": "ok"}] * 50)  # 50 trials in 10 s: 800 left take 160 s
    assert progress.line().endswith("ETA 2:40")
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
    row, curve = run_one(TrialRecord.from_config(config))
    assert row["status"] == "error" and str(empty) in row["error"] and curve == []
    assert row["trial_id"] == trial_id(config) and row["label"] == "mnist-missing"
    assert all(row[k] == math.inf for k in LOSSES) and "host" in row and "node" in row


def test_a_retried_bundle_skips_the_trials_its_checkpoint_lists(tmp_path, monkeypatch):
    from ray import tune

    from sensitivity.sweep import worker

    configs = _records({"study": "s", **TASK, "optimizer": "sgd", "lr": 0.1, "seed": k} for k in range(4))
    reports, trained = [], []
    monkeypatch.setattr(worker, "set_threads", lambda cpu: None)

    def run_unit(unit, checkpoint_root, exits_root=None):
        for record in unit.records:
            trained.append(record.trial_id)
            yield [{"trial_id": record.trial_id}], []

    monkeypatch.setattr(worker, "run_unit", run_unit)

    def report(metrics, checkpoint=None):  # Tune persists the checkpoint's folder before report returns
        if checkpoint is None:  # the rows' result, before the checkpoint's
            assert "payload" in metrics
            return
        assert "payload" not in metrics
        reports.append(tune.Checkpoint.from_directory(shutil.copytree(checkpoint.path, tmp_path / str(len(reports)))))

    monkeypatch.setattr(tune, "report", report)
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    unit = worker.Unit(configs, [{}] * 4)
    monkeypatch.setattr(worker, "REPORT_S", 0.0)  # a report per trial, as a slow trial's bundle reports
    worker.grid_task({"bundle": 0}, [[unit]], None, 1)
    assert trained == [trial_id(c) for c in configs] and all(reports)
    # the worker is lost after its second report reached the driver: Tune restarts from that checkpoint
    second = reports[1]
    trained.clear()
    monkeypatch.setattr(tune, "get_checkpoint", lambda: second)
    worker.grid_task({"bundle": 0}, [[unit]], None, 1)
    assert trained == [trial_id(c) for c in configs[2:]]


def test_a_failed_write_stops_the_tuner_and_is_raised(tmp_path):
    from sensitivity.results import ResultsWriteError
    from sensitivity.sweep.tuner import Recorder, _StopOnFailure

    class FullStore:
        def __contains__(self, trial_id):
            return False

        def append(self, rows, curves):
            raise ResultsWriteError(28, "cannot write /x/parts: no space left on the device")

    recorder = Recorder(FullStore(), Progress(1, name="s", quiet=True))
    stopper = _StopOnFailure(recorder)
    assert not stopper.stop_all()
    recorder.on_trial_result(0, [], None, {"payload": '{"rows": [{"trial_id": "a"}], "curves": []}'})
    assert isinstance(recorder.failure, ResultsWriteError) and stopper.stop_all() and stopper("t", {})


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


def _trainings(log: Path) -> dict[str, list[int]]:
    """trial_id -> pids of the processes that started training it (SENSITIVITY_TRAINING_LOG)."""
    found: dict[str, list[int]] = {}
    for marker in log.iterdir():
        tid, pid, _ = marker.name.split(".")
        found.setdefault(tid, []).append(int(pid))
    return found


@pytest.mark.slow
def test_sigkill_then_resume_runs_every_trial_exactly_once(tmp_path, ray_local, s3, capsys):
    """On the local S3 server, as a cluster stores a study: a worker and then the driver killed, a second
    driver refused meanwhile, a rerun that completes the study, and analysis reading the killed run's parts."""
    import analysis
    from sensitivity.cli import main
    from sensitivity.lease import LEASE

    empty = tmp_path / "no-data"  # MNIST files that exist (the driver's check passes) but do not parse
    (empty / "MNIST" / "raw").mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (empty / "MNIST" / "raw" / name).write_bytes(b"not an idx file")
    path = write_study(tmp_path / "kill.yaml", {
        "name": "kill", "task": {**TASK, "epochs": 3}, "seeds": 4, "bundle": 4, "fuse": "off",
        "optimizers": [{"name": "sgd", "lr": [0.01, 0.1, 1.0]}, {"name": "adam", "lr": 1e-3},
                       # trials that raise: recorded with status error, and the sweep goes on
                       {"name": "sgd", "lr": 0.1, "label": "mnist-missing",
                        "task": {"dataset": "mnist", "data_dir": str(empty)}}]})
    study = load_study(path)
    storage = s3.uri(f"{tmp_path.name}/out")
    location = join(storage, "kill")
    log = tmp_path / "trainings"
    log.mkdir()
    temp = tempfile.mkdtemp(prefix="rk-", dir="/tmp")  # this run's own Ray, found by its temp dir
    env = {**os.environ, "RAY_TMPDIR": temp, "SENSITIVITY_TRAINING_LOG": str(log)}
    # one bundle at a time: the others wait while the lost one is retried, so the driver's kill lands mid-sweep
    proc = subprocess.Popen([str(BIN / "sensitivity"), "run", str(path), "--storage", storage, "--quiet",
                             "--max-concurrent", "1"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    bundles = make_bundles(study.trials(), 4)
    bundle_of = {trial_id(c): k for k, b in enumerate(bundles) for c in b}

    def wait_for(ready, what: str):
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            found = ready(ResultsStore(location).done_ids())  # a reader: it never needs the run's lease
            if found:
                return found
            time.sleep(0.3)  # each look reads the store from the S3 server in this process
        raise AssertionError(f"no {what}: {proc.poll()} {proc.stderr.read().decode()[-2000:] if proc.poll() else ''}")

    def mid_bundle(done):
        """(pid, its bundle) of a worker running a trial after finishing another of the same bundle."""
        latest = {}
        for marker in sorted(log.iterdir(), key=lambda m: m.stat().st_mtime_ns):
            tid, pid, _ = marker.name.split(".")
            latest[int(pid)] = tid
        trainings = _trainings(log)
        for pid, running in latest.items():
            mates = [t for t in done if pid in trainings.get(t, []) and bundle_of[t] == bundle_of[running]]
            if running not in done and mates:
                return pid, bundle_of[running], done
        return None

    def retried(done):
        """The lost bundle is past its finished trials: a new worker trains one of its others, or it is done."""
        mine = [t for t, k in bundle_of.items() if k == bundle]
        again = any(pid != worker for t in mine if t not in finished for pid in _trainings(log).get(t, []))
        return (again or all(t in done for t in mine)) and done

    try:
        # a second driver on the same study is refused at once while the first holds the lease
        wait_for(lambda done: s3.fs.get_file_info(s3.key(f"{tmp_path.name}/out/kill/{LEASE}")).size, "lease")
        capsys.readouterr()
        assert main(["run", str(path), "--storage", storage, "--quiet"]) == 2
        assert "is in use by another run" in capsys.readouterr().err
        # then a worker dies mid-bundle (a lost worker): Ray Tune retries its bundle, which
        # skips the trials the driver already holds and trains only the one that was running
        worker, bundle, finished = wait_for(mid_bundle, "worker mid-bundle")
        os.kill(worker, signal.SIGKILL)
        wait_for(retried, "retried bundle")
        # then the driver itself is killed
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        try:  # Ray's helper processes of the killed driver share its process group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    trainings = _trainings(log)
    assert all(len(trainings[tid]) == 1 for tid in finished), "a finished trial was trained again"
    shutil.rmtree(temp, ignore_errors=True)
    before, _ = load(location)  # the killed run left parts: they load like the tables
    assert len(before) < 20, "the kill must land mid-sweep"
    read, _ = analysis.load(location)
    assert sorted(read["trial_id"]) == sorted(before["trial_id"])

    summary = run_study(study, storage=storage, quiet=True)
    assert summary.skipped == len(before) and summary.ran == 20 - len(before) and summary.missing == 0
    trials, _ = assert_exactly_once(location, study)
    errors = trials[trials["status"] == "error"]
    assert len(errors) == 4 and set(errors["label"]) == {"mnist-missing"}
    assert errors["error"].notna().all()
    assert set(trials.loc[trials.label != "mnist-missing", "status"]) <= {"ok", "diverged"}
    kept = trials.set_index("trial_id").loc[before["trial_id"], "wall_time_s"]
    assert (kept.values == before["wall_time_s"].values).all()  # finished trials were not rerun


class _TwoNodes:
    """A head and a worker node of a local Ray cluster on loopback, each in its own process group.

    `env` (with a private token: the nodes and the driver of a test authenticate to each other
    only) is what a driver must run with; `stop(node)` loses a node; leaving the block stops both
    and checks that no Ray process of theirs is left.
    """

    def __init__(self, tmp_path: Path, **env: str):
        self.tmp_path, self.temp = tmp_path, tempfile.mkdtemp(prefix="r2-", dir="/tmp")
        self.port = _free_port()
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", **env}
        self.nodes: list[subprocess.Popen] = []

    def _start(self, args: list[str], log: Path) -> None:
        common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--temp-dir", self.temp, "--block",
                  "--disable-usage-stats", "--dashboard-agent-listen-port", "0"]
        self.nodes.append(subprocess.Popen([str(BIN / "ray"), "start", *args, *common,
                                            "--metrics-export-port", str(_free_port())],
                                           env=self.env, start_new_session=True, stdout=open(log, "w"),
                                           stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log.read_text():
            assert self.nodes[-1].poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.3)

    @staticmethod
    def stop(node: subprocess.Popen) -> None:
        try:
            os.killpg(node.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "_TwoNodes":
        self._start(["--head", "--port", str(self.port), "--include-dashboard", "false"], self.tmp_path / "head.log")
        self._start(["--address", f"127.0.0.1:{self.port}"], self.tmp_path / "worker.log")
        return self

    def __exit__(self, *exc) -> None:
        for node in self.nodes:
            self.stop(node)
        for node in self.nodes:
            try:
                node.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
        if exc[0] is None:
            time.sleep(1)
            assert _ray_processes(self.temp) == [], "both nodes must be stopped"
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.mark.slow
def test_two_ray_nodes_on_one_machine_both_run_trials(tmp_path):
    path = write_study(tmp_path / "two.yaml", {
        "name": "two-nodes", "task": {**TASK, "epochs": 2}, "seeds": 4, "fuse": "off",
        "optimizers": [{"name": "sgd", "lr": [0.01, 0.1]}, {"name": "adam", "lr": [1e-3, 1e-2]}]})
    with _TwoNodes(tmp_path) as cluster:
        run = subprocess.run([str(BIN / "sensitivity"), "run", str(path), "--smoke", "--out", str(tmp_path / "out"),
                              "--address", f"127.0.0.1:{cluster.port}"], env=cluster.env, capture_output=True,
                             text=True, timeout=240)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "trials.parquet" in run.stdout
    trials = pd.read_parquet(tmp_path / "out" / "two-nodes" / "trials.parquet")
    assert len(trials) == 4 and trials["trial_id"].is_unique
    assert trials["node"].nunique() == 2, trials["node"].value_counts()


@pytest.mark.exhaustive  # about a minute on 2 cores; the test above covers two nodes running trials
def test_a_lost_node_loses_only_its_running_trials(tmp_path):
    path = write_study(tmp_path / "two.yaml", {
        "name": "two-nodes", "task": {**TASK, "epochs": 4}, "seeds": 3, "bundle": 2, "fuse": "off",
        "optimizers": [{"name": "sgd", "lr": [0.01, 0.1]}, {"name": "adam", "lr": [1e-3, 1e-2]}]})
    study = load_study(path)
    location = tmp_path / "out" / "two-nodes"
    log = tmp_path / "trainings"
    log.mkdir()
    with _TwoNodes(tmp_path, SENSITIVITY_TRAINING_LOG=str(log)) as cluster:
        run = subprocess.Popen([str(BIN / "sensitivity"), "run", str(path), "--out", str(tmp_path / "out"),
                                "--address", f"127.0.0.1:{cluster.port}"], env=cluster.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        deadline, before = time.monotonic() + 180, None
        while time.monotonic() < deadline and run.poll() is None:
            trials = ResultsStore(location).trials  # a reader: no lease needed
            if trials is not None and trials["node"].nunique() == 2:
                before = trials
                break
            time.sleep(0.2)
        assert before is not None and len(before) < 12, (run.poll(), run.stderr and run.stderr.read()[-3000:])
        cluster.stop(cluster.nodes[1])  # the second node is lost mid-run: its running bundle is retried on the head
        out, err = run.communicate(timeout=240)
        assert run.returncode == 0, err[-3000:]
        assert "trials.parquet" in out
    trials, _ = assert_exactly_once(location, study)
    assert trials["node"].nunique() == 2, trials["node"].value_counts()
    after = trials[~trials["trial_id"].isin(before["trial_id"])]
    assert len(after)  # the rest ran on the head
    trainings = _trainings(log)
    assert all(len(trainings[tid]) == 1 for tid in before["trial_id"]), "a finished trial was trained again"
