"""Where a study's results are: a local directory, or a URI spelt as ``sensitivity run --storage`` takes it.

URIs go through ``pyarrow.fs.FileSystem.from_uri``: ``s3://bucket/path``, ``gs://bucket/path`` and
``file:///path``, each with the query pyarrow reads, such as ``?endpoint_override=host:port&scheme=http``
for MinIO or Ceph. Credentials are pyarrow's (README.md, "Running on a cluster"). This is analysis's own
small resolver: nothing here imports ``sensitivity``.
"""
from __future__ import annotations

import os
import pathlib
import re

import pyarrow.fs as pafs

__all__ = ["Location", "ResultsError", "figures_dir", "is_uri"]

URI_FORMS = ("s3://bucket/path, gs://bucket/path or file:///path, with a query such as "
             "?endpoint_override=host:port&scheme=http")


class ResultsError(ValueError):
    """A results directory that is missing, unreadable or not shaped like the contract."""


def is_uri(results) -> bool:
    return "://" in os.fspath(results)


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


class Location:
    """A study's results directory (given it, or one of its ``.parquet`` tables): a filesystem, the
    directory's path in it, and its spelling in messages. Names below it are relative, '/'-separated."""

    def __init__(self, results):
        text = os.fspath(results)
        self.uri = is_uri(text)
        if self.uri:
            head, sep, query = text.partition("?")
            if _USERINFO.match(text):  # refused, as `sensitivity run --storage` refuses it: messages print locations
                raise ResultsError(f"{_hide_secrets(text)} carries credentials before its bucket; set them in the "
                                   f"environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)")
            try:
                self.fs, path = pafs.FileSystem.from_uri(text)
            except (ValueError, OSError) as exc:  # pyarrow.ArrowInvalid is a ValueError
                raise ResultsError(f"cannot use {text}: {_reason(exc)}; "
                                   f"expected {URI_FORMS}") from None
            # the URI as given, its query kept (messages name it so it can be pasted back)
            self._head, self._query = head.rstrip("/"), sep + query
            self.path = path.rstrip("/")
        else:
            self.fs, self.local = pafs.LocalFileSystem(), pathlib.Path(text).expanduser()
            self.path = os.path.abspath(os.path.expanduser(text))
        if self.path.endswith(".parquet") and self._type(self.path) == pafs.FileType.File:
            self._up()  # a table's path means its directory

    def _up(self) -> None:
        self.path = self.path.rsplit("/", 1)[0]
        if self.uri:
            self._head = self._head.rsplit("/", 1)[0]
        else:
            self.local = self.local.parent

    @property
    def name(self) -> str:
        """The directory's own name: the study's, for ``<out>/<study>``."""
        return self._head.rsplit("/", 1)[-1] if self.uri else self.local.name

    def file(self, name: str = "") -> str:
        """The path in ``fs`` of a name below the directory."""
        return f"{self.path}/{name}" if name else self.path

    def show(self, name: str = ""):
        """How messages spell the directory or a name below it: the URI or path as the user gave it."""
        if self.uri:
            return f"{self._head}/{name}{self._query}" if name else f"{self._head}{self._query}"
        return self.local / name if name else self.local

    def _type(self, path: str) -> pafs.FileType:
        try:
            return self.fs.get_file_info(path).type
        except OSError as exc:  # unreachable endpoint, refused credentials, missing bucket
            raise ResultsError(f"cannot read {self.show()}: {_reason(exc)}") from None

    def is_dir(self) -> bool:
        return self._type(self.path) == pafs.FileType.Directory

    def is_file(self, name: str) -> bool:
        return self._type(self.file(name)) == pafs.FileType.File

    def files(self, folder: str) -> list[str]:
        """Names of the files directly in a folder below the directory ([] when there is none)."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.file(folder), allow_not_found=True))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise ResultsError(f"cannot read {self.show(folder)}: {_reason(exc)}") from None
        return [info.base_name for info in infos if info.type == pafs.FileType.File]

    def read_bytes(self, name: str) -> bytes | None:
        """A whole file in one read (a running sweep replaces files by rename); None when it is not there."""
        try:
            with self.fs.open_input_file(self.file(name)) as handle:
                return handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:  # object stores say 'not found' as a plain OSError
            if self._type(self.file(name)) == pafs.FileType.NotFound:
                return None
            raise ResultsError(f"cannot read {self.show(name)}: {_reason(exc)}") from None

    def read_text(self, name: str) -> str | None:
        try:
            data = self.read_bytes(name)
        except ResultsError:
            return None
        return None if data is None else data.decode(errors="replace")


# s3://KEY:SECRET@bucket/...: any "@" before the query (a secret may hold a "/")
_USERINFO = re.compile(r"^([a-z0-9+.-]+://)[^?#]*@", re.IGNORECASE)


def _hide_secrets(uri: str) -> str:
    """A URI without the key and secret pyarrow allows before its host (s3://KEY:SECRET@bucket)."""
    return _USERINFO.sub(r"\1", uri)


def figures_dir(results) -> pathlib.Path:
    """Where ``sensitivity plot`` and ``write_report`` put figures by default: ``<results>/figures`` for a
    local directory; for a URI, ``<study>/figures`` under the working directory (figures are local files)."""
    location = Location(results)
    return pathlib.Path(location.name) / "figures" if location.uri else location.local / "figures"
