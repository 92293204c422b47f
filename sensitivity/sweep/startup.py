"""The driver's last checks in the background, while Ray starts (no Ray imported here).

A run with trials left builds each optimizer configuration once to run its own range checks
(torch's import: a few seconds) while the main thread starts Ray (a few seconds more: Ray must be
started from the thread that outlives it, since its processes die with the thread that spawned
them). `run_study` asks for the checks' result once Ray is up; bad input stops the run as before
(exit 2, one line), and the Ray it started is shut down again.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

__all__ = ["Background"]


class Background:
    """`fn(*args)` running in a thread; `result()` waits for it and raises what it raised."""

    def __init__(self, fn: Callable[..., Any], *args: Any):
        self.value: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn, args), name="sensitivity-checks", daemon=True)
        self.thread.start()

    def _run(self, fn, args) -> None:
        try:
            self.value = fn(*args)
        except BaseException as exc:  # handed to whoever asks for the result
            self.error = exc

    def result(self) -> Any:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.value
