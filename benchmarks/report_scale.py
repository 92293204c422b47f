"""Report at scale: how large is report.html, and how long does `sensitivity plot` take, at 100,000 trials?

Writes a synthetic results directory in the parquet schema (README.md, "The results tables") to a
temporary directory: 40 labels on one task (20 swept over α0 alone, 12 HD rules over α0 × β,
4 SGDN over α0 × momentum, 4 Schedule-Free over α0 × warmup_steps: 60 series on the α0 axis),
40 α0 values, as many seeds as it takes to reach the trial count (100,800 for 100,000: 21 seeds),
E epochs of curves per trial, some diverged and errored trials. Then times
`analysis.report.write_report` (what `sensitivity plot` calls) on it, in this process, and the
`sensitivity plot` command itself (a fresh process: imports and loading the tables included), and
prints the size of report.html and of the whole output folder.

Targets: report.html under 10 MB, `sensitivity plot` within 60 s on 2 cores.

    python benchmarks/report_scale.py                    # 100,000 trials x 50 epochs
    python benchmarks/report_scale.py --trials 10000     # a quick look
"""

from __future__ import annotations

import argparse
import math
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the checkout's analysis, not an installed one
from analysis.report import write_report  # noqa: E402

LRS = np.logspace(-5, 1, 40)
BETAS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
MOMENTA = (0.0, 0.5, 0.9, 0.95, 0.99)
WARMUP = (0, 250, 500, 750, 1000)


def _series():
    """(label, optimizer, second axis column or None, its values, best lr, floor, valley width in decades)."""
    rng = np.random.default_rng(1)
    plain = ["sgd", "adam", "adamw", "radam", "adabound", "adam-l4", "sgd-l4", "prodigy", "d-adapt-sgd",
             "d-adapt-adam", "dog", "ldog", "rmsprop", "adagrad", "lamb", "lion", "sgd-cam-hd", "adam-cam-hd",
             "nadam", "adamax"]
    hd = ["sgd-hd", "sgdn-hd", "adam-hd", "sgd-hd-adam", "adam-hd-sgd", "sgdn-hd-adam", "radam-hd", "adamw-hd",
          "nadam-hd", "adamax-hd", "lamb-hd", "lion-hd"]
    for label in plain:
        yield label, label, None, (None,), 10 ** rng.uniform(-4, -1), rng.uniform(0.05, 0.3), rng.uniform(0.6, 2.0)
    for label in hd:
        yield label, label, "beta", BETAS, 10 ** rng.uniform(-4, -1), rng.uniform(0.05, 0.3), rng.uniform(1.0, 3.0)
    for k in range(4):
        yield f"sgdn-{k}", "sgdn", "momentum", MOMENTA, 10 ** rng.uniform(-3, -1), 0.1, rng.uniform(0.8, 1.5)
    for k in range(4):
        yield (f"schedule-free-adamw-{k}", "schedule-free-adamw", "warmup_steps", WARMUP, 10 ** rng.uniform(-3, -1),
               0.1, rng.uniform(0.8, 1.5))


def build(directory: pathlib.Path, trials: int, epochs: int) -> tuple[int, int]:
    """Write trials.parquet and curves.parquet; returns (trials, curve rows)."""
    series = list(_series())
    configs = sum(len(values) for _, _, _, values, _, _, _ in series) * len(LRS)
    seeds = max(1, math.ceil(trials / configs))
    rng = np.random.default_rng(0)
    frames = []
    for label, optimizer, axis, values, best_lr, floor, width in series:
        lr, value, seed = (a.ravel() for a in np.meshgrid(LRS, np.array(values, dtype=float), np.arange(seeds),
                                                          indexing="ij"))
        shift = np.zeros_like(lr)
        if axis == "momentum":
            shift = -np.log10(1 - value) - 1  # lr / (1 − momentum): the valley moves with momentum
        elif axis in ("beta", "warmup_steps"):
            shift = 0.3 * np.abs(np.log10(np.where(value > 0, value, 1.0)) + 4) / 4
        decades = np.log10(lr) + shift - np.log10(best_lr)
        effect = rng.normal(0, 0.02, seeds)[seed]  # a seed's initial weights, shared across configurations
        loss = floor + 0.25 * (decades / width) ** 2 + effect + np.abs(rng.normal(0, 0.01, len(lr)))
        diverged = decades > 1.5 * width
        loss = np.where(diverged & (decades > 2 * width), np.inf, loss)
        frame = pd.DataFrame({
            "study": "bench", "label": label, "optimizer": optimizer, "dataset": "cifar10", "model": "resnet18",
            "dataset_args": "{}", "model_args": "{}", "lr": lr, "beta": value if axis == "beta" else np.nan,
            "decay": None, "seed": seed, "batch_size": 128, "epochs": epochs, "weight_decay": 5e-4,
            "train_fraction": 1.0, "augment": True, "divergence_factor": 10.0, "loss_smoothing": 0.0,
            "status": np.where(diverged, "diverged", "ok"),
            "min_train_loss": loss, "min_test_loss": loss + 0.05, "final_train_loss": loss,
            "final_test_loss": loss + 0.05, "best_test_acc": 1 - np.minimum(loss, 2.3) / 2.5,
            "final_test_acc": 1 - np.minimum(loss, 2.3) / 2.5, "final_lr": lr, "epochs_completed": epochs,
            "steps": epochs * 391, "init_train_loss": 2.3 + effect, "init_test_loss": 2.31 + effect,
            "wall_time_s": 30.0, "error": None, "device": "cuda", "node": "node-0", "host": "gpu0:10.0.0.1",
            "round": 0})
        if axis == "momentum":
            frame["momentum"] = value
        if axis == "warmup_steps":
            frame["warmup_steps"] = value
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)  # every series complete: a few more trials than asked
    table["trial_id"] = [f"{i:016x}" for i in range(len(table))]
    errored = rng.random(len(table)) < 0.002
    table.loc[errored, ["status", "error"]] = ["error", "RuntimeError: worker lost"]
    table.loc[errored, ["min_train_loss", "min_test_loss", "final_train_loss", "final_test_loss"]] = np.inf
    directory.mkdir(parents=True)
    table.to_parquet(directory / "trials.parquet", index=False)
    n = len(table)
    epoch = np.tile(np.arange(1, epochs + 1), n)
    ids = np.repeat(table["trial_id"].to_numpy(), epochs)
    final = np.repeat(np.where(np.isfinite(table["min_train_loss"]), table["min_train_loss"], 2.3), epochs)
    train = final + (2.3 - final) * np.exp(-0.2 * epoch)
    curves = pd.DataFrame({"trial_id": ids, "epoch": epoch, "step": epoch * 391, "train_loss": train,
                           "test_loss": train + 0.05, "train_acc": 1 - train / 2.5, "test_acc": 1 - train / 2.5 - 0.02,
                           "lr": np.repeat(table["lr"].to_numpy(), epochs)})
    curves.to_parquet(directory / "curves.parquet", index=False)
    (directory / "study.yaml").write_text("# resolved by sensitivity: smoke: false\nname: bench\n")
    return n, len(curves)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--dir", help="where the results go (default: a temporary directory, removed after)")
    args = parser.parse_args()
    root = pathlib.Path(args.dir) if args.dir else pathlib.Path(tempfile.mkdtemp(prefix="report-bench-"))
    try:
        started = time.perf_counter()
        n, rows = build(root / "bench", args.trials, args.epochs)
        print(f"built {n:,} trials, {rows:,} curve rows in {time.perf_counter() - started:.1f} s")
        started, cpu = time.perf_counter(), time.process_time()
        paths = write_report(root / "bench", root / "figures", echo=lambda line: None)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        page = root / "figures" / "report.html"
        total = sum(p.stat().st_size for p in paths)
        pngs = [p for p in paths if p.suffix == ".png"]
        print(f"write_report: {elapsed:.1f} s wall, {cpu:.1f} s CPU (in this process, the tables loaded)")
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sensitivity.cli", "plot", str(root / "bench"), "--out",
                        str(root / "plotted")], check=True, capture_output=True,
                       cwd=pathlib.Path(__file__).resolve().parents[1])
        print(f"sensitivity plot: {time.perf_counter() - started:.1f} s wall, the command from its start "
              f"(target <= 60 s on 2 cores)")
        print(f"report.html: {page.stat().st_size / 2**20:.2f} MiB (target < 10 MiB); "
              f"{len(pngs)} figures, {sum(p.stat().st_size for p in pngs) / 2**20:.2f} MiB of PNG")
        print(f"all {len(paths)} files: {total / 2**20:.1f} MiB; largest: " + ", ".join(
            f"{p.name} {p.stat().st_size / 2**20:.2f} MiB" for p in sorted(paths, key=lambda p: -p.stat().st_size)[:3]))
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
