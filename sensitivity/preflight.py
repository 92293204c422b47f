"""The run plan: what a run will do, computed once, before Ray starts (no ray; torch only to check optimizers).

`sensitivity run` and `sweep.run_study` both take the :class:`RunPlan` of :func:`plan_run`:

0. both tables and their part files are readable parquet (a corrupt one is bad input, named);
1. the smoke guard: a `--smoke` run and a full run never share one table (checked before
   anything is written);
2. migrations of the stored rows (a write: the caller holds the study's lease): rows stored
   under the earlier id rule get their current ids, and rows of the current study spelt another
   way (an alias, a default left out, an int for a float) get the record's canonical identity
   columns, so one trial is one series however the study was written; nothing is rerun;
3. which stored rows are current (``current.json``): the study's trials, a refined grid's
   rounds, and in a refined study any stored α0 point of a current series;
4. what is left to run, and the errored rows that stay: only rows of current trials count (an
   errored row of an earlier version of the study is stale like any other: kept, never counted,
   dropped or rerun, not even by ``--retry-errors``).

A plan with nothing left ends the way a run ends (:func:`finish`): both tables compacted,
``current.json`` and ``study.yaml`` written.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterator

import pandas as pd

from sensitivity.identity import Current, legacy_ids
from sensitivity.record import TrialRecord
from sensitivity.results import STUDY, ResultsStore
from sensitivity.spec import missing_files
from sensitivity.study import Study, StudyError

RECORDS_AT_ONCE = 100_000  # records made at a time to check stored rows' spelling (a slice of a large grid)

__all__ = ["Pending", "RunPlan", "plan_run", "finish", "location", "pending", "refined_trials", "current_rows",
           "missing_data", "check_local_data", "errored_rows", "smoke_guard"]


@dataclass
class Pending:
    """Trials a run would start: `left` of `total` (seeded runs), and errored rows it keeps."""

    total: int
    left: int
    errored: int  # current trials' rows with status error that stay (a run without --retry-errors skips them)


@dataclass
class RunPlan:
    """What a run of `study` on `store` does: `left` of `total` trials to start, `errored` rows that stay."""

    study: Study
    store: ResultsStore
    smoke: bool
    retry_errors: bool
    total: int
    left: int
    errored: int  # current trials' rows with status error that stay (a run without --retry-errors skips them)
    current: Current
    rewritten: int = 0  # stored rows given their canonical spelling or current id
    checked: bool = False  # the local data files and the optimizers' own range checks were checked

    @property
    def location(self) -> str:
        return self.store.location

    @property
    def records(self) -> list[TrialRecord]:
        """The grid's trials (search mode: the space's corners); a run takes them in slices (`Study.trial_slices`)."""
        return self.study.trials(self.smoke)


def location(study: Study, out: str | os.PathLike = "results", storage: str | None = None) -> str:
    """``<storage or out>/<study name>``: where the study's tables live (StudyError for an --out URI)."""
    from sensitivity.lease import study_location

    return study_location(out, storage, study.name)


def smoke_guard(store: ResultsStore, smoke: bool) -> None:
    """StudyError when the location holds rows of the other kind (a --smoke run against a full one)."""
    if not store.count():
        return
    text = store.read_text(STUDY)
    match = re.search(r"smoke: (true|false)", (text or "")[:300])
    if match is None:
        return
    saved = match.group(1) == "true"
    if saved != bool(smoke):
        kind = "a --smoke run" if saved else "a full run"
        raise StudyError(f"out: {store.location} already holds {kind}; use another --out to keep the tables apart")


def errored_rows(store: ResultsStore, current):
    """The stored rows whose status is error (an empty frame or None without a table), of the trials
    in `current` (trial ids: a set, a dict such as `Current.labels`); None: every errored row.

    An errored row of no current trial (an earlier version of the study) is stale: it stays in the
    table, and is neither counted, nor dropped or rerun by --retry-errors."""
    trials = store.columns(["status", "error"])  # (not the whole table: a million-row study's is large)
    if trials is None or "status" not in trials:
        return None
    errors = trials[trials["status"] == "error"]
    if current is not None and len(errors):  # (a pass over the errored rows only, not the study)
        errors = errors[[tid in current for tid in errors["trial_id"]]]
    return errors


def plan_run(study: Study, store: ResultsStore, smoke: bool = False, retry_errors: bool = False, *,
             write: bool = True) -> RunPlan:
    """The plan of a run (module docstring). With `write` (the caller holds the lease) the stored rows
    are migrated first; without, nothing is written and the counts are what a run would start.

    CorruptTableError (bad input) names a table or part file that is not readable parquet, before
    anything is written or trained."""
    store.check()
    smoke_guard(store, smoke)
    rewritten = 0
    # a plain grid's current trials are its own, whatever is stored: their ids, made once, serve the
    # checks below (each a pass over a million trials otherwise)
    grid = not study.search and not study.refine
    current = current_rows(study, store, smoke, rename=write) if grid else None
    ids = current.labels if grid else None
    others = write and not study.search and _others(study, store, smoke, ids)  # rows the study's ids do not name
    if others:
        rewritten += store.rename(legacy_ids(study.spelled_trials(smoke)))
    if not grid:  # (a refined study's current rows come from the stored ones: after the renames)
        current = current_rows(study, store, smoke, rename=write)
    if write:
        rewritten += store.respell(_current_records(study, store, smoke, current))
    todo = pending(study, store, smoke, retry_errors, ids=ids, others=others if write else None,
                   current=current.labels)
    return RunPlan(study, store, smoke, retry_errors, todo.total, todo.left, todo.errored, current, rewritten)


def _others(study: Study, store: ResultsStore, smoke: bool, ids=None) -> bool:
    """Whether some stored rows are not trials of the study's grid (an earlier version's, or stored
    under the earlier id rule): only then are the spelled configs' legacy ids worth computing.
    `ids`: the grid's trial ids when the caller has them (a set or a dict's keys)."""
    if not store.count():
        return False
    ids = ids if ids is not None else {r.trial_id for r in study.iter_trials(smoke)}
    return any(tid not in ids for tid in store.done_ids())


def _current_records(study: Study, store: ResultsStore, smoke: bool, current: Current
                     ) -> Iterator[dict[str, TrialRecord]]:
    """trial_id -> record of each stored current row whose record the plan knows (grid, rounds, points),
    in maps of at most RECORDS_AT_ONCE: a large grid's stored trials are never all held as records."""
    if study.search:
        from sensitivity.sweep.points import current_search_records  # Ray-free

        known = current_search_records(study, store, smoke)
    elif not store.count():  # a fresh study: no stored row to respell (and no 100,000 records made for it)
        return
    elif not study.refine:
        for batch in study.trial_slices(RECORDS_AT_ONCE, smoke):
            yield {r.trial_id: r for r in batch if r.trial_id in current.labels and r.trial_id in store}
        return
    else:
        known = {r.trial_id: r for r in study.iter_trials(smoke) if r.trial_id in current.labels and r.trial_id in store}
        known.update({r.trial_id: r for r in refined_trials(study, store, study.trials(smoke))})
        known.update(_series_rows(study, store, smoke, known))
    yield {tid: r for tid, r in known.items() if tid in current.labels and tid in store}


def finish(plan: RunPlan, *, write_study: bool = True) -> None:
    """End a run with nothing (more) to run as every run ends: the tables compacted, the record of the study written."""
    plan.store.ensure_tables()
    plan.current.write()
    if write_study:
        plan.store.write_text(STUDY, plan.study.to_yaml(plan.smoke))


def pending(study: Study, store: ResultsStore, smoke: bool = False, retry_errors: bool = False, *,
            ids=None, others: bool | None = None, current=None) -> Pending:
    """How many of the study's trials a run would start, given the stored rows.

    `ids`: a plain grid's trial ids, `others`: whether rows not of the grid are stored (`_others`),
    `current`: the ids of the study's current trials (`Current.labels`), when the caller has them
    (`plan_run`); else found here. Only errored rows of current trials count, and only they are
    retried (`errored_rows`).

    Rows are matched as the run matches them: by trial_id (rows stored under the earlier id rule
    count under it too), and in search mode points by configuration, never by entry position.
    In search mode every seed of a point short of its seeds counts (an upper bound: a rerun
    finishes only the missing seeds); zero means zero in both modes. A finished grid with
    ``refine:`` counts the trials of its refinement rounds (:func:`refined_trials`), planned from
    the stored rows exactly as the run plans them.
    """
    from sensitivity.identity import legacy_trial_id

    total = sum(study.counts(smoke))
    errors = _current_errors(study, store, smoke, current, ids)
    retried = errors if retry_errors else set()
    done = store.done_ids() - retried
    errored = 0 if retry_errors else len(errors)
    if not study.search:
        grid = ids if ids is not None else (r.trial_id for r in study.iter_trials(smoke))
        left = sum(tid not in done for tid in grid) if done else total
        if others is None and left:
            others = _others(study, store, smoke, ids)
        if left and others:  # rows stored under the earlier id rule count too
            left = sum(record.trial_id not in done and legacy_trial_id(spelled) not in done
                       for spelled, record in study.spelled_trials(smoke))
        if study.refine and not left:
            grid = study.trials(smoke)
            if all(r.trial_id in done for r in grid):
                rounds = refined_trials(study, store, grid)
                total += len(rounds)
                left = sum(r.trial_id not in done for r in rounds)
            else:
                left = 1  # the run migrates the old ids first, then plans the rounds
        return Pending(total, left, errored)
    from sensitivity.sweep.points import match_points  # Ray-free

    n_points, seeds = study.search_trials(smoke), set(study.seeds(smoke))
    left = 0
    for points in match_points(study, store, smoke, study.search.metric, rename=False):
        complete = sum(seeds <= {seed for seed, (tid, _) in p["done"].items() if tid not in retried}
                       for p in points.values())
        left += max(0, n_points - complete) * len(seeds)
    return Pending(total, left, errored)


def _current_errors(study: Study, store: ResultsStore, smoke: bool, current, ids) -> set[str]:
    """The ids of the stored errored rows of current trials (`errored_rows`). `current` (else `ids`, a
    plain grid's; else found here, only when some row errored): the current trial ids."""
    errors = errored_rows(store, None)
    if errors is None or not len(errors):
        return set()
    if current is None:
        current = ids if ids is not None else current_rows(study, store, smoke, rename=False).labels
    return {tid for tid in errors["trial_id"] if tid in current}


def refined_trials(study: Study, store: ResultsStore, grid: list[TrialRecord]) -> list[TrialRecord]:
    """The refinement rounds' trials as the run plans them from the stored rows: every round whose
    trials are all stored, and the first one that is not (its missing trials are what a run starts)."""
    from sensitivity.sweep.refine import refine_rounds  # Ray-free

    return refine_rounds(study.refine, store, grid, lambda batch, round_: None)


ANY = "*"  # a stored row that names no optimizer


def _series_rows(study: Study, store: ResultsStore, smoke: bool, known) -> dict[str, TrialRecord]:
    """In a refined study, every stored α0 point of a current series on one of the study's seeds.

    Refinement places α0 points from the rows it finds, so after a grid edit (a point added that a
    round had measured, a point removed, a resolution changed) the rounds are planned anew; the
    points measured before still describe the same series and stay current. (A plain grid keeps
    no such points: an α0 removed from it is stale, see README "Which rows count".)

    A stored row is a point of a series when the series' record at the row's α0 has the row's id.
    Only rows not in `known` (the grid's and the rounds' ids, already current) are tried, each
    against the series of its own seed and optimizer: the cost grows with the rows, not with
    trials × stored α0 values.
    """
    from sensitivity.record import optimizer_defaults

    trials = store.trials
    if trials is None or not {"lr", "seed"} <= set(trials) or not len(trials):
        return {}
    rows = trials[~trials["trial_id"].isin(set(known))]
    rows = rows[rows["lr"].notna() & rows["seed"].notna()]
    if rows.empty:
        return {}
    stored = [None if pd.isna(v) else v for v in rows["optimizer"]] if "optimizer" in rows else [None] * len(rows)
    names: dict = {None: ANY}  # a row without the column: any optimizer
    for name in set(stored) - {None}:
        try:
            names[name] = optimizer_defaults(str(name))[0]  # an alias stored by an older version
        except KeyError:
            names[name] = None  # no optimizer of this version: no series of the study
    # (seed, optimizer) -> the α0 values of the rows there
    candidates: dict[tuple, set[float]] = {}
    for seed, name, lr in zip(rows["seed"], stored, rows["lr"]):
        if names.get(name) is not None:
            candidates.setdefault((int(seed), names[name]), set()).add(float(lr))
    ids = set(rows["trial_id"])
    templates: dict[str, TrialRecord] = {}  # one record per series and seed
    for record in study.iter_trials(smoke):
        if (record.seed, record.optimizer) in candidates or (record.seed, ANY) in candidates:
            templates.setdefault(record.replace(lr=0.0).trial_id, record)
    out = {}
    for template in templates.values():
        lrs = candidates.get((template.seed, template.optimizer), set()) | candidates.get((template.seed, ANY), set())
        for lr in lrs:
            record = template.replace(lr=lr)
            if record.trial_id in ids:
                out[record.trial_id] = record
    return out


def current_rows(study: Study, store: ResultsStore, smoke: bool = False, *, rename: bool = True) -> Current:
    """The current study's stored trials (`identity.Current`, written as ``current.json``)."""
    if study.search:
        from sensitivity.sweep.points import current_search_ids  # Ray-free

        return Current(store, study.name, current_search_ids(study, store, smoke, rename=rename))
    labels = {r.trial_id: r.display for r in study.iter_trials(smoke)}
    if study.refine:  # the rounds' α0 points belong to the study as much as the grid's
        records = study.trials(smoke)
        labels.update({r.trial_id: r.display for r in refined_trials(study, store, records)})
        labels.update({tid: r.display for tid, r in _series_rows(study, store, smoke, labels).items()})
    return Current(store, study.name, labels)


def missing_data(study: Study, smoke: bool = False) -> list[str]:
    """One line per dataset whose files are not under its data root, as this machine sees it.

    Nothing for --smoke (synthetic stand-ins), for datasets without files, or with ``download: true``.
    """
    if smoke:
        return []
    seen, out = set(), []
    for record in study.point_records(smoke):  # search mode: each entry's corners
        key = (record.dataset, record.data_dir, record.download)
        if key in seen:
            continue
        seen.add(key)
        message = missing_files(record.config())
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
