"""One writer per study location: the lease, its takeover, and what the CLI says about it.

Budget: about 3 s; no Ray, no training. Object stores: on the local S3 server (`s3`, tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from sensitivity.cli import main
from sensitivity.lease import LEASE, Lease, LeaseHeld, LeaseLost
from sensitivity.results import ResultsStore
from sensitivity.study import StudyError

BIN = Path(sys.executable).parent


def _holder(path: Path, **change) -> None:
    now = time.time()
    data = {"host": socket.gethostname(), "boot": "", "pid": os.getpid(), "pid_start": "", "started": now,
            "heartbeat": now, "token": "theirs"}
    path.mkdir(parents=True, exist_ok=True)
    (path / LEASE).write_text(json.dumps({**data, **change}))


def test_a_held_lease_stops_a_second_writer_and_names_the_holder(tmp_path):
    with Lease(tmp_path / "s") as first:
        assert first.note is None
        with pytest.raises(LeaseHeld) as info:
            Lease(tmp_path / "s").acquire()
        message = str(info.value)
        assert isinstance(info.value, StudyError) and "\n" not in message
        assert f"host {socket.gethostname()}, pid {os.getpid()}, started " in message
        assert str(tmp_path / "s") in message and "wait for it to finish" in message
    assert not (tmp_path / "s" / LEASE).exists()  # released
    Lease(tmp_path / "s").acquire().release()


def test_a_dead_holder_on_this_host_is_taken_over_at_once(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    _holder(tmp_path, pid=proc.pid)
    with pytest.raises(LeaseHeld):  # alive: held
        Lease(tmp_path).acquire()
    proc.send_signal(signal.SIGKILL)  # a kill -9'd run (a zombie until reaped counts as dead too)
    time.sleep(0.2)
    lease = Lease(tmp_path).acquire()
    try:
        assert f"pid {proc.pid}" in lease.note and "that process is gone" in lease.note
    finally:
        lease.release()
        proc.wait()


def test_a_holder_elsewhere_is_gone_only_after_the_heartbeat_timeout(tmp_path):
    _holder(tmp_path, host="elsewhere", pid=1, heartbeat=time.time() - 30)
    with pytest.raises(LeaseHeld, match="host elsewhere, pid 1"):
        Lease(tmp_path, timeout_s=60).acquire()
    lease = Lease(tmp_path, timeout_s=20).acquire()
    assert "heartbeat is 30 s old (timeout 20 s)" in lease.note
    lease.release()


def test_of_two_runs_taking_over_one_stale_lease_exactly_one_wins(tmp_path):
    for round in range(5):
        _holder(tmp_path, host="elsewhere", heartbeat=0.0, token=f"stale-{round}")
        results, start = [], threading.Barrier(4)

        def take():
            start.wait()
            try:
                results.append(Lease(tmp_path, renew_s=60).acquire())
            except LeaseHeld:
                results.append(None)

        threads = [threading.Thread(target=take) for _ in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert json.loads((tmp_path / LEASE).read_text())["token"] == winners[0].me.token
        winners[0].release()
    # a winner that died between its takeover marker and its lease blocks it only for a while
    _holder(tmp_path, host="elsewhere", heartbeat=0.0, token="stale-9")
    marker = tmp_path / f"{LEASE}.takeover-stale-9"
    marker.touch()
    with pytest.raises(LeaseHeld):
        Lease(tmp_path).acquire()
    os.utime(marker, (time.time() - 60, time.time() - 60))
    Lease(tmp_path).acquire().release()


def test_renewal_keeps_the_heartbeat_fresh_and_a_lost_lease_stops_writes(tmp_path):
    lease = Lease(tmp_path, renew_s=0.05).acquire()
    try:
        beat = lease.me.heartbeat
        time.sleep(0.3)
        assert json.loads((tmp_path / LEASE).read_text())["heartbeat"] > beat
        store = ResultsStore(tmp_path)
        store.guard = lease.check
        store.append([{"trial_id": "a", "status": "ok"}], [])
        _holder(tmp_path, token="someone-else")  # taken over while this run stalled
        time.sleep(0.3)
        with pytest.raises(LeaseLost, match="taken over"):
            store.append([{"trial_id": "b", "status": "ok"}], [])
        assert store.done_ids() == {"a"}
    finally:
        lease.release()
    assert json.loads((tmp_path / LEASE).read_text())["token"] == "someone-else"  # not ours to remove


def test_object_stores_settle_then_read_back(tmp_path, s3):
    location = s3.uri(f"{tmp_path.name}/s")  # the write-then-read-back path of s3:// and gs://
    lease = Lease(location, settle_s=0.01)
    assert not lease.local
    lease.acquire()
    assert json.loads(s3.fs.open_input_stream(s3.key(f"{tmp_path.name}/s/{LEASE}")).read())["token"] == lease.me.token
    with pytest.raises(LeaseHeld, match=f"pid {os.getpid()}"):
        Lease(location, settle_s=0.01).acquire()
    lease.release()
    assert s3.fs.get_file_info(s3.key(f"{tmp_path.name}/s/{LEASE}")).type.name == "NotFound"
    Lease(location, settle_s=0.01).acquire().release()


def _study(tmp_path: Path) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "leased", "task": {"dataset": "digits", "model": "mlp", "epochs": 1},
                                    "optimizers": [{"name": "sgd", "lr": 0.1}]}))
    return path


def test_cli_run_on_a_held_location_exits_2_at_once(tmp_path, capsys, monkeypatch):
    import sensitivity.sweep

    def never(*args, **kwargs):
        raise AssertionError("a held location must stop the run before anything runs")

    monkeypatch.setattr(sensitivity.sweep, "run_study", never)
    with Lease(tmp_path / "out" / "leased"):
        assert main(["run", str(_study(tmp_path)), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"pid {os.getpid()}" in err and "is in use by another run" in err
        # readers never need the lease; compact is a writer and waits its turn like a run
        assert main(["compact", str(tmp_path / "out" / "leased")]) == 2


def test_cli_run_to_an_unwritable_destination_exits_1_naming_the_path(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["run", str(_study(tmp_path)), "--out", str(tmp_path / "file")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"cannot write {tmp_path / 'file' / 'leased'}" in err


def test_cli_compact(tmp_path, capsys):
    store = ResultsStore(tmp_path)
    store.append([{"trial_id": "a", "status": "ok"}], [{"trial_id": "a", "epoch": 1}])
    assert main(["compact", str(tmp_path)]) == 0
    assert "1 trials in" in capsys.readouterr().out
    assert not list((tmp_path / "parts").iterdir()) and not (tmp_path / LEASE).exists()
