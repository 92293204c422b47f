"""Results store: does a flush cost the same at the end of a large study as at its start?

Appends N trial rows with E curve rows each (the per-epoch curve of an E-epoch trial) to one
`ResultsStore`, in flushes of F trials, the way the driver's recorder flushes finished bundles.
Times each `append` alone (building the row dicts is not timed), then the compaction that ends
a run, then loading the full tables: from the parts (a run cut short) and from the compacted
files, with `sensitivity.results.load` and with `analysis.load`.

Prints the time of the first and the last 1% of flushes and their ratio. Target: last/first
<= 1.5 (a flush writes new part files only; rewriting whole tables made this grow with N).

    python benchmarks/results_store.py                        # 100,000 trials x 200 epochs, flushes of 100
    python benchmarks/results_store.py --trials 10000         # a quick look
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from sensitivity.results import ResultsStore, load


def _rows(first: int, count: int, epochs: int) -> tuple[list[dict], list[dict]]:
    rows, curves = [], []
    for n in range(first, first + count):
        tid = f"{n:016x}"
        rows.append({"trial_id": tid, "study": "bench", "dataset": "mnist", "model": "mlp", "optimizer": "adam-hd",
                     "label": "adam-hd", "lr": 1e-3 * (1 + n % 7), "beta": 1e-7 * (1 + n % 5), "decay": None,
                     "seed": n % 10, "batch_size": 128, "epochs": epochs, "weight_decay": 0.0, "status": "ok",
                     "min_train_loss": 0.1, "min_test_loss": 0.2, "final_train_loss": 0.1, "final_test_loss": 0.2,
                     "best_test_acc": 0.97, "final_test_acc": 0.96, "final_lr": 1e-3, "epochs_completed": epochs,
                     "steps": epochs * 469, "wall_time_s": 12.5, "error": None, "node": "n0", "host": "h:127.0.0.1"})
        for e in range(1, epochs + 1):
            curves.append({"trial_id": tid, "epoch": e, "step": e * 469, "train_loss": 1.0 / e,
                           "test_loss": 1.1 / e, "train_acc": 1 - 0.5 / e, "test_acc": 1 - 0.6 / e, "lr": 1e-3})
    return rows, curves


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--flush", type=int, default=100, help="trials per flush")
    parser.add_argument("--dir", help="where the tables go (default: a temporary directory, removed after)")
    args = parser.parse_args()
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="results-bench-"))
    location = root / "bench"
    try:
        store = ResultsStore(location)
        times = []
        start = time.perf_counter()
        for first in range(0, args.trials, args.flush):
            rows, curves = _rows(first, min(args.flush, args.trials - first), args.epochs)
            t0 = time.perf_counter()
            store.append(rows, curves)
            times.append(time.perf_counter() - t0)
        total = time.perf_counter() - start
        tail = max(1, len(times) // 100)
        head_s, tail_s = sum(times[:tail]), sum(times[-tail:])
        print(f"results store: {args.trials} trials x {args.epochs} curve rows, {len(times)} flushes of "
              f"{args.flush} trials ({args.trials * args.epochs / 1e6:.1f} M curve rows)")
        print(f"  flush: median {statistics.median(times) * 1e3:.1f} ms; first 1% ({tail} flushes) "
              f"{head_s:.2f} s, last 1% {tail_s:.2f} s: last/first = {tail_s / head_s:.2f} (target <= 1.5)")
        print(f"  all flushes: {sum(times):.1f} s (with building the rows: {total:.1f} s)")

        t0 = time.perf_counter()
        trials, curves = load(location)
        print(f"  load from parts (a run cut short): {time.perf_counter() - t0:.1f} s "
              f"({len(trials)} trials, {len(curves)} curve rows)")
        del trials, curves
        t0 = time.perf_counter()
        ResultsStore(location).compact()
        print(f"  compact (end of a run, or `sensitivity compact`): {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        trials, curves = load(location)
        print(f"  load compacted tables: {time.perf_counter() - t0:.1f} s")
        del trials, curves
        import analysis

        t0 = time.perf_counter()
        trials, curves = analysis.load(location)
        print(f"  analysis.load: {time.perf_counter() - t0:.1f} s; peak memory {_rss_gib():.1f} GiB")
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
