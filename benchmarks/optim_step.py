"""Optimizer step time on ResNet-18-shaped parameters, as a ratio to torch.optim (foreach).

Every row is timed interleaved with every other row in the same run (one step of each per round,
in a shuffled order), so machine load hits all rows alike. Before each step the row's parameters
get freshly allocated gradients (untimed), as autograd allocates them after
``zero_grad(set_to_none=True)``. Timed is ``step()`` followed by ``zero_grad(set_to_none=True)``,
the optimizer's share of a training iteration: every optimizer is thus charged for releasing the
gradients (about one memory pass on CPU), whether zero_grad releases them (torch) or the next step
does (HD keeps the previous gradient tensor as d_{t−1} instead of copying it).
Reported: the median time, and the ratio to the compared row as the median over rounds of the
per-round ratio.

    .venv/bin/python benchmarks/optim_step.py                  # CPU, and CUDA when present
    .venv/bin/python benchmarks/optim_step.py --device cpu --repeats 100 --only hd

Adding a row is one line in ROWS: Row(label, build(named_params) -> optimizer, compared-to label, target).
With --strict the exit status is 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sensitivity.optim import available, create  # noqa: E402


class Row(NamedTuple):
    label: str
    build: Callable[[list[tuple[str, torch.Tensor]]], torch.optim.Optimizer]
    baseline: str | None = None  # label of the row this one is compared to
    target: float | None = None  # pass when median / baseline median <= target


def opt(name: str, **hp) -> Callable:
    return lambda named: create(name, named, **hp)


def train_mode(build: Callable) -> Callable:
    """An optimizer with train/eval modes (Schedule-Free), built in train mode, as training runs it."""
    def make(named):
        optimizer = build(named)
        optimizer.train()
        return optimizer
    return make


def torch_opt(cls, **hp) -> Callable:
    return lambda named: cls([p for _, p in named], foreach=True, **hp)


SGD, SGDN, ADAM = "torch SGD (foreach)", "torch SGD-Nesterov (foreach)", "torch Adam (foreach)"
RADAM = "torch RAdam (foreach)"  # radam's own formulas, implemented on our functional core

ROWS: list[Row] = [
    Row(SGD, torch_opt(torch.optim.SGD, lr=1e-3)),
    Row(SGDN, torch_opt(torch.optim.SGD, lr=1e-3, momentum=0.9, nesterov=True)),
    Row(ADAM, torch_opt(torch.optim.Adam, lr=1e-3)),
    Row(RADAM, torch_opt(torch.optim.RAdam, lr=1e-3)),
    Row("sgd", opt("sgd"), SGD),
    Row("sgdn", opt("sgdn"), SGDN),
    Row("adam", opt("adam"), ADAM),
    Row("sgd-hd", opt("sgd-hd"), SGD, 2.0),
    Row("sgd-hd-sgdn", opt("sgd-hd-sgdn"), "sgd-hd", 1.05),
    Row("sgd-hd-adam", opt("sgd-hd-adam"), "sgd-hd", 1.05),
    Row("sgdn-hd", opt("sgdn-hd"), SGDN, 1.5),
    Row("sgdn-hd-sgdn", opt("sgdn-hd-sgdn"), "sgdn-hd", 1.05),
    Row("sgdn-hd-adam", opt("sgdn-hd-adam"), "sgdn-hd", 1.05),
    Row("adam-hd", opt("adam-hd"), ADAM, 1.3),
    Row("adam-hd-sgdn", opt("adam-hd-sgdn"), "adam-hd", 1.05),
    Row("adam-hd-adam", opt("adam-hd-adam"), "adam-hd", 1.05),
    Row("radam", opt("radam"), RADAM),
    Row("adabound", opt("adabound"), ADAM),
    Row("adam-l4", opt("adam-l4"), ADAM),
    Row("sgdn-l4", opt("sgdn-l4"), SGDN),
    Row("sgd-cam-hd", opt("sgd-cam-hd"), SGD),  # CAM-HD default: unit + global levels
    Row("sgdn-cam-hd", opt("sgdn-cam-hd"), SGDN),
    Row("adam-cam-hd", opt("adam-cam-hd"), ADAM, 1.8),
    Row("adam-cam-hd 3-level", opt("adam-cam-hd", levels=("parameter", "layer", "global"), gammas=(0.3, 0.3, 0.4)), ADAM, 2.5),
    # learning-rate-free rules, each against the torch optimizer whose step it extends (no target)
    Row("prodigy", opt("prodigy"), ADAM),
    Row("d-adapt-adam", opt("d-adapt-adam"), ADAM),
    Row("d-adapt-sgd", opt("d-adapt-sgd"), SGD),
    Row("schedule-free-sgd", train_mode(opt("schedule-free-sgd")), SGD),
    Row("schedule-free-adamw", train_mode(opt("schedule-free-adamw")), ADAM),
    Row("dog", opt("dog"), SGD),
    Row("ldog", opt("ldog"), SGD),
]


def resnet18_shapes(num_classes: int = 10) -> list[tuple[str, tuple[int, ...]]]:
    """Parameter names and shapes of the CIFAR ResNet-18 (3x3 stem): 62 tensors, 11.17M values."""
    shapes = [("conv1.weight", (64, 3, 3, 3)), ("bn1.weight", (64,)), ("bn1.bias", (64,))]
    cin = 64
    for stage, cout in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            pre = f"layer{stage}.{block}"
            stride_down = block == 0 and cout != cin
            shapes += [(f"{pre}.conv1.weight", (cout, cin, 3, 3)), (f"{pre}.bn1.weight", (cout,)), (f"{pre}.bn1.bias", (cout,)),
                       (f"{pre}.conv2.weight", (cout, cout, 3, 3)), (f"{pre}.bn2.weight", (cout,)), (f"{pre}.bn2.bias", (cout,))]
            if stride_down:
                shapes += [(f"{pre}.shortcut.0.weight", (cout, cin, 1, 1)), (f"{pre}.shortcut.1.weight", (cout,)),
                           (f"{pre}.shortcut.1.bias", (cout,))]
            cin = cout
    shapes += [("fc.weight", (num_classes, 512)), ("fc.bias", (num_classes,))]
    return shapes


def bench(device: str, rows: list[Row], repeats: int, warmup: int, clock=time.perf_counter, seed: int = 0) -> dict[str, list[float]]:
    """Step times (ms) of each row, one per round, all rows interleaved in a shuffled order."""
    gen = torch.Generator().manual_seed(seed)
    shapes = resnet18_shapes()
    grads = [torch.randn(s, generator=gen).mul_(1e-2).to(device) for _, s in shapes]
    models, optimizers = {}, {}
    for row in rows:
        params = [torch.randn(s, generator=gen).mul_(0.05).to(device).requires_grad_() for _, s in shapes]
        models[row.label] = params
        optimizers[row.label] = row.build([(n, p) for (n, _), p in zip(shapes, params)])
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    loss = torch.tensor(1.0, device=device)
    times: dict[str, list[float]] = {row.label: [] for row in rows}
    order = [row.label for row in rows]
    rng = random.Random(seed)
    for r in range(warmup + repeats):
        rng.shuffle(order)
        for label in order:
            for p, g in zip(models[label], grads):
                p.grad = g.clone()  # fresh gradient tensors, as autograd allocates them
            sync()
            t0 = clock()
            optimizers[label].step(lambda: loss)
            optimizers[label].zero_grad(set_to_none=True)
            sync()
            if r >= warmup:
                times[label].append(1e3 * (clock() - t0))
    return times


def table(device: str, rows: list[Row], times: dict[str, list[float]]) -> list[str]:
    """Median ms per row; the ratio is the median over rounds of (row / baseline) in that round,
    which cancels load that drifts between rounds better than a ratio of medians."""
    lines = [f"| optimizer ({device}) | median ms | vs | ratio | target | |", "|---|---:|---|---:|---:|---|"]
    for row in rows:
        ms = statistics.median(times[row.label])
        if row.baseline is None or row.baseline not in times:
            lines.append(f"| {row.label} | {ms:.2f} | | | | |")
            continue
        ratio = statistics.median(a / b for a, b in zip(times[row.label], times[row.baseline]))
        target, verdict = ("", "")
        if row.target is not None:
            target, verdict = f"≤ {row.target:.2f}", ("pass" if ratio <= row.target else "FAIL")
        lines.append(f"| {row.label} | {ms:.2f} | {row.baseline} | {ratio:.2f} | {target} | {verdict} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    ap.add_argument("--repeats", type=int, default=60, help="timed rounds (default 60)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--only", default="", help="keep rows whose label contains this (plus their baselines)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: process CPU time, for CPU runs on a machine shared with other jobs "
                         "(waiting for a core is not counted; use with --threads 1)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep = {r.label for r in ROWS if args.only in r.label}
    while True:  # pull in the rows they are compared to, transitively
        more = {r.baseline for r in ROWS if r.label in keep and r.baseline} - keep
        if not more:
            break
        keep |= more
    rows = [r for r in ROWS if r.label in keep]
    devices = ["cpu"] if args.device in ("all", "cpu") else []
    if args.device in ("all", "cuda"):
        if torch.cuda.is_available():
            devices.append("cuda")
        elif args.device == "cuda":
            print("CUDA requested but not available", file=sys.stderr)
            return 2
    n = sum(torch.Size(s).numel() for _, s in resnet18_shapes())
    print(f"# optimizer step time: {len(resnet18_shapes())} tensors, {n / 1e6:.2f}M parameters, "
          f"{args.repeats} interleaved rounds, {args.clock} clock, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    failed = False
    for device in devices:
        clock = time.process_time if args.clock == "cpu" and device == "cpu" else time.perf_counter
        lines = table(device, rows, bench(device, rows, args.repeats, args.warmup, clock))
        failed |= any(line.endswith("FAIL |") for line in lines)
        print("\n".join(lines) + "\n")
    # <op>-hd-sgd is the same optimizer as its row <op>-hd
    missing = sorted(n for n in set(available()) - {r.label for r in ROWS} if not n.endswith("-hd-sgd"))
    if missing and not args.only:
        print(f"(not in ROWS: {', '.join(missing)})")
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
