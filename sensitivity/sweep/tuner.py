"""One Ray Tune run and what the driver keeps of it: the recorder callback and the summary."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from ray import tune

from sensitivity.progress import Progress
from sensitivity.results import CURVES, TRIALS, ResultsStore, join, resolve

MAX_FAILURES = 3  # a lost worker's Ray task is retried this often
REUSE_ACTORS = True  # a finished Ray trial's process (torch imported, data cached) runs the next one
KEPT_CHECKPOINTS = 32  # a task's small checkpoints Tune keeps (see tuner_run)


@dataclass
class Summary:
    """What a run did; `missing` > 0 means some trials did not finish (rerun to resume)."""

    location: str
    trials_path: str
    curves_path: str
    total: int
    skipped: int
    ran: int = 0
    diverged: int = 0
    errored: int = 0
    missing: int = 0
    elapsed_s: float = 0.0
    bundle: int = 1  # solo trials per Ray trial
    fused: int = 0  # trials that ran as members of fused arrays
    arrays: int = 0  # those arrays
    errors: list[str] = field(default_factory=list)  # Ray trials that failed for good
    failures: list[tuple[str, int, str]] = field(default_factory=list)  # (error, count, a trial_id), most first
    mirror_failures: int = 0  # checkpoint uploads that failed (the trials went on)
    mirror_error: str | None = None  # the first of them
    stale: int = 0  # rows of an earlier version of the study, kept in the table but not counted


class Recorder(tune.Callback):
    """Append every reported trial to the tables (this process is their only writer).

    It keeps counts, not rows, so its memory stays flat however long the study; and it takes each
    result's payload out of the result before Tune keeps it as the trial's last result, which Tune
    writes into its experiment state again and again. A write that fails (a full or read-only
    destination, a lease taken over) is kept in `failure`: `tuner_run` then stops the whole run
    and raises it; earlier flushes stay.
    """

    def __init__(self, store: ResultsStore, progress: Progress, checkpoint_root: str | None = None):
        self.store, self.progress = store, progress
        self.checkpoint_root = checkpoint_root  # where the trials' checkpoint files are (removed once recorded)
        self.ran = self.diverged = self.errored = self.fused = 0
        self.array_ids: set[str] = set()
        self.errors: dict[str, list] = {}  # message -> [count, a trial_id]
        self.mirror_failures, self.mirror_error = 0, None
        self.current = None  # an identity.Current that learns the rows as they arrive (Optuna search)
        self.failure: BaseException | None = None

    def __getstate__(self):
        # Tune pickles its callbacks for Tuner.restore, which this module never uses (resume
        # works from the tables); the live tables and the terminal stay out of that file.
        return {"store": None, "progress": None, "checkpoint_root": None, "ran": 0, "diverged": 0, "errored": 0,
                "fused": 0, "array_ids": set(), "errors": {}, "current": None, "mirror_failures": 0,
                "mirror_error": None, "failure": None}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        payload = result.pop("payload", None)  # Tune allows callbacks to change the result in place
        if not payload or self.failure is not None:
            return
        data = json.loads(payload)
        if data.get("mirror"):
            self.mirror_failures += data["mirror"]["failures"]
            self.mirror_error = self.mirror_error or data["mirror"]["error"]
        self.record(data["rows"], data["curves"])

    def record(self, rows: list[dict], curves: list[dict]) -> None:
        """Store rows (and their curves) that are new; count them; remove the checkpoints of finished trials."""
        new = [r for r in rows if r["trial_id"] not in self.store]
        try:
            fresh = self.store.append(rows, curves)
        except Exception as exc:  # raised by tuner_run once Tune has stopped
            self.failure = exc
            return
        if not fresh:
            return
        for row in new:
            status = row.get("status")
            self.ran += 1
            self.diverged += status == "diverged"
            self.errored += status == "error"
            if row.get("array_id"):
                self.fused += 1
                self.array_ids.add(row["array_id"])
        count_errors(self.errors, new)
        self.progress.add(new)
        if self.current is not None:
            self.current.add(new)
        if self.checkpoint_root:  # an errored trial keeps its checkpoint: --retry-errors resumes from it
            for row in new:
                if row.get("status") != "error":
                    remove_checkpoint(self.checkpoint_root, row["trial_id"])


def remove_checkpoint(root: str, tid: str) -> None:
    """A finished trial's checkpoint file (and the folder of the layout before one file per trial)."""
    fs, path = resolve(join(root, f"{tid}.pt"))
    try:
        if fs.get_file_info(path).type.name == "File":
            fs.delete_file(path)
    except OSError:
        pass
    remove_dir(join(root, tid))


class _StopOnFailure(tune.Stopper):
    """Stops every Ray trial once the recorder could not write (nothing more could be kept)."""

    def __init__(self, recorder: Recorder):
        self.recorder = recorder

    def __call__(self, trial_id, result) -> bool:
        return self.recorder.failure is not None

    def stop_all(self) -> bool:
        return self.recorder.failure is not None


def remove_dir(location: str) -> None:
    fs, path = resolve(location)
    try:
        if fs.get_file_info(path).type.name == "Directory":
            fs.delete_dir(path)
    except OSError:
        pass


def tuner_run(trainable, *, resources: dict, storage: str, name: str, callback: Recorder,
               param_space: dict | None = None, search_alg=None, num_samples: int = 1,
               max_concurrent: int | None = None) -> list[tuple[dict, str]]:
    """Fit one Tuner; return (config, error) of each Ray trial that failed for good."""
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=param_space or {},
        tune_config=tune.TuneConfig(search_alg=search_alg, num_samples=num_samples,
                                    max_concurrent_trials=max_concurrent, reuse_actors=REUSE_ACTORS),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, verbose=0, callbacks=[callback], stop=_StopOnFailure(callback),
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
            # a task's checkpoint is the list of its trials the driver holds: only the last counts; but
            # Tune writes its whole experiment state again every `num_to_keep` checkpoints of a trial
            # (at 1: once per report)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=KEPT_CHECKPOINTS),
        ),
    )
    grid = tuner.fit()
    if callback.failure is not None:
        raise callback.failure
    failed = []
    for result in grid:
        if result.error is not None:
            failed.append((dict(result.config or {}), " ".join(str(result.error).split())[:2000]))
    return failed


def summarize(store: ResultsStore, total: int, skipped: int, recorder: Recorder, start: float,
              bundle: int, errors: list[str], missing: int) -> Summary:
    return Summary(location=store.location, trials_path=join(store.location, TRIALS),
                   curves_path=join(store.location, CURVES),
                   total=total, skipped=skipped, ran=recorder.ran, diverged=recorder.diverged,
                   errored=recorder.errored, missing=missing, elapsed_s=time.monotonic() - start, bundle=bundle,
                   errors=errors, failures=ranked(recorder.errors), fused=recorder.fused, arrays=len(recorder.array_ids),
                   mirror_failures=recorder.mirror_failures, mirror_error=recorder.mirror_error)


def count_errors(found: dict[str, list], rows: list[dict]) -> None:
    """Add the errored rows to `found`: message -> [count, one trial_id]."""
    for row in rows:
        if row.get("status") == "error":
            message = " ".join(str(row.get("error") or "no message").split())
            found.setdefault(message, [0, row.get("trial_id")])[0] += 1


def ranked(found: dict[str, list]) -> list[tuple[str, int, str]]:
    return sorted(((m, n, tid) for m, (n, tid) in found.items()), key=lambda f: -f[1])


def failures(rows: list[dict]) -> list[tuple[str, int, str]]:
    """Each distinct error message of errored rows, with its count and one trial_id, most frequent first."""
    found: dict[str, list] = {}
    count_errors(found, rows)
    return ranked(found)
