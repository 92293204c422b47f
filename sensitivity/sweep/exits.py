"""How a worker process ended: a watcher beside each Ray worker records the exit status of a death.

Ray reports a worker that died while training only as "Worker exit type: SYSTEM_ERROR ... Socket
closed" (or "End of file"): the raylet notices a closed connection, not an exit status, so neither
its message nor the state API's ``exit_detail`` says which signal or code ended the process (Ray
2.60). Nor can the driver ask: only a parent can wait for a process, and the raylet is the parent.
Linux 6.15 and later keep a process's exit status for whoever holds a pidfd of it
(``PIDFD_GET_INFO`` with ``PIDFD_INFO_EXIT``).

So each worker process starts one small watcher (`Watcher`: ``python -m sensitivity.sweep.exits``,
in a session of its own, so the raylet's SIGTERM to the dead worker's group does not reach it). It
holds a pidfd of the worker and learns through a pipe which trials the worker is training and where
their records go. When the worker dies while training, the watcher writes ``<folder>/<trial_id>.json``
(`read_exit`) with how the process ended ("signal 9 (SIGKILL)", "exit code 3"), or why that is not
known (an older kernel, another OS); the driver puts it in the trial's ``WorkerDied`` error row.
Stdlib only until a record is written (then `sensitivity.storage`, for s3:// or gs:// folders).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time

__all__ = ["Watcher", "watcher", "describe", "exit_status", "exit_status_supported", "read_exit", "UNKNOWN"]

# linux/pidfd.h: PIDFD_GET_INFO = _IOWR(0xFF, 11, struct pidfd_info), whose first version is 64 bytes
# with the wait status (`exit_code`) in its last 4; PIDFD_INFO_EXIT asks for that field.
PIDFD_GET_INFO = (3 << 30) | (64 << 16) | (0xFF << 8) | 11
PIDFD_INFO_EXIT = 1 << 3
INFO_SIZE, EXIT_CODE_AT = 64, 60
STATUS_WAIT_S = 5.0  # how long the kernel may take to reap the process (the status is kept from then on)
READY_WAIT_S = 10.0  # a worker waits at most this long for its watcher to hold the pidfd
UNKNOWN = ("the kernel reported no exit status (Linux 6.15 or later reports the signal or exit code "
           "to the watcher of each worker; Ray itself does not)")


def describe(status: int) -> str:
    """A wait status in words: "signal 9 (SIGKILL)", "signal 11 (SIGSEGV), core dumped", "exit code 3"."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "unnamed"
        return f"signal {number} ({name})" + (", core dumped" if os.WCOREDUMP(status) else "")
    if os.WIFEXITED(status):
        return f"exit code {os.WEXITSTATUS(status)}"
    return f"wait status {status}"


def exit_status(pidfd: int, wait_s: float = STATUS_WAIT_S) -> int | None:
    """The wait status of the exited process behind `pidfd`, once it is reaped; None when the kernel keeps none."""
    deadline = time.monotonic() + wait_s
    while True:
        info = bytearray(struct.pack("Q", PIDFD_INFO_EXIT) + bytes(INFO_SIZE - 8))
        try:
            fcntl.ioctl(pidfd, PIDFD_GET_INFO, info, True)
            if struct.unpack_from("Q", info, 0)[0] & PIDFD_INFO_EXIT:
                return struct.unpack_from("i", info, EXIT_CODE_AT)[0]
        except OSError as exc:
            if exc.errno in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
                return None  # no PIDFD_GET_INFO (before Linux 6.13)
            # ESRCH: gone and no status kept (before 6.15), or not reaped yet: ask again until the deadline
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)


def exit_status_supported() -> bool:
    """Whether this machine's kernel keeps an exit status for a pidfd's holder (a child run and reaped to see)."""
    if not hasattr(os, "pidfd_open"):
        return False
    child = subprocess.Popen(["sleep", "30"])
    try:
        fd = os.pidfd_open(child.pid)
    except OSError:
        child.kill()
        child.wait()
        return False
    try:
        child.kill()
        child.wait()
        status = exit_status(fd, wait_s=1.0)
        return status is not None and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    finally:
        os.close(fd)


def read_exit(folder: str, tid: str) -> dict | None:
    """The record a watcher wrote of the trial's last death ({"ending" or "unknown", "pid", "host"}), or None."""
    from sensitivity.storage import join, resolve

    fs, path = resolve(join(folder, f"{tid}.json"))
    try:
        with fs.open_input_stream(path) as handle:
            return json.loads(handle.read().decode())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------
# the worker's side


class Watcher:
    """The watcher process of this worker process: `training(folder, ids)` before a unit, `idle()` after."""

    def __init__(self):
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen([sys.executable, "-m", "sensitivity.sweep.exits", str(os.getpid())],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
                                        env=env)
        try:  # wait until it holds the pidfd: a trial that kills the worker at once is still seen
            ready, _, _ = select.select([self.process.stdout], [], [], READY_WAIT_S)
            self.ready = bool(ready) and self.process.stdout.readline().strip() == b"ready"
        except OSError:  # (select on a pipe: not on every OS) no watcher, and no process left behind
            self.process.kill()
            self.process.wait()
            raise

    def _say(self, line: str) -> None:
        try:
            self.process.stdin.write(line.encode() + b"\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            self.ready = False  # (the watcher is gone; training goes on without it)

    def training(self, folder: str, ids: list[str]) -> None:
        """The worker now trains `ids` (one trial, or an array's members); a death is recorded under `folder`."""
        if self.ready:
            self._say(json.dumps({"folder": folder, "ids": ids}))

    def idle(self) -> None:
        if self.ready:
            self._say("{}")


_WATCHER: Watcher | None = None
_CANNOT_START = False  # tried once and failed: every later unit trains without a watcher, not retrying


def watcher() -> Watcher | None:
    """This process's watcher, started on first use; None where it cannot start."""
    global _WATCHER, _CANNOT_START
    if _WATCHER is None and not _CANNOT_START:
        try:
            _WATCHER = Watcher()
        except OSError:
            _CANNOT_START = True
    return _WATCHER


# ---------------------------------------------------------------------------
# the watcher process


def _write(state: dict, pid: int, status: int | None, why: str | None) -> None:
    from sensitivity.storage import join, resolve, write_atomic

    for tid in state.get("ids", []):
        record = {"trial_id": tid, "pid": pid, "host": socket.gethostname(), "at": time.time()}
        if status is not None:
            record["ending"] = describe(status)
        else:
            record["unknown"] = why or UNKNOWN
        fs, path = resolve(join(state["folder"], f"{tid}.json"))
        try:
            write_atomic(fs, path, json.dumps(record).encode())
        except OSError as exc:
            print(f"sensitivity: the watcher of worker pid {pid} could not record how it ended: {exc}", file=sys.stderr)


def main(argv: list[str]) -> int:
    """Watch the worker `argv[0]` (this process's parent) until it exits; record how, if it was training."""
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)  # it ends when the worker does, after its record
    parent = int(argv[0])
    try:
        pidfd = os.pidfd_open(parent)
    except (AttributeError, OSError):
        pidfd = None  # another OS or an old kernel: the death is still seen (the parent changes), not how
    if os.getppid() != parent:
        return 0  # the worker is gone already
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    state: dict = {}
    pending = b""
    watched = [0] + ([pidfd] if pidfd is not None else [])
    while True:
        ready, _, _ = select.select(watched, [], [], None if pidfd is not None else 0.5)
        closed = False
        while select.select([0], [], [], 0)[0]:  # every line the worker wrote before it died
            chunk = os.read(0, 1 << 16)
            if not chunk:
                closed = True
                watched = [fd for fd in watched if fd != 0]
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if lines:
                state = json.loads(lines[-1])
        if (pidfd is not None and pidfd in ready) or os.getppid() != parent:
            break  # the worker died
        if closed:  # the worker closes the pipe as it exits: wait for its end a little, else it let us go
            if pidfd is not None and select.select([pidfd], [], [], 2.0)[0]:
                break
            time.sleep(0 if pidfd is not None else 0.5)
            if os.getppid() == parent:
                return 0
            break
    if not state.get("ids"):
        return 0  # it was not training
    status = exit_status(pidfd) if pidfd is not None else None
    why = None if pidfd is not None else "this system has no pidfd (Linux 5.3 or later), so no exit status"
    _write(state, parent, status, why)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
