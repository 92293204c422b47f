"""run_trial's time per step against a minimal hand-written PyTorch loop on the same tensors.

Both train the same MLP from the same initial weights on the same device-resident
tensors (synthetic MNIST-shaped data), drawing batches from a device randperm, and
evaluate the test split once per epoch. The minimal loop does nothing else: no
loss bookkeeping, no divergence check, no closure. Runs are interleaved (loop,
trial, loop, trial, ...) after one warm-up each, and the median ratio of time per
step is printed. Target: run_trial <= 1.10x the loop, on the CPU and on CUDA.

    python benchmarks/train_throughput.py                 # cpu, and cuda when present
    python benchmarks/train_throughput.py --device cuda --hidden 1000 1000
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from sensitivity import data as datamod
from sensitivity import optim
from sensitivity.train import EVAL_BATCH, build_model, run_trial, validate_config


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    """(wall, process CPU) seconds since `start`; CPU time hardly moves with other processes' load."""
    return time.perf_counter() - start[0], time.process_time() - start[1]


def hand_loop(config: dict) -> tuple[tuple[float, float], int]:
    """((wall, cpu) seconds, steps) of the minimal loop: build, train `epochs`, evaluate each epoch."""
    cfg = validate_config(config)
    device = torch.device(cfg["device"])
    d = datamod.load(cfg["dataset"], dataset_args=cfg["dataset_args"], device=device)
    _sync(device)
    start = _clock()
    model = build_model(cfg, d.input_shape, d.num_classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
    gen = torch.Generator(device=device).manual_seed(cfg["seed"])
    n, bs, steps = len(d.train_y), cfg["batch_size"], 0
    for _ in range(cfg["epochs"]):
        perm = torch.randperm(n, generator=gen, device=device)
        model.train()
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(d.train_x[idx]), d.train_y[idx]).backward()
            opt.step()
            steps += 1
        model.eval()
        with torch.no_grad():
            total = sum(F.cross_entropy(model(d.test_x[i:i + EVAL_BATCH]), d.test_y[i:i + EVAL_BATCH],
                                        reduction="sum") for i in range(0, len(d.test_y), EVAL_BATCH))
        total.item()  # the per-epoch test loss reaches the host
    _sync(device)
    return _since(start), steps


def trial(config: dict) -> tuple[tuple[float, float], int, float]:
    """((wall, cpu) seconds for the whole call, steps, the row's wall_time_s)."""
    device = torch.device(validate_config(config)["device"])
    _sync(device)
    start = _clock()
    row = run_trial(config).row
    seconds = _since(start)
    assert row["status"] == "ok", row
    return seconds, row["steps"], row["wall_time_s"]


def bench(device: str, args: argparse.Namespace) -> None:
    config = {
        "dataset": "synthetic", "model": "mlp", "model_args": {"hidden": args.hidden},
        "dataset_args": {"shape": [1, 28, 28], "num_classes": 10,
                         "train_size": args.train_size, "test_size": args.train_size // 6},
        "optimizer": "sgd", "lr": 0.01, "batch_size": args.batch_size, "epochs": args.epochs,
        "seed": 0, "device": device,
    }
    datamod.load("synthetic", dataset_args=config["dataset_args"], device=device)  # load outside the timing
    trial(config), hand_loop(config)  # warm-up: imports, allocator, kernels
    loops, trials, inner, cpu_ratios = [], [], [], []
    for _ in range(args.repeats):
        (loop_wall, loop_cpu), steps = hand_loop(config)
        loops.append(loop_wall / steps)
        (trial_wall, trial_cpu), steps, wall = trial(config)
        trials.append(trial_wall / steps)
        inner.append(wall / steps)
        cpu_ratios.append(trial_cpu / loop_cpu)
    ratios = [t / l for t, l in zip(trials, loops)]
    loop_ms, trial_ms = statistics.median(loops) * 1e3, statistics.median(trials) * 1e3
    print(f"{device:5s} mlp{args.hidden} batch {args.batch_size}, {steps} steps/run, {args.repeats} interleaved runs")
    print(f"      hand loop   {loop_ms:8.3f} ms/step  ({1e3 / loop_ms:8.1f} steps/s)")
    print(f"      run_trial   {trial_ms:8.3f} ms/step  ({1e3 / trial_ms:8.1f} steps/s)"
          f"   [training+eval only: {statistics.median(inner) * 1e3:.3f} ms/step]")
    verdict = "ok" if statistics.median(ratios) <= 1.10 else "ABOVE TARGET"
    print(f"      ratio run_trial/loop: median {statistics.median(ratios):.3f}"
          f" (min {min(ratios):.3f}, max {max(ratios):.3f}); target <= 1.10: {verdict}")
    if device == "cpu":  # on a loaded machine wall time is noisy; CPU time of this process is not
        print(f"      ratio of process CPU time: median {statistics.median(cpu_ratios):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                        help="all: cpu, and cuda when present (default)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[100, 100], help="MLP hidden sizes (default 100 100)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-size", type=int, default=12800, help="training examples (default 12800)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: a sweep runs one trial per core)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    assert "sgd" in optim.available()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            raise SystemExit("--device cuda: torch sees no CUDA device")
        devices.remove("cuda")
        print("(no CUDA device: cpu only)")
    for device in devices:
        bench(device, args)


if __name__ == "__main__":
    main()
