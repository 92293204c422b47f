"""run_study: the driver of one run, grid or Optuna search, into the study's tables."""

from __future__ import annotations

import os
import sys
import time

import ray

from sensitivity.lease import Lease, results_root, study_location  # noqa: F401 (results_root: importable here)
from sensitivity.preflight import RunPlan, check_local_data, current_rows, errored_rows, finish, plan_run
from sensitivity.results import CURVES, STUDY, TRIALS, ResultsStore, join
from sensitivity.study import Study, StudyError
from sensitivity.sweep.cluster import cluster_totals, connect, launchable, trial_resources
from sensitivity.sweep.grid import run_grid
from sensitivity.sweep.search import run_search
from sensitivity.sweep.tuner import Summary, remove_dir


def check_devices(study: Study, plan: RunPlan) -> None:
    """StudyError (bad input) when a trial names a CUDA device and no node of the cluster has a GPU.

    Checked before the trial resources (`cluster.trial_resources`), so that the one line names
    task.device, and resources.gpu beside it when the study also asks each trial for a GPU.
    """
    named = sorted({r.device for r in study.point_records(plan.smoke) if r.device.startswith("cuda")})
    if not named:
        return
    _, gpus, _, _ = cluster_totals()
    if gpus > 0 or launchable().get("GPU", 0.0) > 0:
        return
    field = "task.device"
    for i, entry in enumerate(study.entries):
        if "device" in entry.task and str(entry.task["device"]).startswith("cuda"):
            field = f"optimizers[{i}].task.device"
            break
    gpu = study.resources.gpu if not plan.smoke else 0  # (--smoke drops the GPU request on a cluster without one)
    if gpu > 0:
        raise StudyError(f"{field}: {named[0]} and resources.gpu: {gpu:g} ask for a GPU but no node of the Ray "
                         f"cluster has one; use device: auto (cuda where the worker has one) or cpu with "
                         f"resources.gpu: 0, or pass --address of a cluster with GPU workers")
    raise StudyError(f"{field}: {named[0]} requested but no node of the Ray cluster has a GPU; use device: auto "
                     f"(cuda where the worker has one) or cpu, or pass --address of a cluster with GPU workers")


def _nothing_left(plan: RunPlan) -> Summary:
    finish(plan)
    location = plan.location
    return Summary(location=location, trials_path=join(location, TRIALS), curves_path=join(location, CURVES),
                   total=plan.total, skipped=plan.total, stale=plan.current.stale())


def run_study(study: Study, out: str | os.PathLike = "results", address: str | None = None,
              storage: str | None = None, smoke: bool = False, max_concurrent: int | None = None,
              quiet: bool = False, retry_errors: bool = False, *, plan: RunPlan | None = None,
              lease: Lease | None = None, checks=None) -> Summary:
    """Run the study's missing trials; tables go to ``<storage or out>/<study.name>/``.

    Holds the location's lease while it runs (`sensitivity.lease`): `lease`, when the caller took
    it, else one taken here. `plan` is the run's plan (`preflight.plan_run`), when the caller made
    it under that lease; else it is made here. `checks` (a `startup.Background`): the optimizers' own
    range checks, which the caller runs in the background while Ray starts here. Raises StudyError for bad input (no GPU for a GPU
    study, results of another kind in the directory, a lease held by another run),
    ResultsWriteError when the location cannot be written; returns a Summary whose `missing`
    counts trials that did not finish.
    """
    location = study_location(out, storage, study.name) if plan is None else plan.location
    own_lease = lease is None
    if own_lease:
        lease = Lease(location).acquire()  # before anything runs: a second run on this location stops here
        if lease.note:
            print(lease.note, file=sys.stderr)
    started = False
    store = None
    try:
        if plan is None:
            store = ResultsStore(location)
            store.guard = lease.check
            plan = plan_run(study, store, smoke, retry_errors)
        store = plan.store
        if not plan.left:  # nothing to run: Ray stays down
            return _nothing_left(plan)
        if not plan.checked:  # (the CLI checks these before it hands its plan over)
            check_local_data(study, smoke, address)  # a local run: this machine's files are the workers'
            study.check_optimizers(smoke)  # the optimizers' own range checks (torch), before Ray starts
        # only the current trials' errored rows run again: a stale one (an earlier version of the
        # study) stays in the table like any other stale row
        errors = errored_rows(store, plan.current.labels) if retry_errors else None
        if errors is not None and len(errors):
            store.drop(errors["trial_id"])
        started = connect(address)
        if checks is not None:
            checks.result()  # bad input (StudyError) stops the run here, before any trial; Ray stops below
        check_devices(study, plan)  # first: a trial pinned to cuda is named, whatever resources.gpu asks
        resources = trial_resources(study, smoke, quiet)
        store.write_text(STUDY, study.to_yaml(smoke))
        current = plan.current
        current.write()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        ray_storage = join(location, "ray")
        # long trials checkpoint each epoch next to the tables (local/NFS), or mirrored to the URI
        checkpoint_root = join(location, "checkpoints")
        if study.search:
            summary = run_search(study, store, smoke, resources, ray_storage, stamp, checkpoint_root,
                                 max_concurrent, quiet, current=current)
        else:
            summary = run_grid(study, store, smoke, resources, ray_storage, stamp, checkpoint_root,
                               max_concurrent, quiet, plan=plan)
        if study.search or study.refine:
            current = current_rows(study, store, smoke)  # what this run added, matched like the rest
            current.write()
        summary.stale = current.stale()
        store.compact()  # the run's parts become trials.parquet and curves.parquet
        if not summary.missing:
            remove_dir(ray_storage)  # Tune's own state is only needed to debug a failed run
        return summary
    except BaseException:
        _compact_quietly(store, lease)  # what finished stays readable as the two plain tables
        raise
    finally:
        if checks is not None:
            checks.thread.join()  # (an interrupted run: the checks' thread ends before the lease goes)
        if started:
            ray.shutdown()
        if own_lease:
            lease.release()


def _compact_quietly(store: ResultsStore | None, lease: Lease) -> None:
    """Compact after a failure, best effort: the parts alone already hold every finished trial."""
    if store is None or lease.lost or not store.has_tables:  # (nothing stored: nothing to fold, nothing written)
        return
    try:
        store.compact()
    except Exception:
        pass
