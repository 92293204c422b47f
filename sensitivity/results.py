"""The results tables of one study under ``<out>/<study>/``: parts while a run writes, compacted after.

Layout (the files are the contract; ``analysis`` reads them without importing this module):

- ``parts/<seq>-<writer>.curves.parquet`` and ``parts/<seq>-<writer>.trials.parquet``: one pair per
  flush (a finished trial or bundle).  A flush writes new files only, so its cost does not grow
  with the study.  Curves are written before trials: a trial counts as done once its trials part
  exists, and curves of trials that are not done are dropped on read.
- ``trials.parquet`` and ``curves.parquet``: the compacted tables, rewritten when a run ends and by
  ``sensitivity compact``.  Each records in its schema metadata (key ``sensitivity.through``) the
  last part sequence number it holds; parts at or below it are leftovers of an interrupted
  compaction and are ignored (and deleted by the next one).

Read = compacted table + parts above its ``through``, in sequence order; a trial_id that appears
more than once keeps its newest row, and its curve comes from the newest source that has one.
Every file is written to a temporary name and renamed, so a kill -9 at any point leaves tables
that load, with every finished trial at most once and nothing half-written visible.

One writer (the run holding the study's lease, `sensitivity.lease`) writes a study's files.
Rows become Arrow tables and sources merge in `sensitivity.tables`; files are read and written
through `sensitivity.storage`; this module keeps the store: its reads, appends, compactions and
the migrations of stored rows (`rename`, `respell`).
Paths may be local or any URI pyarrow understands (``s3://``, ``gs://``; NFS mounts are local paths).
"""

from __future__ import annotations

import os
import re
import uuid
from typing import Any, Iterable, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from sensitivity.compaction import Source, fold
from sensitivity.identity import NON_IDENTITY_KEYS, trial_id  # noqa: F401 (re-exported)
from sensitivity.storage import (  # noqa: F401  (resolve, join, write_atomic, errors: importable from here too)
    CorruptTableError, ResultsWriteError, check_parquet, exists, join, read_parquet, resolve, through_at,
    through_now, through_of, write_atomic, write_error, writing)
from sensitivity.tables import (  # noqa: F401  (clean_row, LOSS_COLUMNS: importable from here too)
    LOSS_COLUMNS, clean_row, concat, id_column, is_missing, merge_curves, merge_trials, respelt, rows_table)

TRIALS = "trials.parquet"
CURVES = "curves.parquet"
STUDY = "study.yaml"
PARTS = "parts"
RESPELL_ROWS = 50_000
KEEP_ROWS = 200_000  # rows a writer keeps in memory after those it read; past them it reads the files when asked
PART_RE = re.compile(r"^(\d{8,})-([0-9a-z]+)\.(trials|curves)\.parquet$")
READ_ATTEMPTS = 5  # a compaction between a reader's steps makes it read again


class ResultsStore:
    """Append-only trials/curves tables of one study; each flush writes two new part files.

    `location` is ``<out>/<study>`` as a local path or URI.  `trials` and `curves` are the
    merged tables as DataFrames (None before anything was written); `append` adds the rows of
    finished trials at a cost that does not grow with the study; `compact` folds the parts
    into ``trials.parquet`` and ``curves.parquet``.
    """

    def __init__(self, location: str | os.PathLike):
        self.location = os.fspath(location)
        self.fs, self.path = resolve(self.location)
        root = self.path.rstrip("/")
        self.trials_path = root + "/" + TRIALS
        self.curves_path = root + "/" + CURVES
        self.parts_path = root + "/" + PARTS
        self.writer = uuid.uuid4().hex[:8]
        self.guard = None  # called before every write: the run's lease check (raises when lost)
        self._curves_cache: pd.DataFrame | None = None
        # the ids only: a million-trial study's rows are read when asked (`trials`), not to start a run
        sources, _, self._seq = self._sources("trials", columns=["trial_id"])
        self._has_trials = bool(sources)
        self._done: set[str] = set(id_column(concat(sources)).to_pylist()) if sources else set()
        # the trials read and appended so far: Arrow tables, made one DataFrame when `trials` is read;
        # None: read from the files when asked (at first, and once a run has appended more than
        # KEEP_ROWS rows), so that a million-trial run does not hold its whole table in the driver
        self._trials_frames: list | None = None if sources else []
        self._appended = 0

    # -- reading ------------------------------------------------------------

    def shown(self, path: str) -> str:
        """A file's path as messages name it: below a URI, the URI as the user spelt it (its query kept)."""
        root = self.path.rstrip("/") + "/"
        if "://" in self.location and path.startswith(root):
            return join(self.location, path[len(root):])
        return path

    def _parts(self) -> list[tuple[int, str, str, str]]:
        """(seq, writer, kind, path) of every part file, oldest first."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.parts_path, allow_not_found=True))
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for info in infos:
            match = PART_RE.match(info.base_name)
            if match and info.type == pafs.FileType.File:
                found.append((int(match.group(1)), match.group(2), match.group(3), info.path))
        return sorted(found)

    def _listing(self, kind: str) -> tuple[list[Source], int, int]:
        """(compacted table and newer parts of one kind, as files; its `through`; the highest seq seen)."""
        base_path = self.trials_path if kind == "trials" else self.curves_path
        through = through_at(self.fs, base_path, self.shown(base_path))
        parts = self._parts()
        sources = [Source(base_path, self.shown(base_path))] if through is not None else []
        through = -1 if through is None else through
        sources += [Source(path, self.shown(path)) for seq, _w, part_kind, path in parts
                    if part_kind == kind and seq > through]
        return sources, through, max([through] + [p[0] for p in parts])

    def _sources(self, kind: str, columns: list[str] | None = None) -> tuple[list[pa.Table], int, int]:
        """(compacted table and newer parts of one kind, its `through`, the highest seq seen), read
        whole (or only `columns`); read again when a compaction renamed files between the steps."""
        base_path = self.trials_path if kind == "trials" else self.curves_path
        for _ in range(READ_ATTEMPTS):
            base = read_parquet(self.fs, base_path, self.shown(base_path), columns=columns)
            through = through_of(base)
            parts = self._parts()
            sources = [] if base is None else [base]
            complete = True
            for seq, _writer, part_kind, path in parts:
                if part_kind != kind or seq <= through:
                    continue
                table = read_parquet(self.fs, path, self.shown(path), columns=columns)
                if table is None:  # deleted by a compaction since the listing
                    complete = False
                    break
                sources.append(table)
            if complete and through_now(self.fs, base_path) == through:
                top = max([through] + [p[0] for p in parts])
                return sources, through, top
        raise OSError(f"{base_path}: the tables kept changing while being read; read again")

    @property
    def has_tables(self) -> bool:
        """Whether a trials table or part exists (it may hold no row yet)."""
        return self._has_trials

    @property
    def trials(self) -> pd.DataFrame | None:
        """The trials as one DataFrame (each trial_id once, its newest row), None before anything was
        written; kept for the next read while at most KEEP_ROWS rows (a larger table is read again)."""
        if self._trials_frames is None:
            sources, _, _ = self._sources("trials")
            if not sources:
                self._trials_frames = []
                return None
            table = merge_trials(sources)
            if table.num_rows > KEEP_ROWS:
                return table.to_pandas()
            self._trials_frames = [table]
        if not self._trials_frames:
            return None
        if len(self._trials_frames) > 1 or isinstance(self._trials_frames[0], pa.Table):
            frames = [f.to_pandas() if isinstance(f, pa.Table) else f for f in self._trials_frames]
            merged = pd.concat(frames, ignore_index=True, sort=False) if len(frames) > 1 else frames[0]
            self._trials_frames = [merged]
        return self._trials_frames[0]

    def columns(self, names: list[str]) -> pd.DataFrame | None:
        """Only these columns of the trials (and trial_id; those the tables have), each trial_id once,
        its newest row; None before anything was written. Reads no other column of a large table."""
        if self._trials_frames:  # (held: a small table)
            frame = self.trials
            return frame[[c for c in dict.fromkeys(["trial_id", *names]) if c in frame]]
        sources, _, _ = self._sources("trials", columns=["trial_id", *names])
        return merge_trials(sources).to_pandas() if sources else None

    def table(self) -> pa.Table | None:
        """The trials as one Arrow table (each trial_id once, its newest row), read from the files."""
        sources, _, _ = self._sources("trials")
        return merge_trials(sources) if sources else None

    @property
    def curves(self) -> pd.DataFrame | None:
        """Curves of finished trials, read from the files on demand (a writer never holds them)."""
        if self._curves_cache is None:
            sources, _, _ = self._sources("curves")
            if not sources and not self._has_trials:
                return None
            done = pa.array(sorted(self._done), pa.string())
            self._curves_cache = merge_curves(sources, done).to_pandas()
        return self._curves_cache

    def check(self) -> None:
        """CorruptTableError naming the first table or part file that is not readable parquet.

        The trials' id columns (tables and parts) were read when the store was made; the curves are
        read only when a compaction or an analysis needs them, so their footers are checked here. A run
        checks before it writes or trains anything: a corrupt ``curves.parquet`` is then bad input
        (exit 2) at the start, not a failure after every trial has trained.
        """
        check_parquet(self.fs, self.curves_path, self.shown(self.curves_path))
        for _seq, _writer, kind, path in self._parts():
            if kind == "curves":
                check_parquet(self.fs, path, self.shown(path))

    def __contains__(self, tid: str) -> bool:
        """Whether the trial is stored (its row is in a table or a part)."""
        return tid in self._done

    def count(self) -> int:
        """How many trials the tables hold (each trial_id once)."""
        return len(self._done)

    def done_ids(self) -> set[str]:
        return set(self._done)

    # -- writing ------------------------------------------------------------

    def _check(self) -> None:
        if self.guard is not None:
            self.guard()

    def _part_path(self, seq: int, kind: str) -> str:
        return f"{self.parts_path}/{seq:08d}-{self.writer}.{kind}.parquet"

    def append(self, rows: list[Mapping[str, Any]], curves: list[Mapping[str, Any]]) -> int:
        """Add finished trials (skipping ids already stored) as one new pair of parts; returns how many were new.

        A trial given twice keeps its first row, and its curve once: one curve row per epoch (the first
        given, the kept row's when each row's curve follows the one before), never a copy of an epoch."""
        fresh, seen = [], set()
        for row in rows:
            tid = row["trial_id"]
            if tid not in self._done and tid not in seen:
                fresh.append(row)
                seen.add(tid)
        if not fresh:
            return 0
        self._write_part(fresh, _curves_once([c for c in curves if c.get("trial_id") in seen]))
        return len(fresh)

    def _write_part(self, fresh: list[Mapping[str, Any]], curve_rows: list[Mapping[str, Any]]) -> None:
        """One new pair of parts (rows of stored ids replace theirs: a read keeps the newest row)."""
        seen = {row["trial_id"] for row in fresh}
        self._check()
        seq = self._seq + 1
        if curve_rows:  # curves first: a trial is done once its trials part exists
            write_atomic(self.fs, self._part_path(seq, "curves"), rows_table(curve_rows))
        table = rows_table(fresh)
        write_atomic(self.fs, self._part_path(seq, "trials"), table)
        self._seq = seq
        self._done |= seen
        self._has_trials = True
        self._appended += len(fresh)
        if self._appended > KEEP_ROWS:
            self._trials_frames = None  # (read again from the files, should anything ask)
        elif self._trials_frames is not None:
            self._trials_frames.append(table)  # as Arrow: a flush converts nothing
        self._curves_cache = None

    def compact(self, exclude: Iterable[str] = ()) -> None:
        """Fold every part into ``trials.parquet`` and ``curves.parquet``, then delete the parts.

        Order keeps every state between the steps readable: curves, then trials, each renamed
        into place with the last part it holds; parts are deleted only after both. The rows stream
        from the sources into the new files (`sensitivity.compaction`): only the id columns are held.
        """
        exclude = set(exclude)
        self._check()
        trial_sources, _, top = self._listing("trials")
        curve_sources, _, curve_top = self._listing("curves")
        top = max(top, curve_top, self._seq)
        folded = fold(self.fs, trial_sources, curve_sources, exclude)
        write_atomic(self.fs, self.curves_path, folded.curves, through=top)
        write_atomic(self.fs, self.trials_path, folded.trials, through=top)
        for seq, _writer, _kind, path in self._parts():
            if seq <= top:
                self._delete(path)
        self._delete_temporaries()
        self._seq = top
        self._has_trials = True
        if exclude or len(folded.done) != len(self._done):  # (else the same ids: every stored one stays)
            self._done = set(folded.done.to_pylist())
        # the table is read from the files when asked (once, then kept while at most KEEP_ROWS rows)
        self._trials_frames = None
        self._appended = 0
        self._curves_cache = None

    def _delete(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass

    def _delete_temporaries(self) -> None:
        """Temporary files of writes a kill -9 cut short (this run holds the lease: none is live)."""
        for folder in (self.path, self.parts_path):
            try:
                infos = self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
            except OSError:
                continue
            for info in infos:
                if ".parquet.tmp-" in info.base_name and info.type == pafs.FileType.File:
                    self._delete(info.path)

    def drop(self, ids) -> None:
        """Forget trials (e.g. errored ones, to run them again): compact without them."""
        ids = set(ids)
        if ids and ids & self._done:
            self.compact(exclude=ids)

    def rename(self, ids: Mapping[str, str]) -> int:
        """Give stored trials new ids (old -> new, after a change of the id rule); returns how many.

        An old id whose new id is already stored keeps its old id (it stays a row of its own, set
        aside as stale), and of several old ids with one new id only the first moves.  Crash-safe:
        the rows and curves under their new ids are appended as parts first, then a compaction
        drops the old ids; a kill in between leaves the old rows as stale rows, nothing lost.
        """
        trials = self.trials
        if not ids or trials is None or "trial_id" not in trials:
            return 0
        present, moving = set(trials["trial_id"]), {}
        for old, new in ids.items():
            if old in present and new not in present and new not in moving.values():
                moving[old] = new
        if not moving:
            return 0
        rows = trials[trials["trial_id"].isin(list(moving))].copy()
        rows["trial_id"] = rows["trial_id"].map(moving)
        curves = self.curves
        moved = pd.DataFrame()
        if curves is not None and "trial_id" in curves:
            moved = curves[curves["trial_id"].isin(list(moving))].copy()
            moved["trial_id"] = moved["trial_id"].map(moving)
        records = [{k: v for k, v in r.items() if not is_missing(v)} for r in rows.to_dict("records")]
        self.append(records, moved.to_dict("records"))
        self.compact(exclude=moving)
        return len(moving)

    def respell(self, records: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> int:
        """Give stored rows their record's identity columns where they were spelt another way; returns how many.

        `records` maps trial_id -> `TrialRecord`, or is a sequence of such maps (a large study's slices:
        no map of every stored trial is held). A row written by an older version (an optimizer
        alias, a default left out, an int where the record has a float, an error row with only a
        few columns) gets the record's `columns()`, its outcome kept; its curve stays. Crash-safe
        like `rename`: the rows are appended as a part (a read keeps the newest row of an id), then
        the tables are compacted; nothing is rerun.
        """
        batches = [records] if isinstance(records, Mapping) else records
        table, fresh = None, []
        for batch in batches:
            if not batch:
                continue
            if table is None:  # read once, as Arrow; each slice's rows become a DataFrame in turn
                table = self.table()
                if table is None or "trial_id" not in table.column_names:
                    return 0
            rows = table.filter(pc.is_in(id_column(table), value_set=pa.array(list(batch), pa.string()))).to_pandas()
            if rows.empty:
                continue
            # compared RESPELL_ROWS rows at a time: the expected columns of many rows would not fit beside them
            changed = pd.concat([respelt(rows.iloc[k:k + RESPELL_ROWS], batch)
                                 for k in range(0, len(rows), RESPELL_ROWS)])
            for row in changed.to_dict("records"):
                columns = batch[row["trial_id"]].columns()
                columns.pop("label")
                fresh.append({**{k: v for k, v in row.items() if not is_missing(v)}, **columns})
        del table
        if not fresh:
            return 0
        self._write_part(fresh, [])
        self.compact()
        return len(fresh)

    def read_text(self, name: str) -> str | None:
        """A text file beside the tables (study.yaml, current.json), or None."""
        path = self.path.rstrip("/") + "/" + name
        try:
            if self.fs.get_file_info(path).type != pafs.FileType.File:
                return None
            with self.fs.open_input_stream(path) as handle:
                return handle.read().decode(errors="replace")
        except OSError:
            return None

    def write_text(self, name: str, text: str) -> None:
        self._check()
        write_atomic(self.fs, self.path.rstrip("/") + "/" + name, text.encode())

    def ensure_tables(self) -> None:
        """Make both tables exist so a study with nothing to run still has them (a compaction)."""
        if not (exists(self.fs, self.trials_path) and exists(self.fs, self.curves_path)) or self._parts():
            self.compact()


def _curves_once(curves: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Curve rows with each (trial_id, epoch) once, the first given: a trial that ran twice (two
    copies of one trial in a flush) stores one curve. Rows without an epoch are kept as they are."""
    out, seen = [], set()
    for curve in curves:
        epoch = curve.get("epoch")
        if epoch is not None and not is_missing(epoch):
            key = (curve.get("trial_id"), epoch)
            if key in seen:
                continue
            seen.add(key)
        out.append(curve)
    return out


def load(location: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, curves) of a study directory or URI; curves only of finished trials."""
    store = ResultsStore(location)
    if store.trials is None:
        raise FileNotFoundError(f"{store.trials_path}: no trials table (run the study first)")
    curves = store.curves if store.curves is not None else pd.DataFrame({"trial_id": pd.Series(dtype=str)})
    return store.trials, curves
