"""Grid mode: the missing trials, cut into units (fused arrays and bundles), one unit per Ray Tune trial.

With ``refine:``, refinement rounds (sensitivity.sweep.refine) follow the grid, each run the same way.

A unit whose Ray trial failed for good (its worker died every time Tune retried it: an
out-of-memory kill, a segfault) is run again in a further pass: an array's members alone, and
of a bundle, the trial that was training when the worker died (the first one the driver does
not hold) gets an error row saying so, and the others run again. So every trial of a run ends
with a row, and ``--retry-errors`` runs the one that killed its worker.
"""

from __future__ import annotations

import time

from ray import tune

from sensitivity import outcome
from sensitivity.progress import Progress
from sensitivity.record import TrialRecord
from sensitivity.sweep.bundles import bundle_size, is_short, make_bundles
from sensitivity.sweep.cluster import slots
from sensitivity.sweep.refine import refine_rounds
from sensitivity.sweep.tuner import MAX_FAILURES, Recorder, summarize, tuner_run
from sensitivity.sweep.worker import Unit, grid_task

MAX_PASSES = 8  # passes after failed Ray trials; each one stores a row or splits an array


def plan_units(study, records: list[TrialRecord], extras: list[dict], resources: dict) -> tuple[list[Unit], int]:
    """(units, solo trials per bundle): fused arrays first (under the study's `fuse`), then bundles."""
    from sensitivity.fused.plan import cut

    extra_of = {r.trial_id: e for r, e in zip(records, extras)}
    n = slots(resources)
    arrays, solo = cut(records, study.fuse, n, gpus=resources.get("gpu", 0.0))
    size = bundle_size(study.bundle, solo, n)
    units = [Unit(a, [extra_of[r.trial_id] for r in a], fused=True) for a in arrays]
    units += [Unit(b, [extra_of[r.trial_id] for r in b]) for b in (make_bundles(solo, size) if solo else [])]
    return units, size


def worker_died(message: str) -> str:
    """The error of a trial whose worker died: what Ray said of it, on one line."""
    text = " ".join(str(message).split())
    at = text.find("Worker exit type")  # Ray's own words on how the process ended, when it says
    return (f"WorkerDied: the worker process died while training this trial, each of the {MAX_FAILURES + 1} "
            f"times Ray Tune ran it; Ray: {text[at if at >= 0 else 0:][:500]}")


def after_failures(store, units: list[Unit], failed: list[tuple[int, str]]) -> tuple[list[Unit], list[dict]]:
    """(units to run again, error rows): what the failed Ray trials leave (see the module docstring)."""
    again, rows = [], []
    for index, message in failed:
        unit = units[index]
        left = [(r, e) for r, e in zip(unit.records, unit.extras) if r.trial_id not in store]
        if not left:
            continue
        if unit.fused and len(left) > 1:  # which member killed it is unknown: each alone
            again.extend(Unit([r], [e]) for r, e in left)
            continue
        (culprit, extra), rest = left[0], left[1:]
        rows.append({**outcome.error_row(culprit, worker_died(message), 0.0), **extra})
        if rest:
            again.append(Unit([r for r, _ in rest], [e for _, e in rest]))
    return again, rows


def run_grid(study, store, smoke, resources, ray_storage, stamp, checkpoint_root, max_concurrent, quiet,
             records: list[TrialRecord]):
    start = time.monotonic()
    recorder = Recorder(store, Progress(0, name=study.name, quiet=quiet))
    errors: list[str] = []
    sizes, skipped = [], []

    def run(batch: list[TrialRecord], round_: int) -> None:
        """Run the trials of ``batch`` not in the tables yet; their rows carry ``round``."""
        done = store.done_ids()
        todo = [r for r in batch if r.trial_id not in done]
        skipped.append(len(batch) - len(todo))
        if not todo:
            sizes.append(1)
            return
        units, size = plan_units(study, todo, [{"round": round_}] * len(todo), resources)
        sizes.append(size)
        recorder.progress = Progress(len(todo), name=study.name if not round_ else f"{study.name} round {round_}",
                                     quiet=quiet)
        ckpt = None if all(is_short(r) for r in todo) else checkpoint_root
        recorder.checkpoint_root = ckpt
        recorder.progress.show()
        for attempt in range(MAX_PASSES):
            trainable = tune.with_parameters(grid_task, units=units, checkpoint_root=ckpt, cpu=resources["cpu"])
            name = f"grid-{stamp}" + (f"-round{round_}" if round_ else "") + (f"-pass{attempt}" if attempt else "")
            failed = tuner_run(trainable, resources=resources, storage=ray_storage, name=name, callback=recorder,
                               param_space={"bundle": tune.grid_search(list(range(len(units))))},
                               max_concurrent=max_concurrent)
            units, rows = after_failures(store, units, [(c["bundle"], e) for c, e in failed])
            if rows:
                recorder.record(rows, [])
            if not units:
                break
        else:
            errors.extend(e for _, e in failed)
        recorder.progress.show(final=True)

    run(records, 0)
    configs = list(records)
    if study.refine:
        configs += refine_rounds(study.refine, store, records, run)
    done = store.done_ids()
    missing = sum(r.trial_id not in done for r in configs)
    return summarize(store, len(configs), sum(skipped), recorder, start, max(sizes), errors, missing)
