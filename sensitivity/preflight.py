"""What a run will do, known before Ray starts (no torch, no ray): trials left, earlier errors, data files.

`sensitivity run` asks this first, so a run with nothing left returns in seconds, and missing
dataset files stop it before Ray starts; `sensitivity validate` warns about the same files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sensitivity.results import ResultsStore, trial_id
from sensitivity.spec import missing_files
from sensitivity.study import Study, StudyError

__all__ = ["Pending", "location", "pending", "refined_trials", "current_rows", "missing_data", "check_local_data",
           "errored_rows"]


@dataclass
class Pending:
    """Trials a run would start: `left` of `total` (seeded runs), and errored rows it keeps."""

    total: int
    left: int
    errored: int  # rows with status error that stay (a run without --retry-errors skips them)


def location(study: Study, out: str | os.PathLike = "results", storage: str | None = None) -> str:
    """``<storage or out>/<study name>``: where the study's tables live (StudyError for an --out URI)."""
    from sensitivity.lease import study_location

    return study_location(out, storage, study.name)


def errored_rows(store: ResultsStore):
    """The stored rows whose status is error (an empty frame or None without a table)."""
    trials = store.trials
    if trials is None or "status" not in trials:
        return None
    return trials[trials["status"] == "error"]


def pending(study: Study, store: ResultsStore, smoke: bool = False, retry_errors: bool = False) -> Pending:
    """How many of the study's trials a run would start, given the stored rows; writes nothing.

    Rows are matched as the run matches them: by trial_id (rows stored under the earlier id rule
    count under it too), and in search mode points by configuration, never by entry position.
    In search mode every seed of a point short of its seeds counts (an upper bound: a rerun
    finishes only the missing seeds); zero means zero in both modes.  A finished grid with
    ``refine:`` counts the trials of its refinement rounds (:func:`refined_trials`), planned from
    the stored rows exactly as the run plans them (rows stored under the earlier id rule are
    migrated by the run first: such a grid counts as having rounds left).
    """
    from sensitivity.identity import legacy_trial_id

    total = sum(study.counts(smoke))
    errors = errored_rows(store)
    n_errors = 0 if errors is None else len(errors)
    retried = set(errors["trial_id"]) if retry_errors and n_errors else set()
    done = store.done_ids() - retried
    if not study.search:
        grid = study.trials(smoke)
        left = sum(trial_id(c) not in done and legacy_trial_id(c) not in done for c in grid)
        if study.refine and not left:
            if all(trial_id(c) in done for c in grid):
                rounds = refined_trials(study, store, grid)
                total += len(rounds)
                left = sum(trial_id(c) not in done for c in rounds)
            else:
                left = 1  # the run migrates the old ids first, then plans the rounds
        return Pending(total, left, 0 if retry_errors else n_errors)
    from sensitivity.sweep.points import match_points  # Ray-free

    n_points, seeds = study.search_trials(smoke), set(study.seeds(smoke))
    left = 0
    for points in match_points(study, store, smoke, study.search.metric, rename=False):
        complete = sum(seeds <= {seed for seed, (tid, _) in p["done"].items() if tid not in retried}
                       for p in points.values())
        left += max(0, n_points - complete) * len(seeds)
    return Pending(total, left, 0 if retry_errors else n_errors)


def refined_trials(study: Study, store: ResultsStore, grid: list[dict]) -> list[dict]:
    """The refinement rounds' trials as the run plans them from the stored rows: every round whose
    trials are all stored, and the first one that is not (its missing trials are what a run starts)."""
    from sensitivity.sweep.refine import refine_rounds  # Ray-free

    return refine_rounds(study.refine, store, grid, lambda batch, round_: None)


def current_rows(study: Study, store: ResultsStore, smoke: bool = False):
    """The current study's stored trials (`identity.Current`, written as ``current.json``); rows
    stored under the old id rule get their current ids first (a write: hold the lease)."""
    from sensitivity.identity import Current, legacy_ids

    if study.search:
        from sensitivity.sweep.points import current_search_ids  # Ray-free

        return Current(store, study.name, current_search_ids(study, store, smoke))
    configs = study.trials(smoke)
    store.rename(legacy_ids(configs))
    if study.refine:  # the rounds' α0 points belong to the study as much as the grid's
        configs = configs + refined_trials(study, store, configs)
    return Current(store, study.name, {trial_id(c): c["label"] for c in configs})


def missing_data(study: Study, smoke: bool = False) -> list[str]:
    """One line per dataset whose files are not under its data root, as this machine sees it.

    Nothing for --smoke (synthetic stand-ins), for datasets without files, or with ``download: true``.
    """
    if smoke:
        return []
    seen, out = set(), []
    for config in study.trials(smoke):  # search mode: the configs of each entry's corners
        key = (config.get("dataset"), config.get("data_dir"), bool(config.get("download")))
        if key in seen:
            continue
        seen.add(key)
        message = missing_files(config)
        if message:
            out.append(message)
    return out


def check_local_data(study: Study, smoke: bool, address: str | None) -> None:
    """StudyError naming missing dataset files, for a local run (no --address, no RAY_ADDRESS).

    A cluster's workers may hold files this machine lacks: there, nothing is checked.
    """
    if address or os.environ.get("RAY_ADDRESS"):
        return
    missing = missing_data(study, smoke)
    if missing:
        raise StudyError("; ".join(missing))
