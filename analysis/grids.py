"""One line's grid along an axis, and every sensitivity statistic of it, vectorised over replicates.

A ``Grid`` holds a line's axis coordinates (sorted), its seeds and a (points × seeds) matrix of
one loss metric (NaN where a seed did not run a point or errored, +inf where it diverged without
a minimum). ``statistics`` turns a (replicates × points) matrix of grid means, the point estimate
or seed-bootstrap replicates (``analysis.bootstrap``), into every statistic at once, lower is
better throughout.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .axes import from_axis, min_values
from .bootstrap import grid_means, rng_for, seed_counts
from .robustness import expected_best_of

__all__ = ["Grid", "grids", "statistics", "batch_statistics", "resolution", "statistic_names", "tolerance_name"]

BATCH = 64  # grids per batch_statistics call: (64 × 1000 replicates × points) arrays stay small
IDENT = ("series", "label", "variant", "decay", "axis", "scale", "at", "line", "lr", "beta")


def tolerance_name(rtol: float, atol: float) -> str:
    if rtol and atol:
        return f"valley_width@rtol={rtol:g},atol={atol:g}"
    return f"valley_width@rtol={rtol:g}" if rtol else f"valley_width@atol={atol:g}"


def statistic_names(axis: str, *, tolerances, ks, with_l0: bool = True) -> list[str]:
    return [f"best_{axis}", "best_loss", *[tolerance_name(r, a) for r, a in tolerances],
            *[f"expected_best@k={k}" for k in ks], *([f"{axis}_sensitivity"] if with_l0 else [])]


def init_column(metric: str) -> str:
    return "init_" + metric.split("_", 1)[1]  # min_train_loss -> init_train_loss


@dataclass
class Grid:
    """One line of one metric: ``values[p, s]`` is seed ``seeds[s]``'s value at ``x[p]``."""

    ident: dict
    task: dict
    metric: str
    x: np.ndarray
    seeds: np.ndarray
    values: np.ndarray
    l0: float  # mean loss at initialization over the line's runs; NaN when the table has none

    @property
    def n_seeds(self) -> int:
        """The fewest seeds at a grid point."""
        return int((~np.isnan(self.values)).sum(axis=1).min())

    def means(self, counts: np.ndarray | None = None) -> np.ndarray:
        """(1, points) seed means, or (replicates, points) under seed ``counts`` (replicates, seeds)."""
        return grid_means(self.values, np.ones((1, len(self.seeds))) if counts is None else counts)

    def counts(self, n_boot: int, seed: int, cache: dict | None = None) -> np.ndarray:
        """Bootstrap counts over this grid's seeds, drawn from an RNG keyed by the task and the seeds.

        Lines of one task that ran the same seeds draw the same counts, so their replicates are
        paired by seed as they stand (``analysis.comparisons`` subtracts them); ``cache`` keeps one
        array per key.
        """
        key = (n_boot, seed, tuple(sorted(self.task.items())), tuple(self.seeds.tolist()))
        cache = {} if cache is None else cache
        if key not in cache:
            cache[key] = seed_counts(len(self.seeds), n_boot, rng_for(seed, *key[2:]))
        return cache[key]


def grids(frame: pd.DataFrame, *, axis: str, metric: str) -> list[Grid]:
    """The grids of every line in ``frame`` (``axis_frame(trials, axis)``) with ``min_values(axis)`` or
    more values of ``metric``."""
    frame = frame[(frame["status"] != "error") & frame[metric].notna()] if metric in frame else frame.iloc[:0]
    if frame.empty:
        return []
    line, names = pd.factorize(frame["line"], sort=True)
    x, seed, value = frame["x"].to_numpy(float), frame["seed"].to_numpy(), frame[metric].to_numpy(float)
    init = init_column(metric)
    l0 = frame[init].astype(float).where(np.isfinite(frame[init].astype(float))) if init in frame else None
    l0 = l0.groupby(line).mean().to_numpy() if l0 is not None else np.full(len(names), np.nan)
    order = np.lexsort((seed, x, line))
    bounds = np.searchsorted(line[order], np.arange(len(names) + 1))
    columns = {k: frame[k].to_numpy() for k in (*IDENT, "task") if k in frame}  # rows by position, not .iloc
    out = []
    for k in range(len(names)):
        rows = order[bounds[k]:bounds[k + 1]]
        xs, xi = np.unique(x[rows], return_inverse=True)
        if len(xs) < min_values(axis):
            continue
        seeds, si = np.unique(seed[rows], return_inverse=True)
        first = rows[0]
        ident = {c: columns[c][first] if c in columns else np.nan for c in IDENT}
        ident.update(axis=axis, lr=ident["lr"] if axis != "lr" else np.nan,
                     beta=ident["beta"] if axis != "beta" else np.nan)
        out.append(Grid(ident=ident, task=columns["task"][first], metric=metric, x=xs, seeds=seeds,
                        values=_cell_means(value[rows], xi, si, (len(xs), len(seeds))), l0=float(l0[k])))
    return out


def _cell_means(values: np.ndarray, row: np.ndarray, col: np.ndarray, shape) -> np.ndarray:
    """Mean of the values that fall on each (point, seed) cell, +inf if one is, NaN where none do."""
    total, n, inf = np.zeros(shape), np.zeros(shape), np.zeros(shape, dtype=bool)
    infinite = np.isinf(values)
    np.add.at(total, (row, col), np.where(infinite, 0.0, values))
    np.add.at(n, (row, col), 1.0)
    np.logical_or.at(inf, (row, col), infinite)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = total / n
    means[inf] = np.inf
    return means


def _bounds(x: np.ndarray, Y: np.ndarray, threshold: np.ndarray, i: np.ndarray):
    """Per row: the interval around x[i] where piecewise-linear Y stays ≤ threshold, and the run's
    first and last grid index (``robustness.valley_width``'s rule, row by row at once)."""
    rows, P = np.arange(len(Y)), len(x)
    idx = np.arange(P)[None, :]
    inside = Y <= threshold[:, None]  # NaN and +inf are outside
    left_out = np.where(~inside & (idx < i[:, None]), idx, -1).max(axis=1)
    right_out = np.where(~inside & (idx > i[:, None]), idx, P).min(axis=1)
    lo, hi = left_out + 1, right_out - 1
    bounds = []
    for edge, out in ((lo, left_out), (hi, right_out)):
        on_grid = (out >= 0) & (out < P)
        o = np.clip(out, 0, P - 1)
        y_in, y_out = Y[rows, edge], Y[rows, o]
        cross = on_grid & np.isfinite(y_out)
        with np.errstate(invalid="ignore", divide="ignore"):  # rows without a crossing: discarded below
            frac = (threshold - y_in) / (y_out - y_in)
            bounds.append(np.where(cross, x[edge] + frac * (x[o] - x[edge]), x[edge]))
    return bounds[0], bounds[1], lo, hi


def statistics(x: np.ndarray, Y: np.ndarray, *, axis: str, scale: str, l0, cap: float, tolerances,
               ks) -> dict[str, np.ndarray]:
    """Every statistic of each row of grid means ``Y`` (rows: the estimate or bootstrap replicates).

    ``l0`` is one loss at initialization for all rows or one per row (NaN: unknown). A row
    without a finite mean gets NaN everywhere, except its best loss: +inf where every point it
    ran diverged (such a line is reported, and ranks last). ``cap`` stands in for L0 where it is
    unknown (the worst finite mean of the metric in the table), for the expected best only; without
    any L0 there is no sensitivity.
    """
    Y = np.atleast_2d(Y)
    l0 = np.broadcast_to(np.asarray(l0, dtype=float), (len(Y),))[:, None]
    known = np.isfinite(l0[:, 0])
    finite = np.isfinite(Y)
    has = finite.any(axis=1)
    i = np.where(finite, Y, np.inf).argmin(axis=1)  # first minimum: the smaller value on a tie
    # a row that diverged at every point it ran has +inf for its best loss, so the line is reported
    best = np.where(has, Y[np.arange(len(Y)), i], np.where((Y == np.inf).any(axis=1), np.inf, np.nan))
    out = {f"best_{axis}": np.where(has, from_axis(x[i], scale), np.nan), "best_loss": best}
    for rtol, atol in tolerances:
        with np.errstate(invalid="ignore"):  # (rows without a finite mean, NaN below)
            low, high, _, _ = _bounds(x, Y, best + atol + rtol * np.abs(best), i)
        out[tolerance_name(rtol, atol)] = np.where(has, high - low, np.nan)
    # worse than initialization is as bad as not training: min(loss, L0), as the sensitivity counts it
    at_most_l0 = np.minimum(Y, l0)
    capped = np.where(known[:, None], at_most_l0, np.where(finite, Y, cap))
    ok = has & np.isfinite(capped).all(axis=1)
    for k in ks:
        expected = np.full(len(Y), np.nan)
        if ok.any():
            expected[ok] = expected_best_of(capped[ok], k)[0]
        out[f"expected_best@k={k}"] = expected
    if known.any():
        with np.errstate(invalid="ignore"):
            out[f"{axis}_sensitivity"] = np.where(has & known, at_most_l0.mean(axis=1) - best, np.nan)
    return out


def batch_statistics(grids: list[Grid], counts: list, **kwargs) -> list[dict[str, np.ndarray]]:
    """``statistics`` of each grid's means under its ``counts`` (None: the point estimate, one row).

    Grids that share their axis values and their counts go through one matrix product and one
    ``statistics`` call, ``BATCH`` at a time: a study's lines mostly share both, so a thousand
    lines cost a few dozen calls.
    """
    out: list = [None] * len(grids)
    groups: dict[tuple, list[int]] = {}
    for j, (g, c) in enumerate(zip(grids, counts)):
        groups.setdefault((g.x.tobytes(), len(g.seeds), None if c is None else id(c)), []).append(j)
    for members in groups.values():
        for start in range(0, len(members), BATCH):
            chunk = members[start:start + BATCH]
            first = grids[chunk[0]]
            c = np.ones((1, len(first.seeds))) if counts[chunk[0]] is None else counts[chunk[0]]
            means = grid_means(np.vstack([grids[j].values for j in chunk]), c)  # (replicates, lines × points)
            R, P = len(c), len(first.x)
            Y = means.reshape(R, len(chunk), P).transpose(1, 0, 2).reshape(len(chunk) * R, P)
            stats = statistics(first.x, Y, l0=np.repeat([grids[j].l0 for j in chunk], R), **kwargs)
            for m, j in enumerate(chunk):
                out[j] = {k: v[m * R:(m + 1) * R] for k, v in stats.items()}
    return out


def resolution(x: np.ndarray, y: np.ndarray, *, axis: str, max_gap: float | None, tolerances,
               ks) -> dict[str, bool]:
    """Whether each statistic's edges lie on the grid, bracketed by points at most ``max_gap`` apart
    (in the axis's coordinates; None: any gap, as on a linear axis)."""
    finite = np.isfinite(y)
    if not finite.any():
        return {}
    i = int(np.argmin(np.where(finite, y, np.inf)))

    def bracketed(j: int, step: int) -> bool:  # the gap between grid point j and its outer neighbour
        k = j + step
        return 0 <= k < len(x) and (max_gap is None or abs(x[k] - x[j]) <= max_gap + 1e-9)

    best = bracketed(i, -1) and bracketed(i, 1)
    out = {f"best_{axis}": best, "best_loss": best, f"{axis}_sensitivity": best}
    for rtol, atol in tolerances:
        threshold = np.array([y[i] + atol + rtol * abs(y[i])])
        _, _, lo, hi = _bounds(x, y[None, :], threshold, np.array([i]))
        out[tolerance_name(rtol, atol)] = bracketed(int(lo[0]), -1) and bracketed(int(hi[0]), 1)
    out.update({f"expected_best@k={k}": best for k in ks})  # it approaches the grid minimum
    return out
