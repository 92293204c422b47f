"""Sweep throughput: trials per second with bundling against one trial per Ray task.

Runs the quickstart's grid (experiments/quickstart.yaml: digits, MLP [64], 9 optimizer entries,
7 lr each, betas for HD) with short epochs, three ways, in the same run and the same local Ray
(two CPUs, one CPU per trial):

- `one per task`: each trial is its own Ray Tune trial in a fresh worker process (Tune's
  default), the way a plain grid_search over trials runs;
- `one per task, reused`: the same, with `reuse_actors` (a finished trial's process runs the
  next trial, so torch and the data are loaded once per process);
- `bundled`: what `sensitivity run` does: reused processes and `bundle: auto` (several short
  trials per Ray trial).

Prints trials/s for each and the speedups. Target: bundled >= 3x `one per task`.
`one per task` pays several seconds per trial on a busy 2-core machine, so by default it runs
only the grid's first two optimizer entries (14 trials); trials/s is a rate, so it compares.

    python benchmarks/sweep_throughput.py                  # 84 trials (1 seed, 2 epochs)
    python benchmarks/sweep_throughput.py --seeds 3 --epochs 5 --baseline-entries 9
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import ray
import yaml

from sensitivity import sweep
from sensitivity.sweep import tuner
from sensitivity.study import Study

QUICKSTART = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml"


def _study(epochs: int, seeds: int, bundle, entries: int | None = None, fuse="off") -> Study:
    data = yaml.safe_load(QUICKSTART.read_text())
    data["optimizers"] = data["optimizers"][:entries]
    data["task"]["epochs"] = epochs
    data["seeds"] = seeds
    data["bundle"] = bundle
    data["fuse"] = fuse  # bundles of solo trials, unless the row measures fused arrays
    data["resources"] = {"cpu": 1, "gpu": 0}
    return Study.from_dict(data)


def _run(study: Study, reuse: bool) -> tuple[float, int, int]:
    tuner.REUSE_ACTORS = reuse
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        summary = sweep.run_study(study, out=out, quiet=True)
        elapsed = time.perf_counter() - start
    assert summary.missing == 0 and summary.ran == summary.total, summary
    return elapsed, summary.ran, summary.bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--baseline-entries", type=int, default=2,
                        help="optimizer entries of the grid that `one per task` runs (all: 9)")
    args = parser.parse_args()

    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    try:
        # warm-up: the first Tuner pays for imports and Ray's worker pool once
        _run(_study(1, 1, 32), reuse=True)
        rows = []
        for name, bundle, reuse, entries, fuse in (("one per task", 1, False, args.baseline_entries, "off"),
                                                   ("one per task, reused", 1, True, None, "off"),
                                                   ("bundled (fuse: off)", "auto", True, None, "off"),
                                                   ("fused arrays (default)", "auto", True, None, "auto")):
            elapsed, trials, size = _run(_study(args.epochs, args.seeds, bundle, entries, fuse), reuse)
            rows.append((name, trials, size, elapsed, trials / elapsed))
            print(f"{name:<22} {trials:4d} trials  bundle {size:2d}  {elapsed:7.1f} s  {trials / elapsed:6.2f} trials/s",
                  flush=True)
    finally:
        ray.shutdown()
    base, reused, bundled, fused = (r[4] for r in rows)
    print(f"bundling speedup: {bundled / base:.1f}x over one trial per task (target >= 3x), "
          f"{bundled / reused:.1f}x over one trial per reused task; fused arrays {fused / bundled:.1f}x over bundles")


if __name__ == "__main__":
    main()
