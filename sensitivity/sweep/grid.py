"""Grid mode: the missing trials, cut into units (fused arrays and bundles of solo trials), packed into tasks.

One task is one Ray Tune trial. Short units are packed several to a task (`pack`), since each
Tune trial and each report costs the driver more than a short array's training; a task reports
its trials in batches (`worker.Batches`). A grid larger than SLICE trials runs one slice after the
other (a Tune run each), its records made from the study's points slice by slice, so that the
driver never holds every trial of a million-trial study. With ``refine:``, refinement rounds
(sensitivity.sweep.refine) follow the grid, each run the same way.

A task whose Ray trial failed for good (its worker died every time Tune retried it: an
out-of-memory kill, a segfault) runs again finer in a further pass (`after_failures`), down to
single trials; a single trial whose worker died every time gets an error row saying so, and with
what signal or exit code where the worker's watcher recorded it (`exits`). So every
trial of a run ends with a row, and ``--retry-errors`` runs the one that killed its worker.
"""

from __future__ import annotations

import time

import ray
from ray import tune

from sensitivity import outcome
from sensitivity.progress import Progress
from sensitivity.record import TrialRecord
from sensitivity.results import join
from sensitivity.sweep.bundles import BUNDLES_PER_SLOT, bundle_size, is_short, make_bundles
from sensitivity.sweep.cluster import slots
from sensitivity.sweep.refine import refine_rounds
from sensitivity.sweep.exits import read_exit
from sensitivity.sweep.tuner import MAX_FAILURES, Recorder, remove_dir, summarize, tuner_run
from sensitivity.sweep.worker import Unit, grid_task

MAX_PASSES = 8  # passes after failed Ray trials; each one stores a row or splits an array
# trials planned, cut and submitted at a time: the driver's memory is bounded by a slice, not the study
SLICE = 100_000


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


def pack(units: list[Unit], resources: dict) -> list[list[Unit]]:
    """Tasks, one Ray Tune trial each: short units packed into about BUNDLES_PER_SLOT tasks per slot
    (each Tune trial costs the driver more than a short array does), long ones a task each."""
    short = [u for u in units if all(is_short(r) for r in u.records)]
    tasks = [[u] for u in units if not all(is_short(r) for r in u.records)]
    if short:
        n = max(1, min(len(short), BUNDLES_PER_SLOT * slots(resources)))
        tasks += [short[k::n] for k in range(n)]  # interleaved: cheap and costly units mix
    return tasks


def worker_died(message: str, ending: dict | None = None) -> str:
    """The error of a trial whose worker died, on one line: with what it ended (its watcher's record,
    `exits.read_exit`, or why that is unknown), then what Ray said of it."""
    text = " ".join(str(message).split())
    at = text.find("Worker exit type")  # Ray's own words: a closed connection, never the signal or code
    if ending and ending.get("ending"):
        how = f"it ended with {ending['ending']} (pid {ending.get('pid')} on {ending.get('host')})"
    elif ending:
        how = f"how it ended is unknown: {ending.get('unknown')}"
    else:
        how = ("how it ended is unknown: no watcher recorded it (the node was lost, or no watcher "
               "could start there)")
    return (f"WorkerDied: the worker process died while training this trial, each of the {MAX_FAILURES + 1} "
            f"times Ray Tune ran it; {how}; Ray: {text[at if at >= 0 else 0:][:500]}")


def after_failures(store, tasks: list[list[Unit]], failed: list[tuple[int, str]], exits_root: str | None = None
                   ) -> tuple[list[list[Unit]], list[dict]]:
    """(tasks to run again, error rows): what the Ray trials that failed for good leave.

    Each failed task runs again finer, so the trial that kills its worker is found: a task of
    several units as one task per unit, a unit of several trials (an array, a bundle) as one task
    per trial alone; a trial alone whose worker died every time gets an error row, which says how
    the process ended when its watcher recorded it under `exits_root`.
    """
    again, rows = [], []
    for index, message in failed:
        units = []  # the task's units, with only the trials the driver does not hold
        for unit in tasks[index]:
            left = [(r, e) for r, e in zip(unit.records, unit.extras) if r.trial_id not in store]
            if left:
                units.append(Unit([r for r, _ in left], [e for _, e in left], unit.fused and len(left) > 1))
        if len(units) > 1:
            again.extend([unit] for unit in units)
        elif units and len(units[0].records) > 1:
            again.extend([Unit([r], [e])] for r, e in zip(units[0].records, units[0].extras))
        elif units:
            (culprit,), (extra,) = units[0].records, units[0].extras
            ending = read_exit(exits_root, culprit.trial_id) if exits_root else None
            rows.append({**outcome.error_row(culprit, worker_died(message, ending), 0.0), **extra})
    return again, rows


def run_grid(study, store, smoke, resources, ray_storage, stamp, checkpoint_root, max_concurrent, quiet, plan):
    """Run the plan's missing grid trials, then its refinement rounds; the grid goes SLICE trials at a time."""
    start = time.monotonic()
    recorder = Recorder(store, Progress(0, name=study.name, quiet=quiet))
    exits_root = join(ray_storage, "exits")  # the watchers' records of dead workers (each pass's own)
    errors: list[str] = []
    sizes, skipped, missing = [], [], []

    def run_slices(slices, total: int, round_: int) -> None:
        """Run the trials of each slice not in the tables yet, one Tune run a slice; their rows carry ``round``."""
        recorder.progress = Progress(total, name=study.name if not round_ else f"{study.name} round {round_}",
                                     quiet=quiet)
        recorder.progress.show()
        for k, batch in enumerate(slices):
            todo = [r for r in batch if r.trial_id not in store]
            skipped.append(len(batch) - len(todo))
            if todo:
                name = f"grid-{stamp}" + (f"-round{round_}" if round_ else "") + (f"-slice{k}" if k else "")
                run_tasks(todo, round_, name)
                missing.append(sum(r.trial_id not in store for r in todo))  # (the slice in hand: no second pass)
            else:
                sizes.append(1)
        recorder.progress.show(final=True)

    def run_tasks(todo: list[TrialRecord], round_: int, name: str) -> None:
        units, size = plan_units(study, todo, [{"round": round_}] * len(todo), resources)
        tasks = pack(units, resources)
        del units
        sizes.append(size)
        ckpt = None if all(is_short(r) for r in todo) else checkpoint_root
        recorder.checkpoint_root = ckpt
        for attempt in range(MAX_PASSES):
            remove_dir(exits_root)  # a record left by an earlier pass is not this pass's death
            refs = [ray.put(task) for task in tasks]
            trainable = tune.with_parameters(grid_task, tasks=refs, checkpoint_root=ckpt, cpu=resources["cpu"],
                                             exits_root=exits_root)
            failed = tuner_run(trainable, resources=resources, storage=ray_storage,
                               name=name + (f"-pass{attempt}" if attempt else ""), callback=recorder,
                               param_space={"bundle": tune.grid_search(list(range(len(tasks))))},
                               max_concurrent=max_concurrent)
            tasks, rows = after_failures(store, tasks, [(c["bundle"], e) for c, e in failed], exits_root)
            if rows:
                recorder.record(rows, [])
            if not tasks:
                break
        else:
            errors.extend(e for _, e in failed)

    def run_round(batch: list[TrialRecord], round_: int) -> None:
        run_slices([batch], sum(r.trial_id not in store for r in batch), round_)

    # a refined study's grid may be done already (plan.left counts its rounds then): count it afresh
    left = plan.left if not study.refine else sum(r.trial_id not in store for r in study.iter_trials(smoke))
    run_slices(study.trial_slices(SLICE, smoke), left, 0)
    rounds = refine_rounds(study.refine, store, study.trials(smoke), run_round) if study.refine else []
    total = sum(study.counts(smoke)) + len(rounds)
    return summarize(store, total, sum(skipped), recorder, start, max(sizes), errors, sum(missing))
