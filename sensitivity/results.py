"""The results tables: ``trials.parquet`` and ``curves.parquet`` under ``<out>/<study>/``.

One writer (the sweep driver) owns a study's directory.  Every flush rewrites a
whole table to a temporary name and renames it over the old one, so a reader (or
a resumed run after SIGKILL) sees either the previous table or the new one, never
half a file.  Curves are flushed before trials: a trial counts as done only once
its row is in ``trials.parquet``, and curves of trials that are not done are
dropped on load, so every trial appears exactly once after any interruption.

Paths may be local or any URI pyarrow understands (``s3://``, ``gs://``, NFS
mounts are local paths).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from typing import Any, Iterable, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sensitivity.identity import NON_IDENTITY_KEYS, _canonical, trial_id  # noqa: F401 (re-exported)

TRIALS = "trials.parquet"
CURVES = "curves.parquet"
STUDY = "study.yaml"

LOSS_COLUMNS = ("min_train_loss", "min_test_loss", "final_train_loss", "final_test_loss")


# ---------------------------------------------------------------------------
# filesystem helpers (local paths and URIs alike)


def resolve(location: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a URI; local paths become absolute."""
    text = os.fspath(location)
    if "://" in text:
        return pafs.FileSystem.from_uri(text)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text))


def join(base: str, *parts: str) -> str:
    """Join path parts of a local path or a URI with '/' (into a URI's path, before its ?query)."""
    if "://" in base:
        head, sep, query = base.partition("?")
        return "/".join([head.rstrip("/"), *parts]) + sep + query
    return os.path.join(base, *parts)


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write bytes to `path` through a temporary sibling and a rename."""
    parent = path.rsplit("/", 1)[0] if "/" in path else "."
    fs.create_dir(parent, recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(tmp) as stream:
        stream.write(data)
    fs.move(tmp, path)  # atomic rename locally; on object stores the final PUT is atomic


def _write_table(fs: pafs.FileSystem, path: str, frame: pd.DataFrame) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    write_atomic(fs, path, sink.getvalue().to_pybytes())


def _read_table(fs: pafs.FileSystem, path: str) -> pd.DataFrame | None:
    if not _exists(fs, path):
        return None
    with fs.open_input_file(path) as handle:
        return pq.read_table(handle).to_pandas()


# ---------------------------------------------------------------------------
# rows


def clean_row(row: Mapping[str, Any]) -> dict:
    """A row safe for parquet: no NaN losses (NaN -> +inf), nested values as JSON text."""
    out = {}
    for key, value in row.items():
        if key in LOSS_COLUMNS and (value is None or (isinstance(value, float) and math.isnan(value))):
            value = math.inf
        if isinstance(value, (dict, list, tuple)):
            value = json.dumps(_canonical(value), sort_keys=True)
        out[key] = value
    return out


def _frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame([clean_row(r) for r in rows])


def _concat(old: pd.DataFrame | None, new: pd.DataFrame) -> pd.DataFrame:
    if old is None or old.empty:
        return new.reset_index(drop=True)
    if new.empty:
        return old
    # object-typed union keeps all-null columns from forcing dtype warnings
    return pd.concat([old, new], ignore_index=True, sort=False)


class ResultsStore:
    """Append-only trials/curves tables of one study, each flush atomic.

    `location` is ``<out>/<study>`` as a local path or URI.  Load once, then
    `append` the rows of each finished trial (or bundle of trials).
    """

    def __init__(self, location: str | os.PathLike):
        self.location = os.fspath(location)
        self.fs, self.path = resolve(self.location)
        self.trials_path = self.path.rstrip("/") + "/" + TRIALS
        self.curves_path = self.path.rstrip("/") + "/" + CURVES
        self.trials = _read_table(self.fs, self.trials_path)
        curves = _read_table(self.fs, self.curves_path)
        done = self.done_ids()
        if curves is not None and "trial_id" in curves:
            curves = curves[curves["trial_id"].isin(done)].reset_index(drop=True)  # orphans of a crash
        self.curves = curves

    def done_ids(self) -> set[str]:
        if self.trials is None or "trial_id" not in self.trials:
            return set()
        return set(self.trials["trial_id"])

    def append(self, rows: list[Mapping[str, Any]], curves: list[Mapping[str, Any]]) -> int:
        """Add finished trials (skipping ids already stored); returns how many were new."""
        done = self.done_ids()
        fresh, seen = [], set()
        for row in rows:
            tid = row["trial_id"]
            if tid not in done and tid not in seen:
                fresh.append(row)
                seen.add(tid)
        if not fresh:
            return 0
        curve_rows = [c for c in curves if c.get("trial_id") in seen]
        self.fs.create_dir(self.path, recursive=True)
        if curve_rows or self.curves is None:
            new_curves = _frame(curve_rows) if curve_rows else pd.DataFrame({"trial_id": pd.Series(dtype=str)})
            self.curves = _concat(self.curves, new_curves)
            _write_table(self.fs, self.curves_path, self.curves)
        self.trials = _concat(self.trials, _frame(fresh))
        _write_table(self.fs, self.trials_path, self.trials)
        return len(fresh)

    def drop(self, ids) -> None:
        """Forget trials (e.g. errored ones, to run them again): rewrite both tables without them."""
        ids = set(ids)
        if not ids or self.trials is None:
            return
        self.trials = self.trials[~self.trials["trial_id"].isin(ids)].reset_index(drop=True)
        _write_table(self.fs, self.trials_path, self.trials)  # trials first: their curves become orphans
        if self.curves is not None and "trial_id" in self.curves:
            self.curves = self.curves[~self.curves["trial_id"].isin(ids)].reset_index(drop=True)
            _write_table(self.fs, self.curves_path, self.curves)

    def rename(self, ids: Mapping[str, str]) -> int:
        """Give stored trials new ids (old -> new, after a change of the id rule); returns how many.

        An old id whose new id is already stored keeps its old id (it stays a row of its own).
        Crash-safe: the curves are first written under both ids, then the trials, then the curves
        under the new ids only; whatever the table holds, curves of finished trials survive.
        """
        if not ids or self.trials is None or "trial_id" not in self.trials:
            return 0
        present = set(self.trials["trial_id"])
        ids = {old: new for old, new in ids.items() if old in present and new not in present}
        if not ids:
            return 0
        if self.curves is not None and "trial_id" in self.curves:
            moved = self.curves[self.curves["trial_id"].isin(list(ids))].copy()
            moved["trial_id"] = moved["trial_id"].map(ids)
            _write_table(self.fs, self.curves_path, _concat(self.curves, moved))
        self.trials["trial_id"] = self.trials["trial_id"].replace(ids)
        _write_table(self.fs, self.trials_path, self.trials)
        if self.curves is not None and "trial_id" in self.curves:
            self.curves["trial_id"] = self.curves["trial_id"].replace(ids)
            _write_table(self.fs, self.curves_path, self.curves)
        return len(ids)

    def write_text(self, name: str, text: str) -> None:
        write_atomic(self.fs, self.path.rstrip("/") + "/" + name, text.encode())

    def ensure_tables(self) -> None:
        """Make both tables exist (empty) so a study with nothing to run still has them."""
        self.fs.create_dir(self.path, recursive=True)
        if self.curves is None:
            self.curves = pd.DataFrame({"trial_id": pd.Series(dtype=str)})
            _write_table(self.fs, self.curves_path, self.curves)
        if self.trials is None:
            self.trials = pd.DataFrame({"trial_id": pd.Series(dtype=str)})
            _write_table(self.fs, self.trials_path, self.trials)


def load(location: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, curves) of a study directory or URI; curves only of finished trials."""
    store = ResultsStore(location)
    if store.trials is None:
        raise FileNotFoundError(f"{store.trials_path}: no trials table (run the study first)")
    curves = store.curves if store.curves is not None else pd.DataFrame({"trial_id": pd.Series(dtype=str)})
    return store.trials, curves
