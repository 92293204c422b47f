"""One writer per study location: a lease file ``<location>/lease.json`` that the running driver renews.

- Taking it: a local directory or a shared filesystem (NFS) creates the file with a hard link,
  which fails when it exists, so exactly one of two runs that race gets it.  Object stores
  (``s3://``, ``gs://``) offer no conditional write through pyarrow: the lease is written, and
  read back after `SETTLE_S`; the run whose token is there holds it.  Two runs whose reads
  and writes interleave within that window can both go on; each renewal reads the lease
  again, and the run that finds another token stops before its next flush
  (``LeaseLost``), so at most one renewal period of work is duplicated, and duplicated
  trials are stored once (the tables keep one row per trial_id).
- A held lease makes the second run fail at once (`LeaseHeld`, a StudyError: exit 2) with the
  holder's host, pid and start time.
- A lease whose holder is gone is taken over with a note: its pid is dead on this host (a
  kill -9'd run can be rerun right away), or its heartbeat is older than `TIMEOUT_S` (a
  holder on another host, or a lost machine).
- Readers (``sensitivity plot``, ``analysis.load``) never look at the lease.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import pyarrow.fs as pafs

from sensitivity.storage import join, resolve, write_atomic, write_error, writing
from sensitivity.study import StudyError

LEASE = "lease.json"
RENEW_S = 15.0  # heartbeat period of the holder
TIMEOUT_S = 120.0  # a heartbeat older than this marks the holder as gone
SETTLE_S = 2.0  # object stores: wait before reading the lease back
MARKER_STALE_S = 30.0  # a takeover takes milliseconds: an older takeover marker is a dead run's


def results_root(out: str | os.PathLike, storage: str | None) -> str:
    """The results root: a URI (--storage) or an absolute path; StudyError for an --out URI, LocationError
    for a URI that pyarrow cannot use."""
    if storage:
        if "://" in storage:
            resolve(storage)  # a URI pyarrow cannot use: LocationError naming it, before anything runs
            return storage
        # Ray runs trials in per-trial working directories: a relative path must be made absolute now
        return os.path.abspath(os.path.expanduser(storage))
    text = os.fspath(out)
    if "://" in text:
        raise StudyError(f"out: {text} is a URI, and --out takes a local directory; "
                         f"use --storage {text} for remote storage")
    return os.path.abspath(os.path.expanduser(text))


def study_location(out: str | os.PathLike, storage: str | None, name: str) -> str:
    """Where a run's tables and lease go: ``<storage or out>/<name>`` (into a URI's path, not its query)."""
    return join(results_root(out, storage), name)


class LeaseHeld(StudyError):
    """Another live run holds the study's lease (bad input: the same --out twice)."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over (it stalled past the timeout, or raced on an object store)."""


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """Start time of a process in clock ticks since boot ('' off Linux): tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    if fields[0] == "Z":  # a zombie: dead, only not yet reaped by its parent
        return "zombie"
    return fields[19]


def _alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _process_start(pid)
    if now == "zombie":
        return False
    return not (start and now and now != start)


@dataclass
class Holder:
    """What a lease file says about its holder."""

    host: str
    boot: str
    pid: int
    pid_start: str
    started: float
    heartbeat: float
    token: str

    @classmethod
    def mine(cls) -> "Holder":
        now = time.time()
        pid = os.getpid()
        return cls(socket.gethostname(), _boot_id(), pid, _process_start(pid), now, now, uuid.uuid4().hex)

    def text(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"host {self.host}, pid {self.pid}, started {started}"

    def gone(self, timeout_s: float) -> str | None:
        """Why the holder is gone, or None while it may still be running."""
        if self.host == socket.gethostname():
            if self.boot and self.boot != _boot_id():
                return "its machine has rebooted since"
            if not _alive(self.pid, self.pid_start):
                return "that process is gone"
        age = time.time() - self.heartbeat
        if age > timeout_s:
            return f"its heartbeat is {age:.0f} s old (timeout {timeout_s:.0f} s)"
        return None


class Lease:
    """The lease on one study location; `acquire` it, then `check` it before each write, `release` at the end."""

    def __init__(self, location: str | os.PathLike, timeout_s: float = TIMEOUT_S, renew_s: float = RENEW_S,
                 settle_s: float = SETTLE_S):
        self.location = os.fspath(location)
        self.fs, path = resolve(self.location)
        self.dir = path.rstrip("/")
        self.path = self.dir + "/" + LEASE
        self.timeout_s, self.renew_s, self.settle_s = timeout_s, renew_s, settle_s
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.me = Holder.mine()
        self.note: str | None = None  # set when a stale lease was taken over
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading and writing the file ----------------------------------------

    def _read(self) -> Holder | None:
        try:
            with self.fs.open_input_stream(self.path) as handle:
                data = json.loads(handle.read().decode())
            return Holder(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):
            if self.fs.get_file_info(self.path).type == pafs.FileType.NotFound:
                return None
            # unreadable: treat it as a lease from nobody, gone long ago
            return Holder("?", "", -1, "", 0.0, 0.0, "unreadable")

    def _create_local(self) -> bool:
        """Create the lease file only if there is none (atomic on local disks and NFS)."""
        tmp = f"{self.path}.tmp-{uuid.uuid4().hex[:8]}"
        write_atomic(self.fs, tmp, self.me.text().encode())
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            raise write_error(self.path, exc) from exc
        finally:
            os.unlink(tmp)

    def _claim_takeover(self, stale: Holder) -> bool:
        """Local: of several runs taking over the same stale lease, the one that creates this marker wins."""
        marker = f"{self.path}.takeover-{stale.token}"
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:  # a winner that died between this marker and its lease must not block the lease for good
                if time.time() - os.stat(marker).st_mtime > MARKER_STALE_S:
                    os.unlink(marker)
            except OSError:
                pass
            return False
        except OSError as exc:
            raise write_error(marker, exc) from exc
        os.close(fd)
        return True

    def _write(self) -> None:
        write_atomic(self.fs, self.path, self.me.text().encode())

    # -- the protocol ---------------------------------------------------------

    def _held(self, holder: Holder) -> LeaseHeld:
        age = max(0.0, time.time() - holder.heartbeat)
        return LeaseHeld(f"out: {self.location} is in use by another run ({holder.describe()}, heartbeat "
                         f"{age:.0f} s ago); wait for it to finish or stop it, or use another --out "
                         f"(a lease whose run is gone is taken over: at once on its host, else after "
                         f"{self.timeout_s:.0f} s without heartbeat)")

    def probe(self) -> None:
        """Raise LeaseHeld when a live run holds the lease (a check before slow imports; takes nothing)."""
        holder = self._read()
        if holder is not None and holder.gone(self.timeout_s) is None:
            raise self._held(holder)

    def acquire(self) -> "Lease":
        """Take the lease or raise LeaseHeld; start renewing it."""
        self._created = []  # folders this lease creates: removed again when released empty
        folder = self.dir
        while self.local and folder and not os.path.isdir(folder):
            self._created.append(folder)
            folder = os.path.dirname(folder)
        with writing(self.dir):
            self.fs.create_dir(self.dir, recursive=True)
        for _ in range(5):
            holder = self._read()
            if holder is None:
                if self.local:
                    if not self._create_local():
                        continue  # another run created it first: read whose it is
                else:
                    self._write()
                    if not self._settled():
                        continue
                break
            if holder.token == self.me.token:
                break
            reason = holder.gone(self.timeout_s)
            if reason is None:
                raise self._held(holder)
            if self.local and not self._claim_takeover(holder):
                continue  # another run is taking it over
            self._write()
            if not self.local and not self._settled():
                continue
            self.note = (f"note: took over the lease of {self.location} from {holder.describe()} "
                         f"({reason})")
            self._clean_markers(holder.token)
            break
        else:
            holder = self._read()
            raise self._held(holder) if holder else LeaseHeld(f"out: {self.location}: could not take the lease")
        self._thread = threading.Thread(target=self._renew_loop, name="sensitivity-lease", daemon=True)
        self._thread.start()
        return self

    def _settled(self) -> bool:
        time.sleep(self.settle_s)
        holder = self._read()
        return holder is not None and holder.token == self.me.token

    def _clean_markers(self, keep: str | None) -> None:
        """Remove takeover markers, all but `keep`'s (None: all of them, when the lease is released)."""
        if not self.local:
            return
        prefix = os.path.basename(self.path) + ".takeover-"
        for name in os.listdir(self.dir):
            if name.startswith(prefix) and (keep is None or not name.endswith(keep)):
                try:
                    os.unlink(os.path.join(self.dir, name))
                except OSError:
                    pass

    def renew(self) -> None:
        """Write a fresh heartbeat, unless the lease is someone else's now (then mark it lost)."""
        holder = self._read()
        if holder is None or holder.token != self.me.token:
            who = holder.describe() if holder else "nobody (the file was removed)"
            self.lost = f"the lease of {self.location} was taken over by {who}"
            self._stop.set()
            return
        self.me.heartbeat = time.time()
        self._write()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                self.renew()
            except Exception:  # a failed heartbeat is retried; only a lease taken over stops the run
                pass

    def check(self) -> None:
        """Raise LeaseLost when another run has taken this lease over."""
        if self.lost:
            raise LeaseLost(f"{self.lost}; this run stops, rerun it to resume")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.lost:
            return
        try:
            holder = self._read()
            if holder is not None and holder.token == self.me.token:
                self.fs.delete_file(self.path)
                self._clean_markers(None)  # the takeover that gave this run the lease is over
            for folder in getattr(self, "_created", []):  # innermost first
                if os.path.isdir(folder) and not os.listdir(folder):
                    os.rmdir(folder)  # a run stopped by bad input before writing anything leaves nothing behind
        except OSError:
            pass  # a lease left behind is taken over as stale

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
