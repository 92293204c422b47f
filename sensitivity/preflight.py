"""What a run will do, known before Ray starts (no torch, no ray): trials left, earlier errors, data files.

`sensitivity run` asks this first, so a run with nothing left returns in seconds, and missing
dataset files stop it before Ray starts; `sensitivity validate` warns about the same files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sensitivity.results import ResultsStore, join, trial_id
from sensitivity.spec import missing_files
from sensitivity.study import Study, StudyError

__all__ = ["Pending", "location", "pending", "missing_data", "check_local_data", "errored_rows"]


@dataclass
class Pending:
    """Trials a run would start: `left` of `total` (seeded runs), and errored rows it keeps."""

    total: int
    left: int
    errored: int  # rows with status error that stay (a run without --retry-errors skips them)


def location(study: Study, out: str | os.PathLike = "results", storage: str | None = None) -> str:
    """``<storage or out>/<study name>``: where the study's tables live (out made absolute)."""
    root = storage if storage else os.path.abspath(os.path.expanduser(os.fspath(out)))
    return join(root, study.name)


def errored_rows(store: ResultsStore):
    """The stored rows whose status is error (an empty frame or None without a table)."""
    trials = store.trials
    if trials is None or "status" not in trials:
        return None
    return trials[trials["status"] == "error"]


def pending(study: Study, store: ResultsStore, smoke: bool = False, retry_errors: bool = False) -> Pending:
    """How many of the study's trials a run would start, given the stored rows.

    In search mode, every seed of a point short of its seeds counts (an upper bound: a rerun
    finishes only the missing seeds); zero means zero in both modes.
    """
    total = sum(study.counts(smoke))
    errors = errored_rows(store)
    n_errors = 0 if errors is None else len(errors)
    retried = set(errors["trial_id"]) if retry_errors and n_errors else set()
    done = store.done_ids() - retried
    if not study.search:
        left = sum(trial_id(c) not in done for c in study.trials(smoke))
        return Pending(total, left, 0 if retry_errors else n_errors)
    # a search is done when every entry has its points complete on every seed
    trials = store.trials
    n_points, n_seeds = study.search_trials(smoke), len(study.seeds(smoke))
    left = 0
    for index in range(len(study.entries)):
        complete = 0
        if trials is not None and "search_entry" in trials and "search_point" in trials:
            mine = trials[(trials["search_entry"] == index) & ~trials["trial_id"].isin(retried)]
            complete = int((mine.groupby("search_point").size() >= n_seeds).sum())
        left += max(0, n_points - complete) * n_seeds
    return Pending(total, left, 0 if retry_errors else n_errors)


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
