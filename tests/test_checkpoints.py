"""Checkpoints of long trials: an errored trial keeps its own, the mirror says when uploads fail.

Each runs on a local folder and on the local S3 server (`s3`, tests/conftest.py), where the
worker mirrors its checkpoints. Budget: a few seconds; no Ray (the Recorder callback is driven directly).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from sensitivity import loop, solo
from sensitivity.progress import Progress
from sensitivity.record import TrialRecord
from sensitivity.results import ResultsStore
from sensitivity.storage import join, resolve
from sensitivity.sweep import worker
from sensitivity.sweep.tuner import Recorder, summarize
from sensitivity.sweep.worker import Mirror, Unit, payload, run_one, run_unit

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIG = {"study": "s", "dataset": "digits", "model": "mlp", "model_args": {"hidden": [8]},
          "dataset_args": {}, "batch_size": 256, "epochs": 3, "optimizer": "sgd", "lr": 0.1, "seed": 0}
RECORD = TrialRecord.from_config(CONFIG)


def _record(recorder: Recorder, row: dict, curve: list) -> None:
    recorder.on_trial_result(0, [], None, {"payload": payload([row], curve)})


def _files(location: str) -> dict[str, bytes]:
    """Name -> bytes of the files in a folder, a local path or a URI ({} when there is none)."""
    fs, path = resolve(location)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    found = {}
    for info in infos:
        with fs.open_input_stream(info.path) as handle:
            found[info.base_name] = handle.read()
    return found


def _write(location: str, data: bytes) -> None:
    fs, path = resolve(location)
    with fs.open_output_stream(path) as handle:
        handle.write(data)


@pytest.fixture(params=["local", "s3"])
def remote(request, tmp_path):
    """A checkpoint root: a local folder (trials write there), or a URI (the worker mirrors a local folder)."""
    if request.param == "local":
        return str(tmp_path / "checkpoints")
    return request.getfixturevalue("s3").uri(f"{tmp_path.name}/checkpoints")


def test_an_errored_trial_keeps_its_checkpoint_and_a_retry_resumes_from_it(tmp_path, monkeypatch, remote):
    checkpoints = remote
    evaluate = solo.evaluate
    calls = {"evaluate": 0, "epochs": 0}

    def flaky(*args, **kwargs):  # a transient failure (a CUDA OOM, a lost upload) in epoch 2
        calls["evaluate"] += 1
        if calls["evaluate"] == 3:  # the 1st scores the initial model (L0), the 2nd epoch 1
            raise RuntimeError("CUDA out of memory (simulated)")
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(solo, "evaluate", flaky)
    row, curve = run_one(RECORD, checkpoints)
    assert row["status"] == "error" and "out of memory" in row["error"]
    store = ResultsStore(tmp_path / "s")
    recorder = Recorder(store, Progress(1, quiet=True), str(checkpoints))
    _record(recorder, row, curve)
    assert list(_files(checkpoints)) == [f"{RECORD.trial_id}.pt"], "the errored trial's checkpoint must survive"

    # --retry-errors: the driver drops the error rows, and the trial runs again
    store.drop(store.trials.loc[store.trials["status"] == "error", "trial_id"])
    monkeypatch.setattr(solo, "evaluate", evaluate)
    train_epoch = loop._Epochs.epoch

    def counted(*args, **kwargs):
        calls["epochs"] += 1
        return train_epoch(*args, **kwargs)

    monkeypatch.setattr(loop._Epochs, "epoch", counted)
    row, curve = run_one(RECORD, checkpoints)
    assert row["status"] == "ok" and [c["epoch"] for c in curve] == [1, 2, 3]
    assert calls["epochs"] == 2  # epochs 2 and 3: epoch 1 came from the checkpoint
    _write(join(checkpoints, f"{RECORD.trial_id}.pt"), b"as a mirror's remote copy would still hold it")
    _record(recorder, row, curve)
    assert not _files(checkpoints)  # a finished trial's checkpoint is removed
    assert list(store.trials["status"]) == ["ok"]


class _ReadOnly:
    """A filesystem that refuses every write, like a bucket without write permission."""

    def create_dir(self, *args, **kwargs):
        raise PermissionError("AccessDenied: s3://bucket/ckpt is read-only")

    open_output_stream = create_dir


def test_mirror_failures_are_counted_warned_once_and_summarised(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(worker, "CHECKPOINT_SYNC_S", 3600.0)
    mirror = Mirror(f"file://{tmp_path / 'remote'}", ["t.pt"])
    mirror.fs = _ReadOnly()
    (Path(mirror.local) / "t.pt").write_bytes(b"epoch 1")
    mirror.sync()
    mirror.sync()
    mirror.close()
    assert mirror.failures == 3 and "AccessDenied" in mirror.error
    warned = [line for line in capsys.readouterr().err.splitlines() if "checkpoint upload" in line]
    assert len(warned) == 1

    store = ResultsStore(tmp_path / "s")
    recorder = Recorder(store, Progress(1, quiet=True))
    row = {"trial_id": "a", "status": "ok", worker.MIRROR_KEY: mirror.report()}
    _record(recorder, row, [])
    assert worker.MIRROR_KEY not in store.trials.columns  # never a column of the table
    summary = summarize(store, 1, 0, recorder, 0.0, 1, [], 0)
    assert summary.mirror_failures == 3 and "AccessDenied" in summary.mirror_error


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_mirror_uploads_only_files_that_changed(tmp_path, monkeypatch, request, kind):
    monkeypatch.setattr(worker, "CHECKPOINT_SYNC_S", 3600.0)
    remote = (f"file://{tmp_path / 'remote'}" if kind == "file"
              else request.getfixturevalue("s3").uri(f"{tmp_path.name}/remote"))
    mirror = Mirror(remote, ["t.pt"])
    local = Path(mirror.local)
    (local / "t.pt").write_bytes(b"epoch 1")
    (local / "t.pt.tmp-1234").write_bytes(b"half")  # a checkpoint being written is not sent
    mirror.sync()
    mirror.sync()
    assert mirror.uploads == 1 and _files(remote) == {"t.pt": b"epoch 1"}
    (local / "t.pt").write_bytes(b"epoch 2 state")
    mirror.sync()
    mirror.close()
    assert mirror.uploads == 2 and _files(remote) == {"t.pt": b"epoch 2 state"}
    assert mirror.failures == 0 and mirror.report() is None
    # a retried trial starts from the remote copy, and does not send it back unchanged
    again = Mirror(remote, ["t.pt", "u.pt"])
    again.sync()
    assert again.uploads == 0 and json.dumps(again.report()) == "null"
    assert sorted(p.name for p in Path(again.local).iterdir()) == ["t.pt"]  # only the unit's own files
    assert (Path(again.local) / "t.pt").read_bytes() == b"epoch 2 state"
    again.close()


def test_run_reports_mirror_failures_and_stale_rows(tmp_path, monkeypatch, capsys):
    import yaml

    import sensitivity.sweep
    from sensitivity.cli import main
    from sensitivity.sweep.tuner import Summary

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "task": {"dataset": "digits", "model": "mlp"},
                                    "optimizers": [{"name": "sgd", "lr": 0.1}]}))
    summary = Summary(location="x", trials_path="x/trials.parquet", curves_path="x/curves.parquet", total=1,
                      skipped=1, stale=3, mirror_failures=2, mirror_error="PermissionError: AccessDenied")
    monkeypatch.setattr(sensitivity.sweep, "run_study", lambda study, **kwargs: summary)
    assert main(["run", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "3 stale rows" in out and "include_stale=True" in out
    assert "2 checkpoint upload(s) failed" in err and "AccessDenied" in err


def test_an_arrays_failed_uploads_reach_the_summary_once(tmp_path, monkeypatch):
    class ReadOnlyMirror(Mirror):
        def __init__(self, location, names):
            super().__init__(location, names)
            self.fs = _ReadOnly()

    monkeypatch.setattr(worker, "Mirror", ReadOnlyMirror)
    monkeypatch.setattr(worker, "CHECKPOINT_SYNC_S", 0.001)  # uploads while the array trains
    records = [TrialRecord.from_config({**CONFIG, "lr": lr, "epochs": 8}) for lr in (0.05, 0.1)]
    (rows, curves), = run_unit(Unit(records, [{}, {}], fused=True), f"file://{tmp_path / 'remote'}")
    assert [row["status"] for row in rows] == ["ok", "ok"]
    assert sum(worker.MIRROR_KEY in row for row in rows) == 1  # counted once for the array
    store = ResultsStore(tmp_path / "s")
    recorder = Recorder(store, Progress(2, quiet=True))
    recorder.on_trial_result(0, [], None, {"payload": payload(rows, curves)})
    summary = summarize(store, 2, 0, recorder, 0.0, 1, [], 0)
    assert summary.ran == 2 and summary.fused == 2 and summary.arrays == 1
    assert summary.mirror_failures >= 1 and "AccessDenied" in summary.mirror_error


def test_a_tasks_rows_and_its_checkpoint_go_in_two_results(monkeypatch):
    """Tune keeps a checkpoint's result in the experiment state it writes again and again: the rows'
    payload goes in the result before it, so that state stays small (and the checkpoint names only
    trials the driver already holds)."""
    calls = []
    monkeypatch.setattr(worker.tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(worker.tune, "report",
                        lambda metrics, checkpoint=None: calls.append((metrics, checkpoint is not None)))
    reported = worker.Reported(3)
    reported.report({"payload": "the rows", "trials": 2}, [{"trial_id": "a"}, {"trial_id": "b"}])
    assert calls == [({"payload": "the rows", "trials": 2}, False), ({"trials": 0}, True)]
    assert "a" in reported and "b" in reported
