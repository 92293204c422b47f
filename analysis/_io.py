"""Read a study's parquet tables (parts of a running sweep included) and add the display columns.

The parquet schema (README.md, "The results tables") is the whole contract: nothing here imports
``sensitivity``. Which columns are hyperparameters, and the series they make, is ``analysis.columns``.
"""
from __future__ import annotations

import json
import re
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .columns import STATUSES, prepare
from .location import Location, ResultsError

__all__ = ["ResultsError", "StaleRowsWarning", "load", "prepare", "STATUSES",
           "TRIAL_COLUMNS", "CURVE_COLUMNS"]

# What analysis reads; the contract has more, which are kept but not required.
TRIAL_COLUMNS = (
    "trial_id", "optimizer", "lr", "beta", "decay", "seed", "status",
    "min_train_loss", "min_test_loss", "best_test_acc", "final_test_acc",
)
# Outcomes an errored worker does not write: a table whose trials all lacked one gets it as missing values.
READ_OUTCOMES = ("min_train_loss", "min_test_loss", "best_test_acc", "final_test_acc")
CURVE_COLUMNS = ("trial_id", "epoch", "step", "train_loss", "test_loss", "train_acc", "test_acc", "lr")


class StaleRowsWarning(UserWarning):
    """`load` left out rows of an earlier version of the study."""


PART = re.compile(r"^(\d{8,})-([0-9a-z]+)\.(trials|curves)\.parquet$")
THROUGH_KEY = b"sensitivity.through"  # a compacted table's last part; older parts are leftovers
READ_ATTEMPTS = 5


READERS = 16  # parts read at once from an object store (one request each)


def _read(loc: Location, name: str) -> tuple[pd.DataFrame, int] | None:
    """(frame, last part it holds) of one file; None when it vanished (a compaction deleted it)."""
    # One read of the bytes: a running sweep replaces files by rename, and pyarrow may
    # open a path more than once, which could mix two versions of it.
    data = loc.read_bytes(name)
    if data is None:
        return None
    try:
        table = pq.read_table(pa.BufferReader(data))
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ResultsError(f"cannot read {loc.show(name)}: {reason}") from None
    through = int((table.schema.metadata or {}).get(THROUGH_KEY, b"-1"))
    return table.replace_schema_metadata(None).to_pandas(), through


def _read_all(loc: Location, names: list[str]) -> list[tuple[pd.DataFrame, int] | None]:
    if loc.uri and len(names) > 1:  # an object store answers each request in tens of ms: many at once
        with ThreadPoolExecutor(min(READERS, len(names))) as pool:
            return list(pool.map(lambda name: _read(loc, name), names))
    return [_read(loc, name) for name in names]


def _through_now(loc: Location, name: str) -> int:
    try:
        with loc.fs.open_input_file(loc.file(name)) as handle:
            return int((pq.read_metadata(handle).metadata or {}).get(THROUGH_KEY, b"-1"))
    except (FileNotFoundError, OSError):
        return -1


def _sources(loc: Location, kind: str) -> list[pd.DataFrame]:
    """The compacted table of one kind and the parts written after it, oldest first.

    A run writes ``parts/<seq>-<writer>.<kind>.parquet`` as trials finish; ``<kind>.parquet``
    holds every part up to the sequence number in its metadata.
    """
    base_name = f"{kind}.parquet"
    for _ in range(READ_ATTEMPTS):
        base = _read(loc, base_name)
        through = base[1] if base else -1
        parts = []
        for name in loc.files("parts"):
            match = PART.match(name)
            if match and match.group(3) == kind and int(match.group(1)) > through:
                parts.append((int(match.group(1)), match.group(2), f"parts/{name}"))
        read = _read_all(loc, [name for _, _, name in sorted(parts)])
        if all(part is not None for part in read) and _through_now(loc, base_name) == through:
            return ([base[0]] if base else []) + [part[0] for part in read]
    raise ResultsError(f"{loc.show()}: the tables kept changing while being read; load again")


def _merge_trials(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """One row per trial_id, the newest (sources are oldest first)."""
    trials = pd.concat(frames, ignore_index=True, sort=False) if len(frames) > 1 else frames[0]
    if "trial_id" in trials and not trials["trial_id"].is_unique:
        trials = trials.drop_duplicates("trial_id", keep="last").reset_index(drop=True)
    return trials


def _merge_curves(frames: list[pd.DataFrame], done: pd.Series) -> pd.DataFrame:
    """Curves of finished trials, each trial's from the newest source that has it."""
    frames = [f for f in frames if "trial_id" in f]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in CURVE_COLUMNS})
    if len(frames) == 1:  # a compacted table: each trial once already (no copy of millions of rows)
        keep = frames[0]["trial_id"].isin(done)
        return frames[0] if keep.all() else frames[0][keep].reset_index(drop=True)
    frames = [f.assign(_source=i) for i, f in enumerate(frames)]
    curves = pd.concat(frames, ignore_index=True, sort=False)
    newest = curves.groupby("trial_id")["_source"].transform("max")
    keep = (curves["_source"] == newest) & curves["trial_id"].isin(done)  # orphans of a cut-off flush
    return curves[keep].drop(columns="_source").reset_index(drop=True)


def _require(frame: pd.DataFrame, columns, path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ResultsError(f"{path} lacks column(s) {', '.join(missing)}")


def _current(loc: Location) -> dict[str, str] | None:
    """``current.json``: trial_id -> label of the study as it is now (None for older results)."""
    data = loc.read_bytes("current.json")
    if data is None:
        return None
    try:
        return dict(json.loads(data)["trials"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ResultsError(f"cannot read {loc.show('current.json')}: {exc}") from None


def _split_stale(trials: pd.DataFrame, curves: pd.DataFrame, current: dict[str, str] | None,
                 include_stale: bool) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Keep the current study's rows (all with include_stale), labelled as the study labels them now."""
    if current is None:
        return trials, curves, 0
    is_current = trials["trial_id"].isin(list(current))
    stale = int((~is_current).sum())
    if not include_stale:
        trials = trials[is_current].reset_index(drop=True)
        curves = curves[curves["trial_id"].isin(list(current))].reset_index(drop=True)
    trials = trials.copy()
    relabel = trials["trial_id"].map(current)
    if "label" in trials:
        trials["label"] = relabel.where(relabel.notna(), trials["label"])
    else:
        trials["label"] = relabel
    return trials, curves, stale


def load(results_dir, *, include_stale: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return ``(trials, curves)`` of a results directory, with the columns of ``prepare`` added.

    Only the current study's trials by default: rows that ``current.json`` (written by the
    sweep) does not list come from an earlier version of the study (another task, a removed
    entry) and are left out, with a warning that counts them; ``include_stale=True`` keeps
    them. Labels come from ``current.json``, so a renamed entry relabels its old rows.
    ``trials.attrs["stale_rows"]`` holds the count either way.

    Raises ResultsError (one line) when the directory or ``trials.parquet`` is missing, a file
    cannot be read, required columns are missing, or a status is not one of STATUSES. A
    missing ``curves.parquet`` gives an empty curves table (the curve figures are then skipped).
    Parts of a run still going, or cut short, are read too: each trial appears once, its newest row.

    ``results_dir`` is a local path or a URI as ``sensitivity run --storage`` takes it (``s3://``,
    ``gs://``, ``file://``, with a query such as ``?endpoint_override=host:port&scheme=http``;
    ``analysis.location``), and may also be the path of its trials.parquet or curves.parquet. An empty table,
    or one whose trials all errored, raises ResultsError saying so; outcome columns no trial wrote
    are added as missing values. ``smoke`` (bool) comes from the table, else from the ``smoke:``
    header of the study.yaml beside it.
    """
    loc = Location(results_dir)
    if not loc.is_dir():
        raise ResultsError(f"results directory not found: {loc.show()}")
    trials_path, curves_path = loc.show("trials.parquet"), loc.show("curves.parquet")
    trial_frames = _sources(loc, "trials")
    if not trial_frames:
        raise ResultsError(f"no trials.parquet in {loc.show()} (expected <out>/<study>/trials.parquet)")
    trials = _merge_trials(trial_frames)
    if trials.empty:
        raise ResultsError(f"{trials_path} has no finished trials yet")
    if "status" in trials and (trials["status"] == "error").all():
        errors = trials["error"].dropna() if "error" in trials else pd.Series(dtype=object)
        first = " ".join(str(errors.iloc[0]).split()) if len(errors) else "no message recorded"
        raise ResultsError(f"all {len(trials)} trials errored: {first}")
    _require(trials, [c for c in TRIAL_COLUMNS if c not in READ_OUTCOMES], trials_path)
    for column in READ_OUTCOMES:
        if column not in trials:
            trials[column] = np.nan
    if "smoke" not in trials:
        trials["smoke"] = _smoke(loc)
    curve_frames = _sources(loc, "curves")
    curves = _merge_curves(curve_frames, trials["trial_id"])
    if curve_frames:
        _require(curves, CURVE_COLUMNS, curves_path)
    trials, curves, stale = _split_stale(trials, curves, _current(loc), include_stale)
    if stale and not include_stale:
        warnings.warn(f"{loc.show()}: left out {stale} stale rows (an earlier version of the study); "
                      f"load(..., include_stale=True) keeps them", StaleRowsWarning, stacklevel=2)
    if trials.empty:
        raise ResultsError(f"{trials_path} has no trials of the current study ({stale} stale rows; "
                           f"include_stale=True keeps them)")
    try:
        trials = prepare(trials)
    except ValueError as exc:
        raise ResultsError(f"{trials_path}: {exc}") from None
    trials.attrs["stale_rows"] = stale
    return trials, curves


def _smoke(loc: Location) -> bool:
    """Whether the study.yaml beside the tables says the run was ``--smoke`` (False without one)."""
    head = (loc.read_text("study.yaml") or "")[:300]
    return re.search(r"smoke: true\b", head) is not None
