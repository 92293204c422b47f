"""Trials per second of a fused array (sensitivity.fused.run_fused) against the same trials solo.

Each case trains the same K configs (a grid of lr x seed) in every round as one fused array, as K
run_trial calls and, where that is neither, as ``fuse: auto`` cuts them on this device (see
sensitivity/fused/plan.py), in the same process, interleaved, after a warm-up. Printed per case:
the median over rounds of the speed-up (solo time / fused time), from wall-clock and from process
CPU time (which hardly moves with other processes' load), and what auto does and its speed-up
(1 by construction where it runs the trials alone).

Groups of cases (``--cases`` takes case and group names, comma-separated):

- ``rule``: the cases ``auto``'s CPU rule is checked against: the quickstart's digits MLP-64,
  MLPs on MNIST shapes (logreg to 2x1000, batch 32 to 128), LeNet-5 on MNIST and CIFAR-10 shapes
  (batch 32 to 256), VGG-16 and ResNet-18 on CIFAR-10 shapes. Each row gives the speed-up of one
  array of all K and that of auto's own cut of them (``plan.cut``: solo, or arrays of at most
  ``plan.auto_cap`` members), and whether auto's choice holds: it must not run alone what one
  array speeds up >= 1.1x (else MISSED), and its own speed-up must be >= 0.95x (else SLOW), judged
  on CPU time on a CPU. Target on a 2-core CPU, one thread: digits MLP-64 >= 8x at K >= 32.
- ``members``: ``k32-<optimizer>``, the quickstart's task cut to 3 epochs at K = 32, for the
  families whose updates run along the member axis besides SGD's (CAM-HD, RAdam, L4, AdaBound).
  A table after the cases gives each one's speed-up as a multiple of ``k32-sgd``'s in the same
  run; target >= 0.6x.
- ``gpu``: the GPU targets (an MLP on MNIST shapes >= 20x, LeNet-5 >= 10x, ResNet-18 on CIFAR-10
  shapes >= 2x, wall time), which ``make gpu-check`` runs on CUDA.

    python benchmarks/fused_throughput.py                        # rule and members on the CPU
    python benchmarks/fused_throughput.py --cases mlp64,cifar-lenet5-b128 --rounds 5
    python benchmarks/fused_throughput.py --cases members
    python benchmarks/fused_throughput.py --device cuda --cases gpu,members --json out.json
    python benchmarks/fused_throughput.py --smoke --rounds 1     # the cases tiny: checks the script
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import NamedTuple

import torch

from sensitivity.record import TrialRecord
from sensitivity.fused import plan, run_fused
from sensitivity.train import run_trial

QUICKSTART = {"dataset": "digits", "model": "mlp", "model_args": {"hidden": [64]}, "batch_size": 64, "epochs": 15,
              "weight_decay": 1e-4}  # experiments/quickstart.yaml's task


class Case(NamedTuple):
    task: dict
    optimizer: str
    lrs: list[float]
    seeds: int  # K = len(lrs) * seeds
    target: float | None = None  # speed-up (wall) to reach, where there is one


def _synthetic(shape: list[int], train: int, test: int, model: str, batch: int, hidden: list[int] | None = None
               ) -> dict:
    return {"dataset": "synthetic", "dataset_args": {"shape": shape, "train_size": train, "test_size": test},
            "model": model, "batch_size": batch, "epochs": 1, **({"model_args": {"hidden": hidden}} if hidden else {})}


def _mnist(model: str, batch: int, hidden: list[int] | None = None) -> dict:
    """MNIST shapes (1x28x28, 10 classes): 1536 training and 256 test examples (MNIST's 6:1), one epoch."""
    return _synthetic([1, 28, 28], 1536, 256, model, batch, hidden)


def _cifar(model: str, batch: int, train: int = 1536, test: int = 256) -> dict:
    """CIFAR-10 shapes (3x32x32, 10 classes), one epoch."""
    return _synthetic([3, 32, 32], train, test, model, batch)


_LRS4 = [0.01, 0.03, 0.1, 0.3]
RULE = {
    "mlp64": Case(QUICKSTART, "sgd", [1e-3, 1e-2, 0.03, 0.1, 0.3, 1.0], 6),
    "mlp64-adam-hd": Case(QUICKSTART, "adam-hd", [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 0.1], 6),
    "mnist-logreg-b128": Case(_mnist("logreg", 128), "sgd", _LRS4, 4),
    "mnist-mlp100x100-b32": Case(_mnist("mlp", 32, [100, 100]), "sgd", _LRS4, 4),
    "mnist-mlp256x256-b32": Case(_mnist("mlp", 32, [256, 256]), "sgd", _LRS4, 4),
    "mnist-mlp256x256-b128": Case(_mnist("mlp", 128, [256, 256]), "sgd", _LRS4, 4),
    "mnist-mlp256x256-b128-adam": Case(_mnist("mlp", 128, [256, 256]), "adam", [1e-4, 3e-4, 1e-3, 3e-3], 4),
    "mnist-mlp500x500-b64": Case(_mnist("mlp", 64, [500, 500]), "sgd", _LRS4, 2),
    "mnist-mlp2x1000-b128": Case(_mnist("mlp", 128, [1000, 1000]), "sgd", _LRS4, 2),
    "mnist-lenet5-b32": Case(_mnist("lenet5", 32), "sgd", _LRS4, 4),
    "mnist-lenet5-b128": Case(_mnist("lenet5", 128), "sgd", _LRS4, 2),
    "cifar-lenet5-b64": Case(_cifar("lenet5", 64), "sgd", _LRS4, 4),
    "cifar-lenet5-b128": Case(_cifar("lenet5", 128), "sgd", _LRS4, 2),
    "cifar-lenet5-b256": Case(_cifar("lenet5", 256), "sgd", _LRS4, 2),
    "cifar-vgg16-b32": Case(_cifar("vgg16", 32, 128, 32), "sgdn", [0.01, 0.1], 2),  # 4 steps a trial
    "cifar-resnet18-b32": Case(_cifar("resnet18", 32, 128, 32), "sgdn", [0.01, 0.1], 2),
}
FUSES, NEVER_SLOWER = 1.1, 0.95  # auto fuses wherever the speed-up is >= 1.1x, and is never below 0.95x

# Member-axis cases: 8 lrs x 4 seeds = 32 members, the quickstart's task in 3 epochs.
_K32_TASK = {**QUICKSTART, "epochs": 3}
_K32_LRS = {"sgd": [1e-3, 3e-3, 1e-2, 0.03, 0.1, 0.2, 0.3, 0.5],
            "adam": [1e-4, 3e-4, 1e-3, 2e-3, 3e-3, 1e-2, 2e-2, 3e-2],
            "l4": [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5]}
MEMBER_AXIS = ["sgd", "adam-cam-hd", "sgd-cam-hd", "sgdn-cam-hd", "radam", "adam-l4", "sgdn-l4", "adabound"]
MEMBER_TARGET = 0.6  # each one's speed-up >= this multiple of SGD's
MEMBERS = {f"k32-{name}": Case(_K32_TASK, name, _K32_LRS["l4" if name.endswith("-l4") else "adam" if name.startswith(
    ("adam", "radam", "adabound")) else "sgd"], 4) for name in MEMBER_AXIS}

# The GPU targets, at the sizes make gpu-check runs (SGD with Nesterov momentum, 4 lrs x seeds).
_LRS_GPU = [0.01, 0.02, 0.03, 0.04]
GPU = {
    "gpu-mnist-mlp2x1000": Case(_synthetic([1, 28, 28], 4096, 512, "mlp", 128, [1000, 1000]), "sgdn", _LRS_GPU, 8, 20.0),
    "gpu-mnist-lenet5": Case(_synthetic([1, 28, 28], 4096, 512, "lenet5", 128), "sgdn", _LRS_GPU, 8, 10.0),
    "gpu-cifar-resnet18": Case(_synthetic([3, 32, 32], 2048, 256, "resnet18", 128), "sgdn", _LRS_GPU, 2, 2.0),
}
CASES = {**RULE, **MEMBERS, **GPU}
GROUPS = {"rule": list(RULE), "members": list(MEMBERS), "gpu": list(GPU), "all": list(CASES)}


def configs(case: str, device: str, smoke: bool = False) -> list[dict]:
    """The case's K trial configs; with `smoke`, at most 4 of them on 64 training and 32 test examples, one epoch."""
    task, name, lrs, seeds, _ = CASES[case]
    if smoke:
        task = {**task, "epochs": 1, "dataset_args": {**task.get("dataset_args", {}), "train_size": 64,
                                                       "test_size": 32}}
        lrs, seeds = lrs[:2], min(seeds, 2)
    return [{**task, "optimizer": name, "lr": lr, "seed": s, "device": device} for lr in lrs for s in range(seeds)]


def _timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(case: str, device: str, rounds: int, smoke: bool = False) -> dict:
    """The case's speed-ups: one fused array of its K trials against them solo (wall and CPU time), and
    what ``fuse: auto`` does with them (``plan.cut``: solo, one array, or several smaller arrays, timed
    as such) against solo; auto's choice judged against FUSES and NEVER_SLOWER."""
    records = [TrialRecord.from_config(c) for c in configs(case, device, smoke)]
    kind = torch.device(device).type
    arrays, alone = plan.cut(records, "auto")
    whole = len(arrays) == 1 and not alone  # auto runs the same array as the fused timing

    def auto():
        for array in arrays:
            run_fused(array)
        for record in alone:
            run_trial(record)

    run_fused(records[:2])  # warm-up: data loaded and cached, kernels chosen
    run_trial(records[0])
    walls, cpus, auto_walls, auto_cpus = [], [], [], []
    for _ in range(rounds):
        fw, fc = _timed(lambda: run_fused(records))
        sw, sc = _timed(lambda: [run_trial(r) for r in records])
        aw, ac = (fw, fc) if whole else (sw, sc) if not arrays else _timed(auto)
        walls.append(sw / fw), cpus.append(sc / fc), auto_walls.append(sw / aw), auto_cpus.append(sc / ac)
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    # judged on CPU time on a CPU (it hardly moves with other processes' load), on wall time elsewhere
    fused_x, auto_x = (cpu, statistics.median(auto_cpus)) if kind == "cpu" else (wall, statistics.median(auto_walls))
    rule = "SLOW" if auto_x < NEVER_SLOWER else "MISSED" if not arrays and fused_x >= FUSES else "ok"
    how = "solo" if not arrays else f"fuses {len(arrays)}x{max(len(a) for a in arrays)}" + (
        f" + {len(alone)} solo" if alone else "")
    target = CASES[case].target
    return {"case": case, "K": len(records), "params": plan.param_count(records[0]),
            "step_macs": plan.step_macs(records[0]), "wall": wall, "cpu": cpu, "auto": how, "auto_x": auto_x,
            "rule": rule, "target": target, "target_met": None if target is None else wall >= target,
            "solo_trials_per_s": len(records) / sw, "fused_trials_per_s": len(records) / fw}


def member_multiples(results: dict[str, dict], kind: str) -> list[dict]:
    """Each member-axis case's speed-up as a multiple of k32-sgd's (wall and CPU time), where both ran;
    judged on CPU time on a CPU, on wall time elsewhere."""
    sgd = results.get("k32-sgd")
    if sgd is None:
        return []
    out = []
    for name in MEMBER_AXIS[1:]:
        r = results.get(f"k32-{name}")
        if r is not None:
            wall, cpu = r["wall"] / sgd["wall"], r["cpu"] / sgd["cpu"]
            out.append({"case": r["case"], "wall": r["wall"], "wall_multiple": wall, "cpu": r["cpu"],
                        "cpu_multiple": cpu, "met": (cpu if kind == "cpu" else wall) >= MEMBER_TARGET})
    return out


def select(spec: str) -> list[str]:
    """Case names from a comma-separated list of case and group names (ValueError naming a bad one)."""
    out: list[str] = []
    for name in filter(None, (part.strip() for part in spec.split(","))):
        if name not in CASES and name not in GROUPS:
            raise ValueError(f"--cases: unknown case {name!r}; choose from {', '.join([*GROUPS, *CASES])}")
        out += [c for c in GROUPS.get(name, [name]) if c not in out]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="rule,members", help="comma-separated case or group names "
                        f"(groups: {', '.join(GROUPS)}; default: rule,members)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="every case tiny (checks the script, not a figure)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    try:
        cases = select(args.cases)
    except ValueError as exc:
        parser.error(str(exc))
    torch.set_num_threads(args.threads)
    kind = torch.device(args.device).type
    print(f"fused vs solo on {args.device}, {args.threads} thread(s), median of {args.rounds} interleaved rounds"
          f"{' (smoke: tiny cases)' if args.smoke else ''}; auto must fuse where >= {FUSES}x and never below "
          f"{NEVER_SLOWER}x ({'CPU' if kind == 'cpu' else 'wall'} time)")
    print(f"{'case':<28}{'K':>4}{'params':>11}{'MACs/step':>11}{'solo tr/s':>11}{'fused tr/s':>12}{'wall x':>8}"
          f"{'cpu x':>7}  auto")
    results = {}
    for case in cases:
        r = results[case] = measure(case, args.device, args.rounds, args.smoke)
        target = "" if r["target"] is None else f"; target >= {r['target']:g}x {'pass' if r['target_met'] else 'FAIL'}"
        print(f"{r['case']:<28}{r['K']:>4}{r['params']:>11,}{r['step_macs'] / 1e6:>10.1f}M{r['solo_trials_per_s']:>11.2f}"
              f"{r['fused_trials_per_s']:>12.2f}{r['wall']:>8.2f}{r['cpu']:>7.2f}  {r['auto']} ({r['auto_x']:.2f}x) "
              f"{r['rule']}{target}", flush=True)
    multiples = member_multiples(results, kind)
    if multiples:
        sgd = results["k32-sgd"]
        print(f"\nmember axis at K = 32: speed-up as a multiple of k32-sgd's ({sgd['wall']:.2f}x wall, "
              f"{sgd['cpu']:.2f}x cpu), target >= {MEMBER_TARGET}")
        print(f"{'case':<22}{'wall x':>9}{'/ sgd':>7}{'cpu x':>8}{'/ sgd':>7}")
        for m in multiples:
            print(f"{m['case']:<22}{m['wall']:>9.2f}{m['wall_multiple']:>7.2f}{m['cpu']:>8.2f}{m['cpu_multiple']:>7.2f}"
                  f"  {'pass' if m['met'] else 'FAIL'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "rounds": args.rounds, "smoke": args.smoke,
                       "cases": list(results.values()), "members": multiples}, f, indent=1)


if __name__ == "__main__":
    main()
