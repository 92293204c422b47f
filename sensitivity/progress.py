"""One-line progress of a sweep: done/total, diverged, errored, elapsed, ETA."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Mapping, TextIO


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Counts finished trials and redraws one status line.

    On a terminal the line is redrawn in place; in a log file a line is
    written at most every `every` seconds, so logs stay short.
    """

    def __init__(self, total: int, *, name: str = "", quiet: bool = False, stream: TextIO | None = None,
                 every: float = 10.0):
        self.total, self.name, self.quiet = total, name, quiet
        self.stream = stream or sys.stderr
        self.every = every
        self.done = self.diverged = self.errored = 0
        self.start = time.monotonic()
        self._last = -1e9
        self._first: float | None = None  # the first result: startup (workers, imports) is over
        self._first_done = 0
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def add(self, rows: Iterable[Mapping]) -> None:
        """Count one finished unit of work: a trial, or a fused array's trials, which arrive together."""
        for row in rows:
            self.done += 1
            self.diverged += row.get("status") == "diverged"
            self.errored += row.get("status") == "error"
        if self._first is None:  # the rate is measured from the first arrival on, excluding it
            self._first = time.monotonic()
            self._first_done = self.done
        self.show()

    def line(self) -> str:
        now = time.monotonic()
        elapsed, left = now - self.start, self.total - self.done
        # the rate since the first arrival (the startup before it says little about what is left; an
        # array's trials arrive at once, so the rate needs a second arrival): "?" until then
        since = self.done - self._first_done
        if left <= 0:
            eta = "0:00"
        elif self._first is not None and since > 0 and now > self._first:
            eta = _clock((now - self._first) / since * left)
        else:
            eta = "?"
        head = f"{self.name}: " if self.name else ""
        return (f"{head}{self.done}/{self.total} trials | {self.diverged} diverged | {self.errored} errored"
                f" | {_clock(elapsed)} elapsed | ETA {eta}")

    def show(self, final: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if self._tty:
            self.stream.write("\r" + self.line().ljust(79) + ("\n" if final else ""))
        elif final or now - self._last >= self.every:
            self.stream.write(self.line() + "\n")
            self._last = now
        self.stream.flush()
