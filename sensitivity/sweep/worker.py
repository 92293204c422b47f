"""The worker side: run one trial (or a bundle) and report rows and curves to the driver.

A trial never raises here: a failure becomes a row with status `error`.  Long trials
checkpoint each epoch; on remote storage a `Mirror` keeps the node-local checkpoint
directory copied to the URI so that a retried task resumes where the lost one stopped.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid

import ray
from ray import tune

from sensitivity.results import join, resolve, trial_id
from sensitivity.study import runnable
from sensitivity.sweep.objective import mean_metric, metric_value  # noqa: F401 (importable from here)

TRAINING_LOG = "SENSITIVITY_TRAINING_LOG"  # a folder: every training leaves <trial_id>.<pid>.<n> there (tests count them)
CHECKPOINT_SYNC_S = 30.0  # how often a node-local checkpoint is mirrored to remote storage
MIRROR_KEY = "_mirror"  # run_one's note of failed checkpoint uploads, never a column
LOSS_KEYS = ("min_train_loss", "min_test_loss", "final_train_loss", "final_test_loss")


def error_row(config: dict, exc: BaseException, wall: float) -> dict:
    """A row for a trial that raised: its identity, status `error` and the message."""
    row = {k: config.get(k) for k in ("study", "dataset", "model", "optimizer", "lr", "beta",
                                      "seed", "batch_size", "epochs", "weight_decay")}
    from sensitivity.train import decay_label

    row["label"] = config.get("label") or config.get("optimizer")
    row["decay"] = decay_label(config.get("decay"))
    for key, value in (config.get("optimizer_args") or {}).items():
        row[key] = value
    message = f"{type(exc).__name__}: {exc}".strip()
    row.update({"status": "error", "error": " ".join(message.split())[:2000], "wall_time_s": wall,
                "epochs_completed": 0, "steps": 0,
                **{k: math.inf for k in LOSS_KEYS}})
    return row


def node_identity() -> tuple[str, str]:
    """(Ray node id, hostname:ip) of this worker; outside Ray the node id is empty."""
    if not ray.is_initialized():  # get_runtime_context() would start a Ray of its own
        return "", f"{socket.gethostname()}:127.0.0.1"
    return ray.get_runtime_context().get_node_id(), f"{socket.gethostname()}:{ray.util.get_node_ip_address()}"


class Mirror:
    """Keep a node-local checkpoint directory mirrored to remote storage (s3://, gs://).

    Only files that changed since their last upload are sent.  A failed upload costs only
    progress on a lost worker, so the trial goes on; failures are counted (`failures`, `error`
    holds the first) and warned about once on the worker's stderr, and the sweep's summary
    reports them.
    """

    def __init__(self, remote: str):
        self.fs, self.remote = resolve(remote)
        self.local = tempfile.mkdtemp(prefix="sensitivity-ckpt-")
        self.failures, self.error, self.uploads = 0, None, 0
        self._sent: dict[str, tuple[int, int]] = {}  # file name -> (size, mtime) last uploaded
        info = self.fs.get_file_info(self.remote)
        if info.type.name == "Directory":  # resume a trial a lost worker (or an error) left behind
            import pyarrow.fs as pafs

            pafs.copy_files(self.remote, self.local, source_filesystem=self.fs,
                            destination_filesystem=pafs.LocalFileSystem())
            self._sent = {name: self._signature(name) for name in os.listdir(self.local)}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _signature(self, name: str) -> tuple[int, int]:
        stat = os.stat(os.path.join(self.local, name))
        return stat.st_size, stat.st_mtime_ns

    def _push(self) -> None:
        for name in sorted(os.listdir(self.local)):
            if ".tmp-" in name or not os.path.isfile(os.path.join(self.local, name)):
                continue  # a checkpoint being written: its rename comes next
            signature = self._signature(name)
            if self._sent.get(name) == signature:
                continue
            self.fs.create_dir(self.remote, recursive=True)
            with open(os.path.join(self.local, name), "rb") as src, \
                    self.fs.open_output_stream(self.remote.rstrip("/") + "/" + name) as dst:
                shutil.copyfileobj(src, dst)
            self._sent[name] = signature
            self.uploads += 1

    def sync(self) -> None:
        """Upload what changed; count a failure instead of raising."""
        with self._lock:
            try:
                self._push()
            except Exception as exc:
                self.failures += 1
                if self.error is None:
                    self.error = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
                    print(f"sensitivity: checkpoint upload to {self.remote} failed ({self.error}); "
                          f"the trial goes on, but a lost worker will restart it from scratch", file=sys.stderr)

    def _loop(self) -> None:
        while not self._stop.wait(CHECKPOINT_SYNC_S):
            self.sync()

    def close(self) -> None:
        """Stop mirroring; the last checkpoint (of a trial that raised) is uploaded first."""
        self._stop.set()
        self._thread.join()
        self.sync()
        shutil.rmtree(self.local, ignore_errors=True)

    def report(self) -> dict | None:
        return {"failures": self.failures, "error": self.error} if self.failures else None


def run_one(config: dict, checkpoint: str | None = None) -> tuple[dict, list[dict]]:
    """Run one trial; never raises: a failing trial becomes a row with status `error`."""
    from sensitivity.train import run_trial

    config = copy.deepcopy(config)
    extra = config.pop("_extra", {})
    tid = trial_id(config)
    label = config.get("label") or config["optimizer"]
    start = time.time()
    mirror = None
    if os.environ.get(TRAINING_LOG):
        _log_training(os.environ[TRAINING_LOG], tid)
    try:
        if checkpoint and "://" in checkpoint:
            mirror = Mirror(checkpoint)
            checkpoint = mirror.local
        result = run_trial(runnable(config), checkpoint_dir=checkpoint)
        row, curve = dict(result.row), [dict(c) for c in result.curve]
    except Exception as exc:  # the sweep goes on; the message is kept in the row
        row, curve = error_row(config, exc, time.time() - start), []
    finally:
        if mirror is not None:
            mirror.close()
    node, host = node_identity()
    row.update({"trial_id": tid, "node": node, "host": host, **extra})
    if mirror is not None and mirror.report():
        row[MIRROR_KEY] = mirror.report()  # for the driver's summary; `payload` moves it out of the row
    row.setdefault("label", label)
    row.setdefault("study", config.get("study"))
    for point in curve:
        point["trial_id"] = tid
    return row, curve


def _log_training(folder: str, tid: str) -> None:
    with open(os.path.join(folder, f"{tid}.{os.getpid()}.{uuid.uuid4().hex[:6]}"), "w"):
        pass


def payload(row: dict, curve: list[dict], checkpoint: str | None) -> str:
    return payload_of([row], curve, checkpoint)


def payload_of(rows: list[dict], curves: list[dict], checkpoint: str | None) -> str:
    """One Tune result's payload: trials finished together (an array's members), their curves and
    the checkpoint directory the driver removes once it holds them."""
    rows = [dict(r) for r in rows]
    mirrors = [m for m in (r.pop(MIRROR_KEY, None) for r in rows) if m]
    mirror = None
    if mirrors:
        mirror = {"failures": sum(m["failures"] for m in mirrors),
                  "error": next((m["error"] for m in mirrors if m["error"]), None)}
    return json.dumps({"rows": rows, "curves": curves, "checkpoint": checkpoint, "mirror": mirror}, default=str)


def set_threads(cpu: float) -> None:
    import torch

    torch.set_num_threads(max(1, int(cpu)))


class Reported:
    """The trials a Ray trial (a bundle, a point's seeds, an array) has reported, kept in Tune's checkpoint.

    Tune registers a checkpoint together with the result that carries it, when the driver
    processes that result; a retried Ray trial (its worker or node was lost) restarts from the
    latest one.  So `ids` on a retry are exactly the trials the driver already holds, and
    only the trial that was running is trained again (from its epoch checkpoint, if any).
    A Ray trial of one trial keeps no such checkpoint: there is nothing to skip.
    """

    FILE = "reported.json"

    def __init__(self, size: int):
        self.keep = size > 1
        self.values: dict[str, float] = {}  # trial_id -> the value the trial reported
        checkpoint = tune.get_checkpoint() if self.keep else None
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                with open(os.path.join(folder, self.FILE)) as handle:
                    self.values = {k: float(v) for k, v in json.load(handle).items()}

    def __contains__(self, tid: str) -> bool:
        return tid in self.values

    def report(self, metrics: dict, rows: list[dict], values: list[float] | None = None) -> None:
        """tune.report `metrics`, with the reported trial ids (and a value each) as the checkpoint."""
        for k, row in enumerate(rows):
            self.values[row["trial_id"]] = values[k] if values else math.nan
        if not self.keep:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="sensitivity-reported-") as folder:
            with open(os.path.join(folder, self.FILE), "w") as handle:
                json.dump(self.values, handle)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def grid_task(config: dict, bundles: list, checkpoint_root: str | None, cpu: float, arrays: int = 0) -> None:
    """Ray Tune trainable: run one bundle of trials, reporting each as it finishes.

    The first `arrays` bundles are fused arrays (sensitivity.fused): trained as one, reported
    trial by trial.  A retried bundle or array skips the trials the driver already holds (`Reported`).
    """
    set_threads(cpu)
    bundle = bundles[config["bundle"]]
    reported = Reported(len(bundle))
    if config["bundle"] < arrays:
        from sensitivity.fused.sweep import run_array

        members = [c for c in bundle if trial_id(c) not in reported]
        results = run_array(members, checkpoint_root) if members else []
        # The members trained as one array finish together: one Tune result (and one saved
        # checkpoint) for all of them rather than one each, which cost about 40 ms a member.
        # Members that fell back to running alone (the array failed) report one by one.
        together = [r for r in results if r[0].get("array_id")]
        if together:
            rows = [row for row, _, _ in together]
            curves = [point for _, curve, _ in together for point in curve]
            ckpt = next((c for _, _, c in together if c), None)
            reported.report({"payload": payload_of(rows, curves, ckpt), "trials": len(rows)}, rows)
        for row, curve, ckpt in (r for r in results if not r[0].get("array_id")):
            reported.report({"payload": payload(row, curve, ckpt), "trials": 1}, [row])
        return
    for trial in bundle:
        tid = trial_id(trial)
        if tid in reported:
            continue
        ckpt = join(checkpoint_root, tid) if checkpoint_root else None
        row, curve = run_one(trial, ckpt)
        reported.report({"payload": payload(row, curve, ckpt), "trials": 1}, [row])
