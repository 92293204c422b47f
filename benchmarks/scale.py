"""A 100,000-trial study end to end through `sensitivity run` on local Ray, against the in-process ceiling.

The study: digits logistic regression, 1 epoch, four entries (sgd, sgd-hd, adam, adam-hd), each over
an α0 grid × 10 seeds, ``fuse: auto``. Printed:

- `validate` time (target ≤ 5 s);
- the time from the command to its first stored trial (target ≤ 15 s);
- trials/s over each tenth of the run (target: the last tenth ≥ 0.9× the second);
- the driver's peak memory (target ≤ 1.5 GB);
- end-to-end trials/s against the ceiling: the same arrays trained in-process with ``run_fused``
  on the same cores (target ≥ 0.8×);
- every trial once in the tables; the `plot` time;
- the driver's own CPU time: trials per driver CPU-second, the most one driver sustains on a cluster
  whose workers are elsewhere.

    .venv/bin/python benchmarks/scale.py                   # 100,000 trials (about 3 minutes on 2 cores, with the ceiling and the plot)
    .venv/bin/python benchmarks/scale.py --trials 10000    # a quicker look
    .venv/bin/python benchmarks/scale.py --trials 1000000 --train-fraction 0.01 --no-ceiling
                                                           # a million near-trivial trials: the driver's limits
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

BIN = Path(sys.executable).parent
ENTRIES = ["sgd", "sgd-hd", "adam", "adam-hd"]
SEEDS = 10
PART = re.compile(r"^(\d{8,})-[0-9a-z]+\.trials\.parquet$")


def study(trials: int, train_fraction: float = 1.0) -> dict:
    per_entry = max(1, trials // (len(ENTRIES) * SEEDS))
    lrs = [float(f"{v:.6g}") for v in np.logspace(-5, 1, per_entry)]
    return {"name": "scale", "task": {"dataset": "digits", "model": "logreg", "batch_size": 64, "epochs": 1,
                                      "device": "cpu", "train_fraction": train_fraction},
            "seeds": SEEDS, "fuse": "auto", "resources": {"cpu": 1, "gpu": 0},
            "optimizers": [{"name": name, "lr": lrs} for name in ENTRIES]}


def _status(pid: int, key: str) -> int:
    """A memory figure of /proc/<pid>/status in bytes (0 once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _rss(pid: int) -> int:
    """The process's peak resident memory so far (the kernel's high-water mark: no spike is missed)."""
    return _status(pid, "VmHWM")


def _now(pid: int) -> int:
    """The process's resident memory now."""
    return _status(pid, "VmRSS")


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _stored(parts: Path, seen: dict[str, int]) -> int:
    """Trials stored so far: rows of every trials part (the parts of this run; the tables come at the end)."""
    try:
        names = os.listdir(parts)
    except FileNotFoundError:
        return sum(seen.values())
    for name in names:
        if name not in seen and PART.match(name):
            try:
                seen[name] = pq.read_metadata(parts / name).num_rows
            except OSError:
                continue
    return sum(seen.values())


def run(path: Path, out: Path, total: int) -> dict:
    """The run, watched from outside: (time, stored trials) samples and the driver's peak RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen([str(BIN / "sensitivity"), "run", str(path), "--out", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parts, seen, samples, peak, cpu, rss = out / "scale" / "parts", {}, [], 0, 0.0, []
    while proc.poll() is None:
        peak = max(peak, _rss(proc.pid))
        cpu = max(cpu, _cpu(proc.pid))
        samples.append((time.perf_counter() - start, _stored(parts, seen)))
        rss.append((samples[-1][1], _now(proc.pid)))
        time.sleep(0.25)
    elapsed = time.perf_counter() - start
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"sensitivity run failed ({proc.returncode}): {err[-2000:]}")
    samples.append((elapsed, total))
    return {"samples": samples, "elapsed": elapsed, "peak": peak, "cpu": cpu, "rss": rss}


def rss_by_tenth(rss: list[tuple[int, int]], total: int) -> list[int]:
    """The driver's largest resident memory while each tenth of the trials was stored, then after the
    last one (the final compaction and the end of the run)."""
    out = [0] * 11
    for stored, value in rss:
        k = min(9, stored * 10 // max(total, 1)) if stored < total else 10
        out[k] = max(out[k], value)
    return out


def _reached(samples: list[tuple[float, int]], goal: float) -> float:
    """When the stored count reached `goal`, interpolated between the watcher's samples."""
    for (t0, n0), (t1, n1) in zip(samples, samples[1:]):
        if n1 >= goal:
            return t1 if n1 == n0 else t0 + (t1 - t0) * max(0.0, goal - n0) / (n1 - n0)
    return samples[-1][0]


def tenths(samples: list[tuple[float, int]], total: int) -> list[float]:
    """Trials/s over each tenth of the trials (from k/10 to (k+1)/10 of them stored)."""
    times = [_reached(samples, total * k / 10) if k else next(t for t, n in samples if n > 0) for k in range(11)]
    return [(total / 10) / max(b - a, 1e-3) for a, b in zip(times, times[1:])]


def _warm(args) -> None:
    """Import torch and the trial code and train one trial (the data loads once per process), then
    wait for every process: the ceiling times training only, as a run's workers are warm after
    their first task."""
    import torch

    from sensitivity.train import run_trial

    barrier, record = args
    torch.set_num_threads(1)
    run_trial(record)
    barrier.wait()


def _train(arrays):
    from sensitivity.fused import run_fused
    from sensitivity.train import run_trial

    done = 0
    for array in arrays:
        done += len(run_fused(array)) if len(array) > 1 else len([run_trial(array[0])])
    return done


def ceiling(path: Path, cpus: int) -> float:
    """Trials/s of the same arrays trained in-process with run_fused, one process per core."""
    from sensitivity.fused.plan import cut
    from sensitivity.study import load_study

    records = load_study(path).trials()
    arrays, solo = cut(records, "auto", slots=cpus)
    work = arrays + [[r] for r in solo]
    shares = [work[k::cpus] for k in range(cpus)]
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(cpus) as pool:
        barrier = manager.Barrier(cpus)
        pool.map(_warm, [(barrier, records[0])] * cpus, chunksize=1)  # one each: the barrier waits for all
        start = time.perf_counter()
        done = sum(pool.map(_train, shares, chunksize=1))
        return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100_000)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--train-fraction", type=float, default=1.0,
                        help="train on this fraction of digits (0.01: a near-trivial trial, for the driver's limits)")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the in-process ceiling and the plot")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sensitivity-scale-") as tmp:
        tmp = Path(tmp)
        path = tmp / "scale.yaml"
        path.write_text(yaml.safe_dump(study(args.trials, args.train_fraction)))
        start = time.perf_counter()
        subprocess.run([str(BIN / "sensitivity"), "validate", str(path)], check=True, capture_output=True)
        validate = time.perf_counter() - start
        from sensitivity.study import load_study

        total = sum(load_study(path).counts())
        print(f"{total} trials: {len(ENTRIES)} entries x {total // len(ENTRIES) // SEEDS} lr x {SEEDS} seeds; "
              f"{args.cpus} cores")
        print(f"validate              {validate:8.1f} s    (target <= 5 s)")
        result = run(path, tmp / "out", total)
        first = next(t for t, n in result["samples"] if n > 0)
        print(f"first trial stored    {first:8.1f} s    (target <= 15 s)")
        rates = tenths(result["samples"], total)
        print("trials/s per tenth    " + " ".join(f"{r:.0f}" for r in rates))
        print(f"last / second tenth   {rates[-1] / rates[1]:8.2f}      (target >= 0.9)")
        print(f"driver peak RSS       {result['peak'] / 2**30:8.2f} GB   (target <= 1.5 GB)")
        *during, after = rss_by_tenth(result["rss"], total)
        print("driver RSS per tenth  " + " ".join(f"{v / 2**30:.2f}" for v in during)
              + f" GB; after the last trial {after / 2**30:.2f} GB")
        # what one driver process spends per trial: on a cluster, the most trials/s one head core sustains
        print(f"driver CPU            {result['cpu']:8.1f} s    {total / max(result['cpu'], 1e-9):.0f} trials "
              f"per driver CPU-second")
        end_to_end = total / result["elapsed"]
        table = pq.read_table(tmp / "out" / "scale" / "trials.parquet", columns=["trial_id"])
        once = table.num_rows == total and len(set(table.column("trial_id").to_pylist())) == total
        print(f"run                   {result['elapsed']:8.1f} s    {end_to_end:.0f} trials/s; every trial once: {once}")
        if args.no_ceiling:
            return
        limit = ceiling(path, args.cpus)
        steady = total / max(result["elapsed"] - first, 1e-9)  # once the first trial is stored
        print(f"in-process ceiling    {limit:8.0f} trials/s; end to end / ceiling {end_to_end / limit:.2f} "
              f"(target >= 0.8); from the first trial on {steady:.0f} trials/s, {steady / limit:.2f} of it")
        start = time.perf_counter()
        subprocess.run([str(BIN / "sensitivity"), "plot", str(tmp / "out" / "scale")], check=True,
                       capture_output=True)
        print(f"plot                  {time.perf_counter() - start:8.1f} s")


if __name__ == "__main__":
    main()
