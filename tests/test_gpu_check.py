"""benchmarks/gpu_check.py (`make gpu-check`) reads the CLI's summary line, fails a step that runs out of
time, and leaves no process or temporary folder behind. Without Ray or a GPU; a few seconds."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import pytest

from sensitivity.cli import main
from sensitivity.sweep.tuner import Summary

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)

STUDY = "name: s\ntask: {dataset: digits, model: logreg, epochs: 1}\nseeds: 2\noptimizers:\n  - {name: sgd, lr: [0.1, 0.01]}\n"


@pytest.mark.parametrize("fused, arrays, alone", [(40, 5, 4), (0, 0, 44), (44, 6, 0)])
def test_the_summary_line_the_cli_prints_is_parsed(fused, arrays, alone, tmp_path, capsys, monkeypatch):
    import sensitivity.sweep

    path = tmp_path / "s.yaml"
    path.write_text(STUDY)
    summary = Summary(location="l", trials_path="t", curves_path="c", total=44, skipped=0, ran=44, fused=fused,
                      arrays=arrays, bundle=2)
    monkeypatch.setattr(sensitivity.sweep, "run_study", lambda study, **kwargs: summary)
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert ("fused arrays" in out) == (fused > 0) and ("alone" in out) == (alone > 0)
    assert gpu_check.parse_summary(out) == (44, fused, arrays)
    assert gpu_check.parse_summary("s: nothing to run; all 4 trials are in") is None


def test_a_timed_out_command_is_stopped_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    script = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
              f" open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    start = time.monotonic()
    code, out = gpu_check.run([sys.executable, "-c", script], timeout=3)
    assert code == 124 and "timed out" in out and time.monotonic() - start < 20
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(child)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_step_past_its_limit_is_a_failure_even_in_a_dry_run(monkeypatch):
    monkeypatch.setattr(gpu_check, "LIMITS", {step: 0.1 for step in gpu_check.LIMITS})
    table, clock = gpu_check.Table(), gpu_check.Clock(60)
    gpu_check.cuda_tests(table, clock, dry=True)
    gpu_check.optim_steps(table, clock, "cpu", dry=True)
    assert [row[3] for row in table.rows] == ["FAIL", "FAIL"]
    with pytest.raises(gpu_check.StepTimeout):
        with gpu_check.time_limit(0.1):
            time.sleep(5)
    monkeypatch.undo()  # the real limits: a spent deadline still leaves each step its 0.1 s floor
    assert gpu_check.Clock(0).limit("agreement") == pytest.approx(0.1)
    assert gpu_check.Clock(1000).limit("agreement") == gpu_check.LIMITS["agreement"]


def test_temporary_folders_are_removed_and_those_of_dead_checks_too(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check.tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / f"{gpu_check.TEMP_PREFIX}{2**22 + 1}-abc"  # above Linux's largest pid
    live = tmp_path / f"{gpu_check.TEMP_PREFIX}{os.getppid()}-abc"
    dead.mkdir(), live.mkdir()
    with gpu_check.temp_dir() as tmp:
        assert tmp.is_dir() and tmp.parent == tmp_path
    assert not tmp.exists() and not dead.exists() and live.exists()


def test_cuda_tests_pass_only_when_they_ran_on_cuda():
    ran = "...\nSKIPPED [2] tests/test_cli.py:110: this machine has a GPU\n== 70 passed, 2 skipped in 50s =="
    assert gpu_check.judge_cuda_tests(0, ran) == ("70 passed, 2 skipped in 50s", False)
    hidden = "SKIPPED [48] tests/optim/test_hd.py:31: needs CUDA\n== 20 passed, 48 skipped in 9s =="
    assert gpu_check.judge_cuda_tests(0, hidden) == ("20 passed, 48 skipped in 9s (48 for want of CUDA)", True)
    assert gpu_check.judge_cuda_tests(1, "== 1 failed, 69 passed in 50s ==")[1]
    assert gpu_check.judge_cuda_tests(5, "== no tests ran in 3s ==")[1]
