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
import tempfile
import threading
import time

import ray
from ray import tune

from sensitivity.results import join, resolve, trial_id
from sensitivity.study import runnable

CHECKPOINT_SYNC_S = 30.0  # how often a node-local checkpoint is mirrored to remote storage
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
    """Keep a node-local checkpoint directory mirrored to remote storage (s3://, gs://)."""

    def __init__(self, remote: str):
        self.fs, self.remote = resolve(remote)
        self.local = tempfile.mkdtemp(prefix="sensitivity-ckpt-")
        info = self.fs.get_file_info(self.remote)
        if info.type.name == "Directory":  # resume a trial a lost worker left behind
            import pyarrow.fs as pafs

            pafs.copy_files(self.remote, self.local, source_filesystem=self.fs,
                            destination_filesystem=pafs.LocalFileSystem())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _push(self) -> None:
        import pyarrow.fs as pafs

        if os.listdir(self.local):
            pafs.copy_files(self.local, self.remote, source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.fs)

    def _loop(self) -> None:
        while not self._stop.wait(CHECKPOINT_SYNC_S):
            try:
                self._push()
            except Exception:  # a failed upload only costs progress on a lost worker
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        shutil.rmtree(self.local, ignore_errors=True)


def run_one(config: dict, checkpoint: str | None = None) -> tuple[dict, list[dict]]:
    """Run one trial; never raises: a failing trial becomes a row with status `error`."""
    from sensitivity.train import run_trial

    config = copy.deepcopy(config)
    extra = config.pop("_extra", {})
    tid = trial_id(config)
    label = config.get("label") or config["optimizer"]
    start = time.time()
    mirror = None
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
    row.setdefault("label", label)
    row.setdefault("study", config.get("study"))
    for point in curve:
        point["trial_id"] = tid
    return row, curve


def payload(row: dict, curve: list[dict], checkpoint: str | None) -> str:
    return json.dumps({"rows": [row], "curves": curve, "checkpoint": checkpoint}, default=str)


def set_threads(cpu: float) -> None:
    import torch

    torch.set_num_threads(max(1, int(cpu)))


def grid_task(config: dict, bundles: list, checkpoint_root: str | None, cpu: float, arrays: int = 0) -> None:
    """Ray Tune trainable: run one bundle of trials, reporting each as it finishes.

    The first `arrays` bundles are fused arrays (sensitivity.fused): trained as one, reported trial by trial.
    """
    set_threads(cpu)
    if config["bundle"] < arrays:
        from sensitivity.fused.sweep import run_array

        for row, curve, ckpt in run_array(bundles[config["bundle"]], checkpoint_root):
            tune.report({"payload": payload(row, curve, ckpt), "trials": 1})
        return
    for trial in bundles[config["bundle"]]:
        ckpt = join(checkpoint_root, trial_id(trial)) if checkpoint_root else None
        row, curve = run_one(trial, ckpt)
        tune.report({"payload": payload(row, curve, ckpt), "trials": 1})


def metric_value(row: dict, metric: str) -> float:
    value = row.get(metric)
    if row.get("status") == "error" or value is None or not isinstance(value, (int, float)) or math.isnan(value):
        return math.inf
    return float(value)


def mean_metric(values: list[float]) -> float:
    if not values or any(not math.isfinite(v) for v in values):
        return math.inf  # a diverged seed makes the point as bad as it gets, and never NaN
    return float(sum(values) / len(values))
