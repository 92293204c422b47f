"""`sensitivity run` tells the truth: errors, nothing to do, missing data, an unreachable --address; flags.

In-process and without Ray (run_study and ray.init are replaced where a test needs them); one
subprocess checks which heavy modules the quick commands import. Budget: a few seconds.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import pandas as pd
import pytest

from sensitivity import __version__
from sensitivity.cli import main
from sensitivity.results import ResultsStore, trial_id
from sensitivity.study import load_study
from sensitivity.sweep.tuner import Summary, failures

STUDY = "name: s\ntask: {dataset: digits, model: logreg, epochs: 1}\nseeds: 2\noptimizers:\n  - {name: sgd, lr: [0.1, 0.01]}\n"


@pytest.fixture
def study_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(STUDY)
    return path


def _fill(study_file, out, statuses):
    """Store one row per trial of the study, with the given statuses in order."""
    configs = load_study(study_file).trials()
    rows = [{"trial_id": trial_id(c), "status": s, "error": "FileNotFoundError: gone" if s == "error" else None}
            for c, s in zip(configs, statuses)]
    ResultsStore(out / "s").append(rows, [])
    return configs


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if anything tries to start or join Ray."""
    from sensitivity.sweep import cluster

    def refuse(*args, **kwargs):
        raise AssertionError("Ray must not start")

    monkeypatch.setattr(cluster.ray, "init", refuse)


def test_abbreviated_flags_are_errors_and_version_prints(study_file, capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", str(study_file), "--smok"])
    assert info.value.code == 2
    assert "unrecognized arguments: --smok" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"sensitivity {__version__}"


def test_nothing_left_returns_without_ray_and_names_earlier_errors(study_file, tmp_path, capsys, no_ray):
    out = tmp_path / "out"
    _fill(study_file, out, ["ok", "error", "error", "ok"])
    assert main(["run", str(study_file), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "nothing to run; all 4 trials are in" in captured.out
    assert "2 trial(s) errored in an earlier run" in captured.err and "--retry-errors runs them" in captured.err


def test_nothing_left_still_relabels_a_renamed_entry_without_ray(study_file, tmp_path, capsys, no_ray):
    import json

    out = tmp_path / "out"
    _fill(study_file, out, ["ok"] * 4)
    study_file.write_text(STUDY.replace("{name: sgd,", "{name: sgd, label: plain, weight_decay: 0,"))
    assert main(["run", str(study_file), "--out", str(out)]) == 0
    assert "nothing to run; all 4 trials are in" in capsys.readouterr().out
    assert set(json.loads((out / "s" / "current.json").read_text())["trials"].values()) == {"plain"}
    assert "label: plain" in (out / "s" / "study.yaml").read_text() and not (out / "s" / "lease.json").exists()


def test_an_errored_trial_of_this_run_exits_1_with_each_distinct_error(study_file, tmp_path, capsys, monkeypatch):
    import sensitivity.sweep

    rows = [{"trial_id": "a", "status": "error", "error": "FileNotFoundError: mnist:\n /x not found"},
            {"trial_id": "b", "status": "ok"}, {"trial_id": "c", "status": "error", "error": "ValueError: v"},
            {"trial_id": "d", "status": "error", "error": "FileNotFoundError: mnist: /x not found"}]
    assert failures(rows) == [("FileNotFoundError: mnist: /x not found", 2, "a"), ("ValueError: v", 1, "c")]
    summary = Summary(location="l", trials_path="t", curves_path="c", total=4, skipped=0, ran=4, errored=3,
                      failures=failures(rows))
    monkeypatch.setattr(sensitivity.sweep, "run_study", lambda study, **kwargs: summary)
    assert main(["run", str(study_file), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["sensitivity: 2 trial(s) errored (e.g. trial a): FileNotFoundError: mnist: /x not found",
                   "sensitivity: 1 trial(s) errored (e.g. trial c): ValueError: v"]
    summary.errored, summary.failures = 0, []
    assert main(["run", str(study_file), "--out", str(tmp_path / "out")]) == 0


def test_missing_dataset_files_stop_a_local_run_before_ray_and_validate_warns(tmp_path, capsys, no_ray,
                                                                             monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    empty = tmp_path / "data"
    empty.mkdir()
    path = tmp_path / "m.yaml"
    path.write_text(f"name: m\ntask: {{dataset: mnist, model: logreg, data_dir: {empty}}}\n"
                    f"optimizers:\n  - {{name: sgd, lr: 0.1}}\n")
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    for part in ("dataset mnist", str(empty / "MNIST" / "raw"), "data_dir", "SENSITIVITY_DATA", "download: true"):
        assert part in err, err
    assert not (tmp_path / "out" / "m").exists()
    assert main(["validate", str(path)]) == 0  # a cluster's workers may hold the files
    captured = capsys.readouterr()
    assert captured.out.startswith("m: valid") and "warning: dataset mnist" in captured.err
    assert main(["validate", str(path), "--smoke"]) == 0  # smoke runs use synthetic stand-ins
    assert "warning" not in capsys.readouterr().err


def test_an_unreachable_address_fails_in_bounded_time_with_one_line(study_file, tmp_path, capsys, monkeypatch):
    # no traffic: ray.init is replaced by a call that never returns, as Ray's own does for a dead address
    from sensitivity.sweep import cluster

    release = threading.Event()
    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster.ray, "init", lambda **kwargs: release.wait(30))
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 0.2)
    try:
        assert main(["run", str(study_file), "--out", str(tmp_path / "out"), "--address", "10.9.8.7:6379"]) == 1
    finally:
        release.set()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no Ray cluster answered at 10.9.8.7:6379 within 0.2 s" in err


def test_a_failing_ray_init_is_one_line_naming_the_address(monkeypatch):
    from sensitivity.sweep import cluster

    def fail(**kwargs):
        raise ConnectionError("Could not find any running Ray instance.\nPlease specify the one to connect to")

    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster.ray, "init", fail)
    with pytest.raises(cluster.ClusterUnreachable, match="cannot join the Ray cluster at auto: Could not find") as info:
        cluster.connect("auto", timeout_s=5)
    assert "\n" not in str(info.value)


def test_plot_of_a_table_path_an_empty_table_and_an_all_errored_table(tmp_path, capsys):
    results = tmp_path / "s"
    results.mkdir()
    pd.DataFrame({"trial_id": pd.Series(dtype=str)}).to_parquet(results / "trials.parquet")
    assert main(["plot", str(results / "trials.parquet")]) == 2
    assert "has no finished trials yet" in capsys.readouterr().err
    pd.DataFrame({"trial_id": ["a", "b"], "status": ["error", "error"], "optimizer": "sgd",
                  "error": ["FileNotFoundError: mnist: /x not found", "other"]}).to_parquet(results / "trials.parquet")
    assert main(["plot", str(results)]) == 2
    assert capsys.readouterr().err.strip() == "sensitivity: all 2 trials errored: FileNotFoundError: mnist: /x not found"


def test_a_uri_pyarrow_cannot_use_is_one_line_and_exit_2_for_run_compact_and_plot(study_file, capsys, no_ray):
    for argv in (["run", str(study_file), "--storage", "foo://b/x"], ["compact", "s3://b/x?bogus=1"],
                 ["plot", "s3://b/x?bogus=1"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"cannot use {argv[-1]}: " in err, err
        assert "expected s3://bucket/path, gs://bucket/path or file:///path" in err


def test_validate_optimizers_an_idle_run_and_plot_import_neither_torch_nor_ray(study_file, tmp_path):
    out = tmp_path / "out"
    _fill(study_file, out, ["ok"] * 4)
    script = (f"import sys\nfrom sensitivity.cli import main\n"
              f"assert main(['validate', {str(study_file)!r}]) == 0\n"
              f"assert main(['optimizers']) == 0\n"
              f"assert main(['run', {str(study_file)!r}, '--out', {str(out)!r}]) == 0\n"
              f"import analysis.report\n"  # what `plot` draws with
              f"heavy = sorted(m for m in ('torch', 'ray') if m in sys.modules)\n"
              f"assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_an_optimizers_own_range_check_stops_run_before_any_trial(tmp_path, capsys, monkeypatch):
    # validate checks names, keys and types without torch; the optimizer's ranges need it: run asks
    # while Ray starts, and stops the Ray it started
    import ray

    from sensitivity.sweep import driver

    stopped = []
    monkeypatch.setattr(driver, "connect", lambda address, timeout_s=None: True)  # (no real Ray in this test)
    monkeypatch.setattr(ray, "shutdown", lambda: stopped.append(True))
    path = tmp_path / "b.yaml"
    path.write_text("name: b\ntask: {dataset: digits, model: logreg}\noptimizers:\n"
                    "  - {name: adam, lr: 0.1, betas: [1.5, 0.9]}\n")
    assert main(["validate", str(path)]) == 0
    capsys.readouterr()
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "sensitivity: optimizers[0].betas[0] must be in [0, 1), got 1.5"
    assert not (tmp_path / "out").exists() and stopped == [True]


def test_pending_counts_search_points_still_short_of_seeds(tmp_path):
    from sensitivity.preflight import pending

    path = tmp_path / "o.yaml"
    path.write_text("name: o\ntask: {dataset: digits, model: logreg}\nseeds: 2\n"
                    "optimizers:\n  - {name: sgd-hd}\n  - {name: adam-hd}\n"
                    "search: {trials: 2, space: {lr: {low: 1.0e-4, high: 1.0, log: true}}}\n")
    study = load_study(path)
    store = ResultsStore(tmp_path / "out" / "o")
    assert pending(study, store).left == 8
    from sensitivity.sweep.points import point_text

    def rows(entry: int, lr: float, seeds=(0, 1), status="ok", position=None):
        # rows as a run stores them: real trial ids, the point as its values; matched by
        # configuration, whatever entry position the row recorded
        values = {"lr": lr}
        configs = [c for c in study.search_configs(entry, values) if c.seed in seeds]
        return [{"trial_id": trial_id(c), "status": status, "search_point": point_text(values),
                 "search_entry": entry if position is None else position} for c in configs]

    # entry 0: point 0.1 on both seeds, point 0.01 on one; entry 1: both points, one seed errored
    store.append(rows(0, 0.1) + rows(0, 0.01, seeds=(0,)) + rows(1, 0.1, position=0)
                 + rows(1, 0.01, seeds=(0,)) + rows(1, 0.01, seeds=(1,), status="error"), [])
    todo = pending(study, store)
    assert (todo.total, todo.left, todo.errored) == (8, 2, 1)
    assert pending(study, store, retry_errors=True).left == 4  # point d needs both seeds again
