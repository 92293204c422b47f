"""Read a study's parquet tables (parts of a running sweep included) and add the display columns.

The parquet schema (README.md, "The results tables") is the whole contract: nothing here imports
``sensitivity``. Which columns are hyperparameters, and the series they make, is ``analysis.columns``.
"""
from __future__ import annotations

import json
import pathlib
import re
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .columns import STATUSES, prepare

__all__ = ["ResultsError", "StaleRowsWarning", "load", "prepare", "results_root", "smoke_run", "STATUSES",
           "TRIAL_COLUMNS", "CURVE_COLUMNS"]

# What analysis reads; the contract has more, which are kept but not required.
TRIAL_COLUMNS = (
    "trial_id", "optimizer", "lr", "beta", "decay", "seed", "status",
    "min_train_loss", "min_test_loss", "best_test_acc", "final_test_acc",
)
# Outcomes an errored worker does not write: a table whose trials all lacked one gets it as missing values.
READ_OUTCOMES = ("min_train_loss", "min_test_loss", "best_test_acc", "final_test_acc")
CURVE_COLUMNS = ("trial_id", "epoch", "step", "train_loss", "test_loss", "train_acc", "test_acc", "lr")


class ResultsError(ValueError):
    """A results directory that is missing, unreadable or not shaped like the contract."""


class StaleRowsWarning(UserWarning):
    """`load` left out rows of an earlier version of the study."""


PART = re.compile(r"^(\d{8,})-([0-9a-z]+)\.(trials|curves)\.parquet$")
THROUGH_KEY = b"sensitivity.through"  # a compacted table's last part; older parts are leftovers
READ_ATTEMPTS = 5


def _read(path: pathlib.Path) -> tuple[pd.DataFrame, int] | None:
    """(frame, last part it holds) of one file; None when it vanished (a compaction deleted it)."""
    try:
        # One read of the bytes: a running sweep replaces files by rename, and pyarrow may
        # open a path more than once, which could mix two versions of it.
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        table = pq.read_table(pa.BufferReader(data))
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ResultsError(f"cannot read {path}: {reason}") from None
    through = int((table.schema.metadata or {}).get(THROUGH_KEY, b"-1"))
    return table.replace_schema_metadata(None).to_pandas(), through


def _through_now(path: pathlib.Path) -> int:
    try:
        return int((pq.read_metadata(path).metadata or {}).get(THROUGH_KEY, b"-1"))
    except (FileNotFoundError, OSError):
        return -1


def _sources(root: pathlib.Path, kind: str) -> list[pd.DataFrame]:
    """The compacted table of one kind and the parts written after it, oldest first.

    A run writes ``parts/<seq>-<writer>.<kind>.parquet`` as trials finish; ``<kind>.parquet``
    holds every part up to the sequence number in its metadata.
    """
    base_path = root / f"{kind}.parquet"
    for _ in range(READ_ATTEMPTS):
        base = _read(base_path) if base_path.is_file() else None
        through = base[1] if base else -1
        parts = []
        for path in (root / "parts").glob(f"*.{kind}.parquet"):
            match = PART.match(path.name)
            if match and int(match.group(1)) > through:
                parts.append((int(match.group(1)), match.group(2), path))
        frames = [base[0]] if base else []
        for _, _, path in sorted(parts):
            part = _read(path)
            if part is None:
                break
            frames.append(part[0])
        else:
            if _through_now(base_path) == through:
                return frames
    raise ResultsError(f"{root}: the tables kept changing while being read; load again")


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


def _require(frame: pd.DataFrame, columns, path: pathlib.Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ResultsError(f"{path} lacks column(s) {', '.join(missing)}")


def _current(root: pathlib.Path) -> dict[str, str] | None:
    """``current.json``: trial_id -> label of the study as it is now (None for older results)."""
    path = root / "current.json"
    if not path.is_file():
        return None
    try:
        return dict(json.loads(path.read_text())["trials"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ResultsError(f"cannot read {path}: {exc}") from None


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

    ``results_dir`` may also be the path of its trials.parquet or curves.parquet. An empty table,
    or one whose trials all errored, raises ResultsError saying so; outcome columns no trial wrote
    are added as missing values. ``smoke`` (bool) comes from the table, else from the ``smoke:``
    header of the study.yaml beside it.
    """
    root = results_root(results_dir)
    if not root.is_dir():
        raise ResultsError(f"results directory not found: {root}")
    trials_path, curves_path = root / "trials.parquet", root / "curves.parquet"
    trial_frames = _sources(root, "trials")
    if not trial_frames:
        raise ResultsError(f"no trials.parquet in {root} (expected <out>/<study>/trials.parquet)")
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
        trials["smoke"] = smoke_run(root)
    curve_frames = _sources(root, "curves")
    curves = _merge_curves(curve_frames, trials["trial_id"])
    if curve_frames:
        _require(curves, CURVE_COLUMNS, curves_path)
    trials, curves, stale = _split_stale(trials, curves, _current(root), include_stale)
    if stale and not include_stale:
        warnings.warn(f"{root}: left out {stale} stale rows (an earlier version of the study); "
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


def results_root(path) -> pathlib.Path:
    """A study's results directory, given it or one of its parquet tables."""
    path = pathlib.Path(path)
    return path.parent if path.suffix == ".parquet" and path.is_file() else path


def smoke_run(root) -> bool:
    """Whether the study.yaml beside the tables says the run was ``--smoke`` (False without one)."""
    try:
        head = (pathlib.Path(root) / "study.yaml").read_text(errors="replace")[:300]
    except OSError:
        return False
    return re.search(r"smoke: true\b", head) is not None
