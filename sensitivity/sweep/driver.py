"""run_study: the driver of one run, grid or Optuna search, into the study's tables."""

from __future__ import annotations

import os
import re
import sys
import time

import ray

from sensitivity.lease import Lease, results_root, study_location  # noqa: F401 (results_root: importable here)
from sensitivity.preflight import check_local_data, current_rows as _current, pending
from sensitivity.results import CURVES, STUDY, TRIALS, ResultsStore, join
from sensitivity.study import Study, StudyError
from sensitivity.sweep.cluster import connect, trial_resources
from sensitivity.sweep.grid import run_grid
from sensitivity.sweep.search import run_search
from sensitivity.sweep.tuner import Summary, remove_dir


def _smoke_mismatch(store: ResultsStore, smoke: bool) -> None:
    """Refuse to mix --smoke trials and real ones in one table."""
    path = store.path.rstrip("/") + "/" + STUDY
    try:
        if store.fs.get_file_info(path).type.name != "File":
            return
        with store.fs.open_input_stream(path) as handle:
            head = handle.read(200).decode(errors="replace")
    except OSError:
        return
    match = re.search(r"smoke: (true|false)", head)
    if match is None or store.trials is None or not len(store.trials):
        return
    saved = match.group(1) == "true"
    if saved != bool(smoke):
        kind = "a --smoke run" if saved else "a full run"
        raise StudyError(f"out: {store.location} already holds {kind}; use another --out to keep the tables apart")


def run_study(study: Study, out: str | os.PathLike = "results", address: str | None = None,
              storage: str | None = None, smoke: bool = False, max_concurrent: int | None = None,
              quiet: bool = False, retry_errors: bool = False) -> Summary:
    """Run the study's missing trials; tables go to ``<storage or out>/<study.name>/``.

    Holds the location's lease while it runs (`sensitivity.lease`). Raises StudyError for bad
    input (no GPU for a GPU study, results of another kind in the directory, a lease held by
    another run), ResultsWriteError when the location cannot be written; returns a Summary
    whose `missing` counts trials that did not finish.
    """
    location = study_location(out, storage, study.name)
    lease = Lease(location).acquire()  # before anything runs: a second run on this location stops here
    if lease.note:
        print(lease.note, file=sys.stderr)
    started = False
    store = None
    try:
        store = ResultsStore(location)
        store.guard = lease.check
        _smoke_mismatch(store, smoke)
        current = _current(study, store, smoke)
        todo = pending(study, store, smoke, retry_errors)
        if not todo.left:  # nothing to run: Ray stays down
            current.write()
            return Summary(location=location, trials_path=join(location, TRIALS), curves_path=join(location, CURVES),
                           total=todo.total, skipped=todo.total, stale=current.stale())
        check_local_data(study, smoke, address)  # a local run: this machine's files are the workers'
        study.check_optimizers(smoke)  # the optimizers' own range checks (torch), before Ray starts
        if retry_errors and store.trials is not None and "status" in store.trials:
            store.drop(store.trials.loc[store.trials["status"] == "error", "trial_id"])
        started = connect(address)
        resources = trial_resources(study, smoke, quiet)
        store.write_text(STUDY, study.to_yaml(smoke))
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
                                max_concurrent, quiet)
        if study.search or study.refine:
            current = _current(study, store, smoke)  # what this run added, matched like the rest
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
        if started:
            ray.shutdown()
        lease.release()


def _compact_quietly(store: ResultsStore | None, lease: Lease) -> None:
    """Compact after a failure, best effort: the parts alone already hold every finished trial."""
    if store is None or lease.lost:
        return
    try:
        store.compact()
    except Exception:
        pass
