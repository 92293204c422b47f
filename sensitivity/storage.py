"""Where results live: local paths or URIs (``s3://``, ``gs://``), atomic writes, and one-line write errors."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import uuid
from dataclasses import dataclass
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

THROUGH_KEY = b"sensitivity.through"  # schema metadata of a compacted table: last part it holds
ROW_GROUP = 65_536  # rows of a row group in a streamed table: a reader holds one at a time


@dataclass(frozen=True)
class Stream:
    """A table too large to hold, as its schema and a function giving its rows in pieces (each in that schema)."""

    schema: pa.Schema
    pieces: Callable[[], Iterator[pa.Table]]


class CorruptTableError(ValueError):
    """A results table that cannot be read as parquet (bad input: exit 2, the file named)."""


class LocationError(ValueError):
    """A URI that pyarrow cannot use (unknown scheme, unknown query key): bad input, exit 2."""


class ResultsWriteError(OSError):
    """The results location cannot be written (read-only, full, a path under a file); one line."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


# s3://KEY:SECRET@bucket/...; any "@" before the query, since a secret may hold a "/" (then pyarrow
# parses it wrongly and its own error repeats the whole URI)
USERINFO = re.compile(r"^[a-z0-9+.-]+://[^?#]*@", re.IGNORECASE)


def resolve(location: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a URI; local paths become absolute.

    A URI that carries credentials (``s3://KEY:SECRET@bucket``) is refused: locations are printed
    and logged, and Ray keeps them in its state; pyarrow reads credentials from the environment.
    """
    text = os.fspath(location)
    if "://" in text:
        if USERINFO.match(text):
            raise LocationError(f"storage: {re.sub('://[^?#]*@', '://', text, count=1)} "
                                f"carries credentials before its bucket; set them in the environment "
                                f"(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) instead")
        try:
            return pafs.FileSystem.from_uri(text)
        except (ValueError, OSError) as exc:  # pyarrow.ArrowInvalid is a ValueError
            raise LocationError(f"storage: cannot use {text}: {_reason(exc)}; expected s3://bucket/path, "
                                f"gs://bucket/path or file:///path, with a query such as "
                                f"?endpoint_override=host:port&scheme=http") from None
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text))


def join(base: str, *parts: str) -> str:
    """Join path parts of a local path or a URI with '/' (into a URI's path, before its ?query)."""
    if "://" in base:
        head, sep, query = base.partition("?")
        return "/".join([head.rstrip("/"), *parts]) + sep + query
    return os.path.join(base, *parts)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in text:
        return "no space left on the device"
    if getattr(exc, "errno", None) in (errno.EROFS, errno.EACCES, errno.EPERM) or "Read-only file system" in text:
        return "read-only or not permitted"
    if isinstance(exc, (NotADirectoryError, FileExistsError)) or (
            isinstance(exc, OSError) and exc.errno in (errno.ENOTDIR, errno.EEXIST)):
        return "a parent of it is a file"
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def write_error(path: str, exc: OSError) -> ResultsWriteError:
    """One line naming the path that cannot be written, and why."""
    return ResultsWriteError(exc.errno, f"cannot write {path}: {_reason(exc)}; results written before are kept")


@contextlib.contextmanager
def writing(path: str):
    """Turn any failure to write `path` into a ResultsWriteError naming it."""
    try:
        yield
    except ResultsWriteError:
        raise
    except OSError as exc:
        raise write_error(path, exc) from exc


def write_atomic(fs: pafs.FileSystem, path: str, data: bytes | pa.Table | Stream, through: int | None = None) -> None:
    """Write bytes, or a table or stream as parquet, to `path` through a temporary sibling and a rename.

    A table is written straight into the file (no copy of it as bytes in memory: a million-row
    table is hundreds of MB), a stream piece by piece in row groups of ROW_GROUP rows; `through`
    goes into its metadata (a compacted table: the last part it holds).
    """
    parent = path.rsplit("/", 1)[0] if "/" in path else "."
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with writing(path):
        fs.create_dir(parent, recursive=True)
        try:
            metadata = {THROUGH_KEY: str(through).encode()} if through is not None else None
            with fs.open_output_stream(tmp) as stream:
                if isinstance(data, pa.Table):
                    pq.write_table(data.replace_schema_metadata(metadata), stream)
                elif isinstance(data, Stream):
                    _write_stream(stream, data, metadata)
                else:
                    stream.write(data)
            fs.move(tmp, path)  # atomic rename locally; on object stores the final PUT is atomic
        except BaseException:
            try:  # a full disk leaves no partial temp file behind
                fs.delete_file(tmp)
            except Exception:
                pass
            raise


def _write_stream(stream, data: Stream, metadata: dict | None) -> None:
    """A stream's pieces as parquet: small pieces gathered into row groups of ROW_GROUP rows."""
    schema = data.schema.with_metadata(metadata) if metadata else data.schema
    with pq.ParquetWriter(stream, schema) as writer:
        held, rows = [], 0
        for piece in data.pieces():
            held.append(piece)
            rows += len(piece)
            if rows >= ROW_GROUP:
                table = pa.concat_tables(held)
                whole = rows - rows % ROW_GROUP
                writer.write_table(table.slice(0, whole), row_group_size=ROW_GROUP)
                held, rows = [table.slice(whole)], rows - whole
        if rows:
            writer.write_table(pa.concat_tables(held))


def read_parquet(fs: pafs.FileSystem, path: str, shown: str | None = None,
                 columns: list[str] | None = None) -> pa.Table | None:
    """One read of a whole file (a writer renames over it), or None when it is not there; an
    error names it as `shown` (the location as the user spelt it), else as `path`. `columns`:
    only those that the file has."""
    try:
        with fs.open_input_file(path) as handle:
            data = handle.read()
    except FileNotFoundError:
        return None
    except OSError:
        if not exists(fs, path):
            return None
        raise
    try:
        if columns is None:
            return pq.read_table(pa.BufferReader(data))
        have = pq.read_schema(pa.BufferReader(data)).names
        return pq.read_table(pa.BufferReader(data), columns=[c for c in columns if c in have])
    except (pa.ArrowException, OSError) as exc:  # pyarrow raises several types for a corrupt file
        raise corrupt(shown or path, exc) from None


def check_parquet(fs: pafs.FileSystem, path: str, shown: str | None = None) -> None:
    """CorruptTableError naming `path` when its parquet footer cannot be read; nothing when it is not there.

    Reads the footer only (its end and schema), so a run can check a large table before it starts:
    garbage, a truncated file or another format all fail here.
    """
    try:
        with fs.open_input_file(path) as handle:
            pq.read_metadata(handle).schema.to_arrow_schema()
    except FileNotFoundError:
        return
    except (pa.ArrowException, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, pa.ArrowException) and not exists(fs, path):
            return
        raise corrupt(shown or path, exc) from None


def corrupt(path: str, exc: BaseException) -> CorruptTableError:
    """The one-line error of a table or part file that is not readable parquet."""
    reason = " ".join(str(exc).split())[:200] or type(exc).__name__
    return CorruptTableError(f"results: {path} is not a readable parquet table ({reason}); move it away "
                             f"(its rows would be lost) or restore it")


def through_of(table: pa.Table | None) -> int:
    meta = (table.schema.metadata or {}) if table is not None else {}
    return int(meta.get(THROUGH_KEY, b"-1"))


def through_at(fs: pafs.FileSystem, path: str, shown: str | None = None) -> int | None:
    """The `through` of a compacted table from its footer (-1: none recorded), None when the table is not
    there; CorruptTableError when it is not parquet, and any other error raised (never taken for -1:
    the parts a table holds would then be read again over it)."""
    try:
        with fs.open_input_file(path) as handle:
            meta = pq.read_metadata(handle).metadata or {}
    except FileNotFoundError:
        return None
    except pa.ArrowException as exc:  # (before OSError: some of pyarrow's errors are both)
        raise corrupt(shown or path, exc) from None
    except OSError:
        if not exists(fs, path):
            return None
        raise
    return int(meta.get(THROUGH_KEY, b"-1"))


def through_now(fs: pafs.FileSystem, path: str) -> int:
    try:
        with fs.open_input_file(path) as handle:
            meta = pq.read_metadata(handle).metadata or {}
    except (FileNotFoundError, OSError):
        return -1
    return int(meta.get(THROUGH_KEY, b"-1"))
