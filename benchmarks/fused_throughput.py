"""Trials per second of a fused array (sensitivity.fused.run_fused) against the same trials solo.

Each case trains the same K configs (a grid of lr x seed) twice per round: once as one fused
array, once as K run_trial calls, in the same process, interleaved (fused, solo, fused, solo,
...), after a warm-up. Printed per case: the median over rounds of the speed-up (solo time /
fused time), from wall-clock and from process CPU time (which hardly moves with other
processes' load), and what ``fuse: auto`` does with that model on this device (see
sensitivity/fused/plan.py: where auto runs solo, its speed-up is 1 by construction).

Targets on a 2-core CPU, one thread: digits MLP-64 (the quickstart's task: 15 epochs) >= 8x at
K >= 32; under auto >= 0.95x everywhere. LeNet-5, MLP 2x1000 and ResNet-18 figures are reported.

The member-axis cases (``k32-<optimizer>``: the quickstart's task cut to 3 epochs, K = 32) measure
the families whose updates run along the member axis besides SGD's: CAM-HD, RAdam, L4 and
AdaBound. A table after the cases gives each one's speed-up as a multiple of ``k32-sgd``'s in the
same run; target >= 0.6x.

    python benchmarks/fused_throughput.py               # every case on the CPU
    python benchmarks/fused_throughput.py --case mlp64 --rounds 5
    python benchmarks/fused_throughput.py --members     # the k32-* cases only
    python benchmarks/fused_throughput.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sensitivity.record import TrialRecord
from sensitivity.fused import plan, run_fused
from sensitivity.train import run_trial

QUICKSTART = {"dataset": "digits", "model": "mlp", "model_args": {"hidden": [64]}, "batch_size": 64, "epochs": 15,
              "weight_decay": 1e-4}  # experiments/quickstart.yaml's task

CASES = {
    # name: (task, optimizer, lrs, seeds)
    "mlp64": (QUICKSTART, "sgd", [1e-3, 1e-2, 0.03, 0.1, 0.3, 1.0], 6),
    "mlp64-adam-hd": (QUICKSTART, "adam-hd", [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 0.1], 6),
    "mlp2x1000": ({"dataset": "synthetic", "dataset_args": {"shape": [1, 28, 28], "train_size": 1024,
                                                            "test_size": 256},
                   "model": "mlp", "model_args": {"hidden": [1000, 1000]}, "batch_size": 128, "epochs": 1},
                  "sgd", [0.01, 0.1], 4),
    "lenet5": ({"dataset": "synthetic", "dataset_args": {"shape": [1, 28, 28], "train_size": 512, "test_size": 128},
                "model": "lenet5", "batch_size": 32, "epochs": 1}, "sgd", [0.01, 0.1], 4),
    "resnet18": ({"dataset": "synthetic", "dataset_args": {"shape": [3, 16, 16], "train_size": 64, "test_size": 32},
                  "model": "resnet18", "batch_size": 32, "epochs": 1}, "sgdn", [0.01, 0.1], 2),
}


# Member-axis cases: 8 lrs x 4 seeds = 32 members, the quickstart's task in 3 epochs.
_K32_TASK = {**QUICKSTART, "epochs": 3}
_K32_LRS = {"sgd": [1e-3, 3e-3, 1e-2, 0.03, 0.1, 0.2, 0.3, 0.5],
            "adam": [1e-4, 3e-4, 1e-3, 2e-3, 3e-3, 1e-2, 2e-2, 3e-2],
            "l4": [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5]}
MEMBER_AXIS = ["sgd", "adam-cam-hd", "sgd-cam-hd", "sgdn-cam-hd", "radam", "adam-l4", "sgdn-l4", "adabound"]
MEMBER_TARGET = 0.6  # each one's speed-up >= this multiple of SGD's
for _name in MEMBER_AXIS:
    _lrs = _K32_LRS["l4" if _name.endswith("-l4") else "adam" if _name.startswith(("adam", "radam", "adabound")) else "sgd"]
    CASES[f"k32-{_name}"] = (_K32_TASK, _name, _lrs, 4)


def _configs(case: str, device: str) -> list[dict]:
    task, name, lrs, seeds = CASES[case]
    return [{**task, "optimizer": name, "lr": lr, "seed": s, "device": device} for lr in lrs for s in range(seeds)]


def _timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(case: str, device: str, rounds: int) -> dict:
    configs = _configs(case, device)
    run_fused(configs[:2])  # warm-up: data loaded and cached, kernels chosen
    run_trial(configs[0])
    walls, cpus = [], []
    for _ in range(rounds):
        fw, fc = _timed(lambda: run_fused(configs))
        sw, sc = _timed(lambda: [run_trial(c) for c in configs])
        walls.append(sw / fw)
        cpus.append(sc / fc)
    fuses = plan.pays(TrialRecord.from_config(configs[0]), torch.device(device).type)
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    return {"case": case, "K": len(configs), "wall": wall, "cpu": cpu, "auto": "fuses" if fuses else "solo",
            "auto_cpu": cpu if fuses else 1.0, "solo_trials_per_s": len(configs) / sw, "fused_trials_per_s":
            len(configs) / fw}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=list(CASES), action="append", help="a case (repeatable; default: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--members", action="store_true", help="the member-axis cases (k32-*) only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"fused vs solo on {args.device}, {args.threads} thread(s), median of {args.rounds} interleaved rounds")
    print(f"{'case':<22}{'K':>4}{'solo tr/s':>11}{'fused tr/s':>12}{'wall x':>9}{'cpu x':>8}  auto")
    cases = args.case or ([f"k32-{n}" for n in MEMBER_AXIS] if args.members else list(CASES))
    results = {}
    for case in cases:
        r = results[case] = measure(case, args.device, args.rounds)
        print(f"{r['case']:<22}{r['K']:>4}{r['solo_trials_per_s']:>11.2f}{r['fused_trials_per_s']:>12.2f}"
              f"{r['wall']:>9.2f}{r['cpu']:>8.2f}  {r['auto']} ({r['auto_cpu']:.2f}x)", flush=True)
    sgd = results.get("k32-sgd")
    others = [results[f"k32-{n}"] for n in MEMBER_AXIS[1:] if f"k32-{n}" in results]
    if sgd is not None and others:
        print(f"\nmember axis at K = 32: speed-up as a multiple of k32-sgd's ({sgd['wall']:.2f}x wall, "
              f"{sgd['cpu']:.2f}x cpu), target >= {MEMBER_TARGET}")
        print(f"{'case':<22}{'wall x':>9}{'/ sgd':>7}{'':>6}{'cpu x':>8}{'/ sgd':>7}")
        for r in others:
            wall, cpu = r["wall"] / sgd["wall"], r["cpu"] / sgd["cpu"]
            print(f"{r['case']:<22}{r['wall']:>9.2f}{wall:>7.2f}{_verdict(wall):>6}{r['cpu']:>8.2f}{cpu:>7.2f}"
                  f"{_verdict(cpu):>6}")


def _verdict(multiple: float) -> str:
    return "pass" if multiple >= MEMBER_TARGET else "FAIL"


if __name__ == "__main__":
    main()
