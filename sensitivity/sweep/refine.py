"""Adaptive α0 refinement of a grid study: ``refine: {rounds: R, resolution: r, tolerance: t}``.

After the grid, each series (an entry's configuration with every axis but lr fixed, all seeds)
gets new α0 points at the log midpoint of every bracket wider than r decades that holds

- the best α0: the gaps between the best grid point and its two neighbours, and
- a valley edge: the gap between the first/last point of the valley and its outer neighbour,

for up to R rounds, each an ordinary grid run (resume, exactly-once rows) whose rows carry
``round``. The rule is analysis.robustness.valley_width's (this package never imports analysis):
per α0 the mean over seeds of ``metric`` (errored seeds left out; one diverged seed makes the
mean +inf), the best is the lowest finite mean (the smaller α0 on a tie), and the valley is the
contiguous run of points around it with mean ≤ best + tolerance·|best|. Edges off the grid are
not chased (refinement only splits brackets inside it).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from sensitivity.record import TrialRecord

__all__ = ["plan", "series_key", "refine_rounds"]


def _midpoint(a: float, b: float) -> float:
    """The log midpoint, to 4 significant digits: stable trial ids and readable α0 values."""
    return float(f"{math.sqrt(a * b):.4g}")


def _span(y: np.ndarray, threshold: float, i: int) -> tuple[int, int]:
    lo = hi = i
    while lo > 0 and y[lo - 1] <= threshold:
        lo -= 1
    while hi + 1 < len(y) and y[hi + 1] <= threshold:
        hi += 1
    return lo, hi


def plan(rows: pd.DataFrame, *, resolution: float, tolerance: float, metric: str = "min_train_loss",
         key: str = "series") -> dict:
    """New α0 points per series: {series: sorted lrs}; series with nothing to split are absent.

    ``rows``: one per trial with columns ``key``, ``lr``, ``status`` and ``metric``.
    """
    out = {}
    ran = rows[rows["status"] != "error"]
    for series, group in ran.groupby(key, sort=True):
        values = group[metric].astype(float)
        means = values.groupby(group["lr"].astype(float)).mean().sort_index()  # inf if a seed is inf
        lrs, y = means.index.to_numpy(float), means.to_numpy(float)
        finite = np.isfinite(y)
        if len(lrs) < 2 or not finite.any():
            continue
        i = int(np.argmin(np.where(finite, y, np.inf)))
        lo, hi = _span(y, y[i] + tolerance * abs(y[i]), i)
        brackets = {(i - 1, i), (i, i + 1), (lo - 1, lo), (hi, hi + 1)}
        x = np.log10(lrs)
        new = {_midpoint(lrs[a], lrs[b]) for a, b in brackets
               if 0 <= a and b < len(lrs) and x[b] - x[a] > resolution + 1e-9}
        new -= set(lrs)
        if new:
            out[series] = sorted(new)
    return out


def series_key(record: TrialRecord) -> str:
    """One series: the trial's identity without α0 and seed."""
    return record.series_key()


def refine_rounds(refine, store, grid: list[TrialRecord], run: Callable[[list[TrialRecord], int], None]
                  ) -> list[TrialRecord]:
    """Run up to ``refine.rounds`` rounds after ``grid``; return the configs they added.

    ``run(configs, round)`` runs the configs not yet in the store (resume and exactly-once as for
    the grid). Round k is planned from the rows of the grid and rounds < k only, so a resumed run
    plans the same points; refinement stops where a planned trial did not finish (rerun to resume).
    """
    known = {r.trial_id: r.series_key() for r in grid}
    seeds: dict[str, dict[int, TrialRecord]] = {}
    for r in grid:
        seeds.setdefault(known[r.trial_id], {}).setdefault(r.seed, r)
    added: list[TrialRecord] = []
    for round_ in range(1, refine.rounds + 1):
        trials = store.trials
        if trials is None or not set(known) <= set(trials["trial_id"]):
            break  # a trial of an earlier round is missing: resume it first
        rows = trials[trials["trial_id"].isin(known)].assign(series=lambda t: t["trial_id"].map(known))
        points = plan(rows, resolution=refine.resolution, tolerance=refine.tolerance, metric=refine.metric)
        batch = [template.replace(lr=lr) for series, lrs in points.items() for lr in lrs
                 for template in seeds[series].values()]
        if not batch:
            break
        run(batch, round_)
        known.update({r.trial_id: r.series_key() for r in batch})
        added.extend(batch)
    return added
