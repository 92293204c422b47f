"""Compaction: a study's sources folded into one table per kind, one file and one row group at a time.

The sources of a kind are its compacted table and the newer parts, oldest first (`results.ResultsStore`
lists them). A trial keeps its newest row (the last source, the last row) unless excluded; its curve
comes from the newest source that has one, and only a kept trial's curve stays. Deciding that needs
the id columns only; the rows then stream from each source into the new file, so a million-trial
study is compacted without holding its tables (hundreds of MB as Arrow) in the driver.

Columns whose types differ between sources are promoted as a read of the tables promotes them
(`tables.common_schema`: an int column with a float one becomes float, a column a source lacks is
null there, numbers with text become text).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sensitivity.storage import Stream, corrupt
from sensitivity.tables import common_schema, conform, curve_givers, newest

__all__ = ["Source", "read_ids", "plan_trials", "Folded", "fold"]

BATCH = 65_536  # rows read at a time from a source


@dataclass(frozen=True)
class Source:
    """One file of a kind: its path on the store's filesystem and its name in messages."""

    path: str
    shown: str


def _parquet(fs: pafs.FileSystem, source: Source) -> pq.ParquetFile:
    """A source opened for reading (its footer read); CorruptTableError naming it when it is not parquet."""
    try:
        return pq.ParquetFile(fs.open_input_file(source.path))
    except (pa.ArrowException, OSError) as exc:
        raise corrupt(source.shown, exc) from None


def read_ids(fs: pafs.FileSystem, source: Source, unique: bool = False) -> pa.Array:
    """The trial_id column of a source, read a row group at a time (nulls where it has none); with
    `unique`, each id once (a curves source: its ids per trial, not per epoch)."""
    file = _parquet(fs, source)
    if "trial_id" not in file.schema_arrow.names:  # (not a file this package wrote: its rows have no id)
        rows = file.metadata.num_rows
        return pa.nulls(min(rows, 1) if unique else rows, pa.string())
    pieces = []
    for batch in file.iter_batches(batch_size=BATCH, columns=["trial_id"]):
        ids = batch.column(0).cast(pa.string())
        pieces.append(pc.unique(ids) if unique else ids)
    ids = pa.concat_arrays(pieces) if pieces else pa.array([], pa.string())
    return pc.unique(ids) if unique and len(pieces) > 1 else ids


def _split(mask: np.ndarray, sizes: list[int]) -> list[np.ndarray | None]:
    """A mask over sources laid end to end, per source; None where a source keeps every row."""
    out, at = [], 0
    for size in sizes:
        part = mask[at:at + size]
        out.append(None if part.all() else part)
        at += size
    return out


def plan_trials(id_arrays: list[pa.Array], exclude: Iterable[str] = ()) -> tuple[list[np.ndarray | None], pa.Array]:
    """(rows kept of each trials source, the ids kept): each trial's newest row, excluded ids left out."""
    ids = pa.concat_arrays(id_arrays) if id_arrays else pa.array([], pa.string())
    keep = newest(ids)
    exclude = pa.array(sorted(set(exclude)), pa.string())
    if len(exclude):
        keep &= ~pc.is_in(ids, value_set=exclude).to_numpy(zero_copy_only=False)
    return _split(keep, [len(a) for a in id_arrays]), ids.filter(pa.array(keep))


def _rows(fs, sources: list[Source], filters: list, schema: pa.Schema) -> Iterator[pa.Table]:
    """The kept rows of every source in order, BATCH rows read at a time, in the common schema."""
    for source, kept in zip(sources, filters):
        if kept is not None and not len(kept):
            continue
        offset = 0
        for batch in _parquet(fs, source).iter_batches(batch_size=BATCH):
            table = pa.Table.from_batches([batch])
            if isinstance(kept, np.ndarray):  # a row mask over the source
                table = table.filter(pa.array(kept[offset:offset + len(table)]))
            elif kept is not None:  # the trial ids this source gives
                table = table.filter(pc.is_in(table.column("trial_id"), value_set=kept))
            offset += batch.num_rows
            if len(table):
                yield conform(table, schema)


def _schema(fs, sources: list[Source]) -> pa.Schema:
    return common_schema([_parquet(fs, s).schema_arrow for s in sources])


@dataclass
class Folded:
    """A compaction's two new tables, ready to write (`storage.write_atomic`), and the ids kept."""

    curves: Stream
    trials: Stream
    done: pa.Array


def fold(fs: pafs.FileSystem, trials: list[Source], curves: list[Source], exclude: Iterable[str] = ()) -> Folded:
    """The tables a compaction writes, as streams over the sources, and the ids it keeps."""
    keep, done = plan_trials([read_ids(fs, s) for s in trials], exclude)
    given = curve_givers([read_ids(fs, s, unique=True) for s in curves], done)
    trial_schema, curve_schema = _schema(fs, trials), _schema(fs, curves)
    return Folded(curves=Stream(curve_schema, lambda: _rows(fs, curves, given, curve_schema)),
                  trials=Stream(trial_schema, lambda: _rows(fs, trials, keep, trial_schema)), done=done)
