"""The worker side: train one unit (a trial, a bundle of trials or a fused array) and report to the driver.

The Ray-side wrapping of training lives here once, for a trial and an array alike: threads,
node identity, the sweep's annotations on each row, checkpoint mirroring, the training log the
tests count, and reporting to Tune. A trial never raises here: a failure becomes a row with
status `error`. Long trials checkpoint each epoch (one file per trial under the checkpoint
root); on remote storage a `Mirror` keeps the unit's files copied to the URI so that a
retried task resumes where the lost one stopped.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from typing import NamedTuple

import ray
from ray import tune

from sensitivity import outcome
from sensitivity.record import TrialRecord
from sensitivity.results import resolve
from sensitivity.sweep import exits
from sensitivity.sweep.objective import mean_metric, metric_value  # noqa: F401 (importable from here)

TRAINING_LOG = "SENSITIVITY_TRAINING_LOG"  # a folder: every training leaves <trial_id>.<pid>.<n> there (tests count them)
# fault injection for the tests: trial ids (comma-separated) whose worker process is killed (SIGKILL)
# when it starts training them, as an out-of-memory kill or a segfault would
FAULT_KILL = "SENSITIVITY_FAULT_KILL"
CHECKPOINT_SYNC_S = 30.0  # how often a node-local checkpoint is mirrored to remote storage
REPORT_S = 5.0  # a task's finished trials reach the driver at most this often (see Batches)
MIRROR_KEY = "_mirror"  # run_one's note of failed checkpoint uploads, never a column


def error_row(record: TrialRecord, exc: BaseException, wall: float) -> dict:
    """The row of a trial that raised: its record's identity columns, status `error` and the message."""
    return outcome.error_row(record, f"{type(exc).__name__}: {exc}".strip(), wall)


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

    def __init__(self, remote: str, names: list[str]):
        self.fs, self.remote = resolve(remote)
        self.local = tempfile.mkdtemp(prefix="sensitivity-ckpt-")
        self.failures, self.error, self.uploads = 0, None, 0
        self._sent: dict[str, tuple[int, int]] = {}  # file name -> (size, mtime) last uploaded
        # resume the trials a lost worker (or an error) left behind: their files only
        for name in names:
            source = self.remote.rstrip("/") + "/" + name
            if self.fs.get_file_info(source).type.name != "File":
                continue
            with self.fs.open_input_stream(source) as src, open(os.path.join(self.local, name), "wb") as dst:
                shutil.copyfileobj(src, dst)
            self._sent[name] = self._signature(name)
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


class Unit(NamedTuple):
    """What one Ray task trains: trials with the sweep's annotations beside each (``round``,
    ``search_entry``/``search_point``), as one fused array or one after the other."""

    records: list[TrialRecord]
    extras: list[dict]
    fused: bool = False


def checkpoint_names(records: list[TrialRecord]) -> list[str]:
    """The checkpoint files of `records` under a checkpoint root: one file per trial."""
    return [f"{r.trial_id}.pt" for r in records]


def run_unit(unit: Unit, checkpoint_root: str | None, exits_root: str | None = None):
    """Train a unit; yield (rows, curves) as they finish: once for an array, once per trial otherwise.

    Never raises for a failing trial: it becomes an error row. An array that fails for any reason
    runs its members again alone, so a failure is recorded against the trial that causes it.
    Each row carries the node that ran it and the unit's annotations. On remote storage (s3://,
    gs://) the unit's checkpoint files are mirrored from a node-local folder (`Mirror`). With
    `exits_root`, this process's watcher (`exits.watcher`) knows which trials it trains, and records
    there how the process ended should it die while training them.
    """
    from sensitivity.fused import run_fused
    from sensitivity.train import run_trial

    records, extras = list(unit.records), list(unit.extras)
    mirror, local = None, checkpoint_root
    if checkpoint_root and "://" in checkpoint_root:
        mirror = Mirror(checkpoint_root, checkpoint_names(records))
        local = mirror.local
    node, host = node_identity()
    log = os.environ.get(TRAINING_LOG)
    doomed = set(filter(None, os.environ.get(FAULT_KILL, "").split(",")))
    watch = exits.watcher() if exits_root else None

    def start(batch: list[TrialRecord]) -> None:
        if watch is not None:
            watch.training(exits_root, [r.trial_id for r in batch])
        for record in batch:
            _start_training(record, log, doomed)

    def stamped(done: list[tuple[dict, list[dict]]]):
        rows, curves = [], []
        for (row, curve), extra in done:
            rows.append({**row, "node": node, "host": host, **extra})
            curves.extend(curve)
        if mirror is not None and mirror.report():  # failed uploads, for the driver's summary
            rows[0][MIRROR_KEY] = mirror.report()
        return rows, curves

    try:
        if unit.fused and len(records) > 1:
            start(records)
            try:
                results = run_fused(records, checkpoint_dir=local)
            except Exception:
                results = None  # every member alone: an error then belongs to its own trial
            if results is not None:
                yield stamped([((r.row, r.curve), e) for r, e in zip(results, extras)])
                return
        for record, extra in zip(records, extras):
            start([record])
            began = time.time()
            try:
                result = run_trial(record, checkpoint_dir=local)
                done = (result.row, result.curve)
            except Exception as exc:  # the sweep goes on; the message is kept in the row
                done = (error_row(record, exc, time.time() - began), [])
            yield stamped([(done, extra)])
    finally:
        if watch is not None:
            watch.idle()
        if mirror is not None:
            mirror.close()


def run_one(record: TrialRecord, checkpoint_root: str | None = None, extra: dict | None = None
            ) -> tuple[dict, list[dict]]:
    """One trial alone (a unit of one): its row and curve; never raises."""
    ((row,), curve), = run_unit(Unit([record], [extra or {}]), checkpoint_root)
    return row, curve


def _start_training(record: TrialRecord, log: str | None, doomed: set[str]) -> None:
    if log:
        with open(os.path.join(log, f"{record.trial_id}.{os.getpid()}.{uuid.uuid4().hex[:6]}"), "w"):
            pass
    if record.trial_id in doomed:
        os.kill(os.getpid(), signal.SIGKILL)


def payload(rows: list[dict], curves: list[dict]) -> str:
    """One Tune result's payload: trials finished together (an array's members, or one trial) and
    their curves; the driver removes their checkpoints once it holds them."""
    rows = [dict(r) for r in rows]
    mirrors = [m for m in (r.pop(MIRROR_KEY, None) for r in rows) if m]
    mirror = None
    if mirrors:
        mirror = {"failures": sum(m["failures"] for m in mirrors),
                  "error": next((m["error"] for m in mirrors if m["error"]), None)}
    return json.dumps({"rows": rows, "curves": curves, "mirror": mirror}, default=str)


def set_threads(cpu: float) -> None:
    import torch

    torch.set_num_threads(max(1, int(cpu)))


class Reported:
    """The trials a Ray trial (a bundle, a point's seeds, an array) has reported, kept in Tune's checkpoint.

    Tune registers a checkpoint together with the result that carries it, when the driver
    processes that result; a retried Ray trial (its worker or node was lost) restarts from the
    latest one.  So `ids` on a retry are trials the driver already holds, and only those reported
    after them are trained again (the one that was running from its epoch checkpoint, if any; a
    batch the driver holds but the checkpoint does not name yet is recorded once all the same).
    A Ray trial of one trial keeps no such checkpoint: there is nothing to skip.

    The rows go in one result and the checkpoint in the next, without them: Tune keeps a
    checkpoint's result in its experiment state, which it writes again and again, so a payload
    there made every write as large as the task's latest batches (120 MB at 100,000 trials).
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
        tune.report(metrics)
        if not self.keep:
            return
        with tempfile.TemporaryDirectory(prefix="sensitivity-reported-") as folder:
            with open(os.path.join(folder, self.FILE), "w") as handle:
                json.dump(self.values, handle)
            # after the rows, so it never names a trial the driver does not hold
            small = {k: v for k, v in metrics.items() if k != "payload"}
            tune.report({**small, "trials": 0}, checkpoint=tune.Checkpoint.from_directory(folder))


class Batches:
    """A task's finished trials, reported to Tune together: the first at once (the driver sees a start),
    then at most every `REPORT_S` seconds and at the end. Each report is one Tune result and one
    saved Tune checkpoint (`Reported`), which cost the driver more than a trial of a small array does."""

    def __init__(self, reported: "Reported"):
        self.reported, self.rows, self.curves = reported, [], []
        self.last: float | None = None

    def add(self, rows: list[dict], curves: list[dict]) -> None:
        self.rows.extend(rows)
        self.curves.extend(curves)
        if self.last is None or time.monotonic() - self.last >= REPORT_S:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.reported.report({"payload": payload(self.rows, self.curves), "trials": len(self.rows)}, self.rows)
            self.rows, self.curves = [], []
        self.last = time.monotonic()


def grid_task(config: dict, tasks: list, checkpoint_root: str | None, cpu: float,
              exits_root: str | None = None) -> None:
    """Ray Tune trainable: train one task's units (fused arrays, and bundles of trials one after the
    other), reporting their trials in batches (`Batches`). A retried task skips the trials the driver
    already holds (`Reported`); a worker that dies leaves a record of how under `exits_root`."""
    set_threads(cpu)
    task = tasks[config["bundle"]]
    if isinstance(task, ray.ObjectRef):  # each task its own object: a worker fetches only its own
        task = ray.get(task)
    reported = Reported(sum(len(u.records) for u in task))
    batches = Batches(reported)
    for unit in task:
        todo = [(r, e) for r, e in zip(unit.records, unit.extras) if r.trial_id not in reported]
        if not todo:
            continue
        for rows, curves in run_unit(Unit([r for r, _ in todo], [e for _, e in todo], unit.fused), checkpoint_root,
                                     exits_root):
            batches.add(rows, curves)
    batches.flush()
