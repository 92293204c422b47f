"""`make gpu-check`: everything that needs a GPU, in one command, printed as one table.

Runs, on the first CUDA device, each step with its own time limit (all of them well under 8 minutes
on a current GPU):

1. the CUDA tests (every test of the suite that runs only where CUDA is present);
2. `benchmarks/optim_step.py` on CUDA: every optimizer's step time against torch's foreach ones;
3. `benchmarks/fused_throughput.py`-style arrays on CUDA: fused against solo trials/s for an MLP on
   MNIST shapes (target >= 20x), LeNet-5 (>= 10x) and ResNet-18 on CIFAR-10 shapes (>= 2x);
4. an end-to-end fused study (`sensitivity run`, local Ray, one GPU) of LeNet-5 and ResNet-18 on
   synthetic CIFAR-10 shapes: trials/s and the fused arrays it ran;
5. fused against solo agreement on CUDA (float32): statuses equal, minimal losses within 1e-3.

Where CUDA is absent it says so and exits 0. `--dry-run` runs the same steps tiny on the CPU, to
check the command itself (its figures are not GPU figures). Exit status 1 when a check fails.

    .venv/bin/python benchmarks/gpu_check.py            # or: make gpu-check
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# (case, model, dataset_args, model_args, batch, members, target)
ARRAYS = [
    ("MLP 2x1000, MNIST shapes", "mlp", {"shape": [1, 28, 28], "train_size": 4096, "test_size": 512},
     {"hidden": [1000, 1000]}, 128, 32, 20.0),
    ("LeNet-5, MNIST shapes", "lenet5", {"shape": [1, 28, 28], "train_size": 4096, "test_size": 512}, {}, 128, 32,
     10.0),
    ("ResNet-18, CIFAR-10 shapes", "resnet18", {"shape": [3, 32, 32], "train_size": 2048, "test_size": 256}, {},
     128, 8, 2.0),
]


def _shrink(dataset_args: dict, members: int, dry: bool) -> tuple[dict, int]:
    if not dry:
        return dataset_args, members
    return {**dataset_args, "train_size": 64, "test_size": 32}, 2


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


def _run(args: list[str], timeout: float) -> tuple[int, str]:
    try:
        proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        return proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        return 124, f"timed out after {timeout:.0f} s: {exc}"


def cuda_tests(table: Table, dry: bool) -> None:
    selection = ["tests/fused/test_fused_cuda.py", "tests/optim", "-k", "cuda"]
    code, out = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection], 300)
    summary = next((line for line in reversed(out.splitlines()) if re.search(r"\d+ (passed|failed|skipped)", line)),
                   out.strip().splitlines()[-1] if out.strip() else "no output")
    failed = code not in (0, 5) or "failed" in summary or "error" in summary
    table.add("CUDA tests", summary.strip("= "), "all pass", None if dry else not failed)


def optim_steps(table: Table, device: str) -> None:
    code, out = _run([sys.executable, "benchmarks/optim_step.py", "--device", device, "--repeats", "20"], 300)
    rows = [line for line in out.splitlines() if line.startswith("| ") and "|" in line[2:]]
    misses = [line.split("|")[1].strip() for line in rows if "FAIL" in line]
    passes = sum("pass" in line for line in rows)
    table.add(f"optim_step.py ({device})", f"{passes} targets pass, {len(misses)} missed"
              + (f" ({', '.join(misses)})" if misses else ""), "every target",
              None if device == "cpu" else code == 0 and not misses)  # CPU timings here only check the command


def _timed(fn) -> float:
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    return time.perf_counter() - start


def arrays(table: Table, device: str, dry: bool) -> None:
    from sensitivity.fused import run_fused
    from sensitivity.train import run_trial

    for case, model, dataset_args, model_args, batch, members, target in ARRAYS:
        dataset_args, members = _shrink(dataset_args, members, dry)
        configs = [{"dataset": "synthetic", "dataset_args": dataset_args, "model": model, "model_args": model_args,
                    "optimizer": "sgdn", "lr": 0.01 * (1 + k % 4), "seed": k, "batch_size": batch, "epochs": 1,
                    "device": device} for k in range(members)]
        run_fused(configs[:2]), run_trial(configs[0])  # warm-up: data cached, kernels chosen
        fused = statistics.median(_timed(lambda: run_fused(configs)) for _ in range(2))
        solo_each = statistics.median(_timed(lambda c=c: run_trial(c)) for c in configs[:min(4, members)])
        ratio = solo_each * members / fused
        table.add(f"fused/solo, {case}, K={members}", f"{ratio:.1f}x ({members / fused:.1f} against "
                  f"{1 / solo_each:.1f} trials/s)", f">= {target:g}x", None if dry else ratio >= target)


def end_to_end(table: Table, dry: bool) -> None:
    size = {"train_size": 64, "test_size": 32} if dry else {"train_size": 2048, "test_size": 512}
    study = {"name": "gpu-check", "description": "make gpu-check: LeNet-5 and ResNet-18, synthetic CIFAR-10 shapes",
             "task": {"dataset": "synthetic", "dataset_args": {"shape": [3, 32, 32], **size}, "model": "lenet5",
                      "batch_size": 128, "epochs": 1 if dry else 3},
             "seeds": 2 if dry else 4, "fuse": "auto", "resources": {"cpu": 1, "gpu": 0 if dry else 1},
             "optimizers": [{"name": "sgd", "lr": [0.01, 0.1] if dry else [0.003, 0.01, 0.03, 0.1, 0.3]},
                            {"name": "adam-hd", "lr": [1e-3] if dry else [1e-4, 1e-3, 1e-2]},
                            {"name": "sgdn", "label": "sgdn-resnet18", "lr": [0.01] if dry else [0.01, 0.1],
                             "task": {"model": "resnet18"}}]}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        path = Path(tmp) / "study.yaml"
        path.write_text(yaml.safe_dump(study))
        start = time.perf_counter()
        code, out = _run([str(BIN / "sensitivity"), "run", str(path), "--out", tmp], 300)
        elapsed = time.perf_counter() - start
        match = re.search(r"ran (\d+) trials[^;\n]*(?:; (\d+) in (\d+) fused arrays)?", out)
        if code != 0 or match is None:
            table.add("end-to-end fused study", f"exit {code}: {' '.join(out.split())[-300:]}", "runs", False)
            return
        ran, fused, n_arrays = (int(g or 0) for g in match.groups())
        # on the CPU (--dry-run) `auto` runs convolutional models alone, so only a GPU run must fuse
        table.add("end-to-end fused study (LeNet-5, ResNet-18)", f"{ran} trials in {elapsed:.0f} s "
                  f"({ran / elapsed:.1f} trials/s), {fused} of them in {n_arrays} fused arrays", "runs, fuses",
                  ran > 0 and (dry or fused > 0))


def agreement(table: Table, device: str, dry: bool) -> None:
    from sensitivity.fused import run_fused
    from sensitivity.train import run_trial

    worst, statuses, compared = 0.0, True, 0
    for model, shape in (("mlp", [1, 28, 28]), ("resnet18", [3, 32, 32])):
        base = {"dataset": "synthetic", "dataset_args": {"shape": shape, "train_size": 64 if dry else 1024,
                                                         "test_size": 32 if dry else 256},
                "model": model, "optimizer": "adam-hd", "batch_size": 64, "epochs": 1 if dry else 2, "device": device}
        configs = [{**base, "lr": lr, "seed": s} for lr in (1e-3, 1e-2, 10.0) for s in (0, 1)]
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the same steps, tiny, on the CPU")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.dry_run:
        print("gpu-check: no CUDA device here (torch sees none); nothing to measure")
        return 0
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        print(f"gpu-check on {props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}")
    else:
        print("gpu-check --dry-run: the steps on the CPU, tiny (not GPU figures)")
    table = Table()
    started = time.perf_counter()
    for step in (lambda: cuda_tests(table, args.dry_run), lambda: optim_steps(table, device),
                 lambda: arrays(table, device, args.dry_run), lambda: end_to_end(table, args.dry_run),
                 lambda: agreement(table, device, args.dry_run)):
        try:
            step()
        except Exception as exc:  # one failed step is a FAIL row; the others still run
            table.add("step failed", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}", "", False)
    table.add("gpu-check", f"{time.perf_counter() - started:.0f} s", "< 480 s",
              time.perf_counter() - started < 480)
    table.print()
    return 1 if table.failed else 0


if __name__ == "__main__":
    sys.exit(main())
