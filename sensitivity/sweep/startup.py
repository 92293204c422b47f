"""Ray's start in the background, while the driver does its last checks (no Ray imported here).

A run with trials left starts Ray (a few seconds: the local cluster's processes, or joining
`--address`) at the same time as it builds each optimizer configuration once (torch's import, a
few seconds more); `run_study` then takes the started Ray over. Bad input found meanwhile stops
the run as before (exit 2), and the Ray it started is shut down again.
"""

from __future__ import annotations

import threading

__all__ = ["RayStart"]


class RayStart:
    """`sweep.cluster.connect(address)` running in a thread; `result()` is its answer."""

    def __init__(self, address: str | None):
        self.address = address
        self.started = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="sensitivity-ray-start", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            from sensitivity.sweep.cluster import connect

            self.started = connect(self.address)
        except BaseException as exc:  # handed to whoever asks for the result
            self.error = exc

    def result(self) -> bool:
        """Whether this start started Ray (and so must stop it); raises what connecting raised."""
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.started

    def abandon(self) -> None:
        """The run stops before it runs anything: stop the Ray this start started."""
        self.thread.join()
        if self.started:
            import ray

            ray.shutdown()
