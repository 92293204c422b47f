"""`make gpu-check`: everything that needs a GPU, in one command, printed as one table.

Runs, on the first CUDA device, each step with its own time limit, all under one deadline of
470 s (a step that runs out of time is a FAIL row; the steps after it get what is left). Estimated
on an H200 from the step sizes (torch's start and CUDA's initialisation included):

1. the CUDA tests (every test of the suite that runs only where CUDA is present): about 60 s;
2. `benchmarks/optim_step.py` on CUDA, 20 rounds of 40 optimizers on ResNet-18's 11M parameters
   (a step is about a millisecond there): about 30 s;
3. `benchmarks/fused_throughput.py --cases gpu,members` on CUDA, one round after a warm-up: the GPU
   targets (an MLP on MNIST shapes >= 20x, LeNet-5 >= 10x, ResNet-18 on CIFAR-10 shapes >= 2x) and
   the member-axis cases (K = 32; each optimizer's speed-up >= 0.6x SGD's): about 120 s;
4. an end-to-end fused study (`sensitivity run`, local Ray, one GPU) of LeNet-5 and ResNet-18 on
   synthetic CIFAR-10 shapes: trials/s and the fused arrays it ran: about 60 s;
5. fused against solo agreement on CUDA (float32): statuses equal, minimal losses within 1e-3:
   about 20 s.

Where CUDA is absent it says so and exits 0. `--dry-run` runs the same steps tiny on the CPU, to
check the command itself (about two minutes on a 2-core machine; its figures are not GPU figures,
so only a step that fails or runs out of time is a FAIL there). Exit status 1 when a check fails.
A stopped check (Ctrl-C, SIGTERM, SIGHUP) stops its subprocesses and their children and removes
its temporary folders; a killed one (SIGKILL) takes its subprocesses with it (Linux: they get
SIGTERM when it dies) and its temporary folders are removed by the next check.

    .venv/bin/python benchmarks/gpu_check.py            # or: make gpu-check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEADLINE_S = 470  # the whole check, under 8 minutes
# each step's own limit (s), GPU and --dry-run
LIMITS = {"cuda tests": 120, "optim_step": 60, "fused_throughput": 200, "end-to-end": 100, "agreement": 60}
TEMP_PREFIX = "gpu-check-"


class StepTimeout(Exception):
    """A step ran past its limit."""


class Stopped(BaseException):
    """The check was asked to stop (SIGTERM, SIGHUP): unwinds like Ctrl-C, so every cleanup runs."""


class Table:
    def __init__(self):
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, check: str, result: str, target: str = "", ok: bool | None = None) -> None:
        self.rows.append((check, result, target, "" if ok is None else ("pass" if ok else "FAIL")))
        print(f"  {check}: {result}" + (f" (target {target})" if target else "") +
              ("" if ok is None else f" [{'pass' if ok else 'FAIL'}]"), flush=True)

    def print(self) -> None:
        print("\n| check | result | target | |\n|---|---|---|---|")
        for row in self.rows:
            print("| " + " | ".join(row) + " |")

    @property
    def failed(self) -> bool:
        return any(row[3] == "FAIL" for row in self.rows)


class Clock:
    """The check's deadline: each step gets its own limit or what is left, whichever is less."""

    def __init__(self, total: float):
        self.end = time.monotonic() + total

    def limit(self, step: str) -> float:
        return max(0.1, min(LIMITS[step], self.end - time.monotonic()))


def _prctl():
    """libc's prctl, looked up once here: a child after fork may not import or load a library (this
    process has threads once CUDA is initialised, and a lock held by one of them would never be freed)."""
    with contextlib.suppress(Exception):
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    return None


PRCTL = _prctl()


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when this check dies, however it dies (Linux's PR_SET_PDEATHSIG)."""
    if PRCTL is not None:
        PRCTL(1, signal.SIGTERM)


def _stop(proc: subprocess.Popen) -> None:
    """Stop `proc` and every process it started (Ray's included), SIGTERM first, then SIGKILL."""
    import psutil  # a dependency of Ray's

    with contextlib.suppress(psutil.Error):
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for p in family:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(family, timeout=10)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything left in its process group
    proc.wait()


def run(args: list[str], timeout: float) -> tuple[int, str]:
    """(exit status, stdout and stderr) of `args`; 124 and a message when it runs past `timeout` seconds.
    The process and its children are stopped on a timeout and when this check stops."""
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=_die_with_parent)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:.0f} s"
    finally:
        if proc.poll() is None:
            _stop(proc)


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise StepTimeout in this (main) thread once `seconds` have passed, for steps that run in-process."""
    def expire(*_):
        raise StepTimeout(f"timed out after {seconds:.0f} s")

    before = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


@contextlib.contextmanager
def temp_dir():
    """A temporary folder named after this process; folders of earlier checks that are gone are removed."""
    root = Path(tempfile.gettempdir())
    for old in root.glob(f"{TEMP_PREFIX}*"):
        pid = old.name[len(TEMP_PREFIX):].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def parse_summary(out: str) -> tuple[int, int, int] | None:
    """(trials run, of them in fused arrays, arrays) from `sensitivity run`'s summary line
    ("s: ran 40 trials (...) in 3.1 s; 0 already done; 40 in 5 fused arrays"); None without one."""
    ran = re.search(r"\bran (\d+) trials", out)
    if ran is None:
        return None
    fused = re.search(r"\b(\d+) in (\d+) fused arrays", out)
    return int(ran[1]), int(fused[1]) if fused else 0, int(fused[2]) if fused else 0


def judge_cuda_tests(code: int, out: str) -> tuple[str, bool]:
    """(pytest's summary line, whether it failed) of the CUDA tests' output (`-rs`)."""
    summary = next((line for line in reversed(out.splitlines()) if re.search(r"\d+ (passed|failed|skipped)", line)),
                   out.strip().splitlines()[-1] if out.strip() else "no output")
    # on a GPU a test skipped for want of CUDA ran nothing (CUDA hidden from the tests' process, say):
    # a failure too (a CPU-only test skips there for another reason, "this machine has a GPU")
    no_cuda = sum(int(m.group(1)) for m in re.finditer(r"^SKIPPED \[(\d+)\] .*CUDA", out, re.M))
    failed = code not in (0, 5) or "failed" in summary or "error" in summary or "passed" not in summary
    return summary.strip("= ") + (f" ({no_cuda} for want of CUDA)" if no_cuda else ""), failed or no_cuda > 0


def cuda_tests(table: Table, clock: Clock, dry: bool) -> None:
    selection = ["tests", "-k", "cuda", "-m", "not exhaustive", "-rs"]  # every test with cuda in its name
    code, out = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection],
                    clock.limit("cuda tests"))
    summary, failed = judge_cuda_tests(code, out)
    # without CUDA the tests skip: a dry run only checks that pytest ran them in time
    table.add("CUDA tests", summary, "all pass", (None if code in (0, 5) else False) if dry else not failed)


def optim_steps(table: Table, clock: Clock, device: str, dry: bool) -> None:
    settings = ["--repeats", "2", "--warmup", "1", "--only", "adam-hd"] if dry else ["--repeats", "20"]
    code, out = run([sys.executable, "benchmarks/optim_step.py", "--device", device, *settings],
                    clock.limit("optim_step"))
    rows = [line for line in out.splitlines() if line.startswith("| ") and "|" in line[2:]]
    misses = [line.split("|")[1].strip() for line in rows if "FAIL" in line]
    passes = sum("pass" in line for line in rows)
    if code != 0 or not rows:
        table.add(f"optim_step.py ({device})", f"exit {code}: {' '.join(out.split())[-300:]}", "runs", False)
        return
    table.add(f"optim_step.py ({device})", f"{passes} targets pass, {len(misses)} missed"
              + (f" ({', '.join(misses)})" if misses else ""), "every target",
              None if dry else not misses)  # CPU timings here only check the command


def fused_throughput(table: Table, clock: Clock, device: str, dry: bool, tmp: Path) -> None:
    """The GPU targets and the member-axis cases, as `benchmarks/fused_throughput.py` measures them."""
    path = tmp / "fused_throughput.json"
    code, out = run([sys.executable, "benchmarks/fused_throughput.py", "--device", device, "--cases", "gpu,members",
                     "--rounds", "1", "--json", str(path), *(["--smoke"] if dry else [])], clock.limit("fused_throughput"))
    if code != 0 or not path.exists():
        table.add("fused_throughput.py", f"exit {code}: {' '.join(out.split())[-300:]}", "runs", False)
        return
    results = json.loads(path.read_text())
    for r in results["cases"]:
        if r["target"] is not None:
            table.add(f"fused/solo, {r['case']}, K={r['K']}", f"{r['wall']:.1f}x ({r['fused_trials_per_s']:.1f} "
                      f"against {r['solo_trials_per_s']:.1f} trials/s)", f">= {r['target']:g}x",
                      None if dry else r["target_met"])
    sgd = next(r for r in results["cases"] if r["case"] == "k32-sgd")
    table.add(f"fused/solo, k32-sgd, K={sgd['K']}", f"{sgd['wall']:.1f}x", "reference of the member axis")
    for m in results["members"]:
        table.add(f"fused/solo, {m['case']} / k32-sgd's", f"{m['wall_multiple']:.2f} ({m['wall']:.1f}x)", ">= 0.6",
                  None if dry else m["met"])


def end_to_end(table: Table, clock: Clock, dry: bool, tmp: Path) -> None:
    size = {"train_size": 64, "test_size": 32} if dry else {"train_size": 2048, "test_size": 512}
    study = {"name": "gpu-check", "description": "make gpu-check: LeNet-5 and ResNet-18, synthetic CIFAR-10 shapes",
             "task": {"dataset": "synthetic", "dataset_args": {"shape": [3, 32, 32], **size}, "model": "lenet5",
                      "batch_size": 128, "epochs": 1 if dry else 3},
             "seeds": 2 if dry else 4, "fuse": "auto", "resources": {"cpu": 1, "gpu": 0 if dry else 1},
             "optimizers": [{"name": "sgd", "lr": [0.01, 0.1] if dry else [0.003, 0.01, 0.03, 0.1, 0.3]},
                            {"name": "adam-hd", "lr": [1e-3] if dry else [1e-4, 1e-3, 1e-2]},
                            {"name": "sgdn", "label": "sgdn-resnet18", "lr": [0.01] if dry else [0.01, 0.1],
                             "task": {"model": "resnet18", **({"batch_size": 16} if dry else {})}}]}
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    start = time.perf_counter()
    code, out = run([str(BIN / "sensitivity"), "run", str(path), "--out", str(tmp / "out")], clock.limit("end-to-end"))
    elapsed = time.perf_counter() - start
    parsed = parse_summary(out)
    if code != 0 or parsed is None:
        table.add("end-to-end fused study", f"exit {code}: {' '.join(out.split())[-300:]}", "runs", False)
        return
    ran, fused, n_arrays = parsed
    # on the CPU (--dry-run) `auto` runs ResNet-18 alone, so only a GPU run must fuse both models
    table.add("end-to-end fused study (LeNet-5, ResNet-18)", f"{ran} trials in {elapsed:.0f} s "
              f"({ran / elapsed:.1f} trials/s), {fused} of them in {n_arrays} fused arrays", "runs, fuses",
              ran > 0 and (dry or fused == ran))


@contextlib.contextmanager
def exact_float32():
    """TF32 off for cuDNN convolutions and CUDA matmuls, restored after."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def agreement(table: Table, clock: Clock, device: str, dry: bool) -> None:
    from sensitivity.fused import run_fused
    from sensitivity.train import run_trial

    worst, statuses, compared = 0.0, True, 0
    # TF32 (cuDNN's default for convolutions) rounds to 10 mantissa bits, and the grouped and the solo
    # convolutions take different kernels: what is compared is float32 against float32
    with time_limit(clock.limit("agreement")), exact_float32():
        for model, shape in (("mlp", [1, 28, 28]), ("resnet18", [3, 32, 32])):
            base = {"dataset": "synthetic", "dataset_args": {"shape": shape, "train_size": 64 if dry else 1024,
                                                             "test_size": 32 if dry else 256},
                    "model": model, "optimizer": "adam-hd", "batch_size": 16 if dry else 64,
                    "epochs": 1 if dry else 2, "device": device}
            configs = [{**base, "lr": lr, "seed": s} for lr in (1e-3, 1e-2, 10.0) for s in ((0,) if dry else (0, 1))]
            for cfg, fused in zip(configs, run_fused(configs)):
                solo = run_trial(cfg)
                statuses &= fused.row["status"] == solo.row["status"]
                # float32 round-off grows without bound once a trial blows up (lr 10, or a test loss far
                # above its start), so only trials that stayed near their starting loss are compared
                if solo.row["status"] == "ok" and solo.row["min_test_loss"] <= 2 * solo.row["init_test_loss"]:
                    compared += 1
                    for key in ("min_train_loss", "min_test_loss"):
                        a, b = fused.row[key], solo.row[key]
                        worst = max(worst, abs(a - b) / max(abs(b), 1e-12))
    table.add(f"fused vs solo ({device}, float32)", f"statuses {'equal' if statuses else 'DIFFER'}, "
              f"largest relative difference of minimal losses {worst:.1e} ({compared} stable trials)", "equal, <= 1e-3",
              statuses and compared > 0 and worst <= 1e-3)


def _raise_stopped(signum, _frame):
    raise Stopped(signal.Signals(signum).name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the same steps, tiny, on the CPU")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.dry_run:
        print("gpu-check: no CUDA device here (torch sees none); nothing to measure")
        return 0
    dry = args.dry_run
    device = "cpu" if dry else "cuda"
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        print(f"gpu-check on {props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}")
    else:
        print("gpu-check --dry-run: the steps on the CPU, tiny (not GPU figures)")
        torch.set_num_threads(1)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_stopped)
    table, clock, started = Table(), Clock(DEADLINE_S), time.perf_counter()
    try:
        with temp_dir() as tmp:
            for step in (lambda: cuda_tests(table, clock, dry), lambda: optim_steps(table, clock, device, dry),
                         lambda: fused_throughput(table, clock, device, dry, tmp),
                         lambda: end_to_end(table, clock, dry, tmp), lambda: agreement(table, clock, device, dry)):
                try:
                    step()
                except Exception as exc:  # one failed step is a FAIL row; the others still run
                    table.add("step failed", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}", "", False)
    except (KeyboardInterrupt, Stopped) as exc:
        table.add("gpu-check stopped", type(exc).__name__ if isinstance(exc, KeyboardInterrupt) else str(exc), "", False)
    elapsed = time.perf_counter() - started
    table.add("gpu-check", f"{elapsed:.0f} s", "< 480 s", elapsed < 480)
    table.print()
    return 1 if table.failed else 0


if __name__ == "__main__":
    sys.exit(main())
