"""Sensitivity metrics over every swept axis with 95% seed-bootstrap intervals (``metrics.csv``).

One row per axis × line × loss metric × statistic, for every line with two or more α0, or three
or more values of any other axis (``analysis.axes``: which lines there are, and each axis's scale):

- ``best_<axis>``, ``best_loss``: the axis value with the lowest mean over seeds, and that mean;
- ``valley_width@rtol=…`` / ``valley_width@atol=…``: the width of the contiguous range around
  the best where the mean stays within the tolerance, the mean interpolated linearly in the axis's
  coordinates; in decades on a ``log`` axis (of 1 − value on ``log1m``), in the axis's own units
  on a ``linear`` one (the ``scale`` column says which);
- ``expected_best@k=…``: the expected best mean after k random draws from the grid (Dodge et al.
  2019), each point counting as min(loss, L0) (without L0 in the rows: a diverged point counts as
  the worst finite mean of the metric in the table);
- ``<axis>_sensitivity`` (``lr_sensitivity`` is Wortsman et al. 2023, "Small-scale proxies for
  large-scale Transformer training instabilities"; taken over any axis): the mean over the grid
  of min(loss, L0) − min over the grid of loss, with L0 the loss at initialization
  (``init_train_loss``/``init_test_loss``), so a diverged point counts as L0. Lower is less sensitive.

Intervals come from ``analysis.bootstrap``: seeds are drawn with replacement, each with all its
runs on the line, ``n_boot`` times, and the interval is the value ± sqrt(n/(n − 1))·t(n − 1)·SE,
the SE the replicates' standard deviation and n the line's seeds (``t_interval``): with 3 seeds
no percentile of the replicates can cover 95%, since they never leave the range of the seeds'
own values (tested: about 95% coverage with 3 to 10 seeds). ``best_<axis>`` is taken in the
axis's coordinates and kept within the grid; losses and widths are at least 0. With one seed at a
grid point the interval is NaN.

``resolved`` is False where the statistic depends on an edge that lies off the grid, or (on a
log axis) between two grid points more than ``max_gap`` decades apart: ``best_<axis>``,
``best_loss`` when the best is the first or last grid point or a neighbour is more than
``max_gap`` away; a valley width when an edge is censored or bracketed by a wider gap. The
expected best and the sensitivity approach or subtract the grid minimum, so they follow the best.
A linear axis has no unit to measure a gap against: only its edges count.

``at_best`` marks, per series, axis and metric, the line through the series' best configuration
(its lowest ``best_loss``): HD's β at which the α0 line is best, the α0 at which a momentum line
is. Comparisons and the report's ranking use those lines.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .axes import axis_frame, axis_frames, candidate_axes, from_axis, to_axis
from .bootstrap import t_interval
from .columns import prepare
from .grids import Grid, batch_statistics, grids, resolution, statistic_names
from .stats import LOSSES

__all__ = ["metrics_table", "metrics_summary", "evaluate", "evaluate_all", "metrics_from", "MAX_GAP", "TOLERANCES",
           "KS"]

MAX_GAP = 0.5  # decades: an edge between grid points further apart than this is not resolved
TOLERANCES = ((0.1, 0.0), (0.0, 0.05))  # (rtol, atol): within 10% of the best, within 0.05 nats
KS = (1, 4)
COLUMNS = ["axis", "scale", "series", "label", "variant", "decay", "at", "at_best", "lr", "beta", "metric",
           "statistic", "value", "ci_low", "ci_high", "resolved", "n_values", "n_seeds", "max_gap"]


@dataclass
class Evaluated:
    """A grid, its statistics (point estimate) and their bootstrap replicates (empty: no interval)."""

    grid: Grid
    point: dict[str, float]
    replicates: dict[str, np.ndarray]
    resolved: dict[str, bool]
    settings: dict  # statistics()'s keywords, to recompute replicates under other seed counts
    at_best: bool = False


def check_settings(metrics, level: float, n_boot: int, max_gap: float) -> None:
    """ValueError (one line) for metrics that are not losses, or a bad level, n_boot or max_gap."""
    bad = [m for m in metrics if m not in LOSSES and not m.endswith("_loss")]
    if bad:
        raise ValueError(f"metrics must be loss columns such as {', '.join(LOSSES)}; got {', '.join(bad)}")
    if not 0 < level < 1 or n_boot < 1 or max_gap <= 0:
        raise ValueError(f"need 0 < level < 1, n_boot >= 1 and max_gap > 0; got {level}, {n_boot}, {max_gap}")


def evaluate(trials: pd.DataFrame, *, axis: str, metric: str, tolerances=TOLERANCES, ks=KS,
             max_gap: float = MAX_GAP, n_boot: int = 1000, seed: int = 0, frame: pd.DataFrame | None = None,
             cache: dict | None = None) -> list[Evaluated]:
    """Every line of ``axis`` for ``metric``, with statistics, replicates, resolution and ``at_best``.

    ``frame`` is ``axis_frame(trials, axis)`` where already made; ``cache`` shares seed counts.
    """
    trials = prepare(trials)
    frame = axis_frame(trials, axis) if frame is None else frame
    found = grids(frame, axis=axis, metric=metric)
    cap = worst_finite_mean(trials, metric)  # the expected-best stand-in where L0 is unknown
    kwargs = dict(axis=axis, scale=found[0].ident["scale"] if found else "log", cap=cap, tolerances=tolerances, ks=ks)
    points = batch_statistics(found, [None] * len(found), **kwargs)
    counts = [g.counts(n_boot, seed, cache) if g.n_seeds > 1 else None for g in found]
    sampled = [j for j, c in enumerate(counts) if c is not None]
    replicates = dict(zip(sampled, batch_statistics([found[j] for j in sampled], [counts[j] for j in sampled],
                                                    **kwargs)))
    gap = None if kwargs["scale"] == "linear" else max_gap
    out = []
    for j, grid in enumerate(found):
        point = {k: float(v[0]) for k, v in points[j].items() if not np.isnan(v[0])}
        resolved = resolution(grid.x, grid.means()[0], axis=axis, max_gap=gap, tolerances=tolerances, ks=ks)
        out.append(Evaluated(grid, point, replicates.get(j, {}), resolved, {**kwargs, "l0": grid.l0}))
    best: dict[str, Evaluated] = {}
    for e in out:  # the line through each series' best configuration
        name, loss = e.grid.ident["series"], e.point.get("best_loss", np.inf)
        if name not in best or loss < best[name].point.get("best_loss", np.inf):
            best[name] = e
    for e in best.values():
        e.at_best = True
    return out


def worst_finite_mean(trials: pd.DataFrame, metric: str) -> float:
    """The worst finite mean over seeds of ``metric`` among the table's configurations (a series at
    one α0 and β), errors left out, as ``robustness.expected_best`` counts a diverged one; NaN: none."""
    ran = trials[trials["status"] != "error"]
    if metric not in ran or ran.empty:
        return np.nan
    means = ran.groupby(["series", "lr", "beta"], dropna=False, sort=False)[metric].mean().to_numpy(float)
    finite = means[np.isfinite(means)]
    return float(finite.max()) if len(finite) else np.nan


def evaluate_all(trials: pd.DataFrame, *, axis=None, metrics=LOSSES, tolerances=TOLERANCES, ks=KS,
                 max_gap: float = MAX_GAP, n_boot: int = 1000, seed: int = 0,
                 frames: dict[str, pd.DataFrame] | None = None) -> dict[tuple[str, str], list[Evaluated]]:
    """``evaluate`` for every (axis, metric): what ``metrics_table`` and ``comparisons_table`` are made of.

    ``frames`` holds ``axis_frames(trials, axes)`` where already made.
    """
    trials = prepare(trials)
    axes = candidate_axes(trials) if axis is None else [axis] if isinstance(axis, str) else list(axis)
    frames = frames if frames is not None and set(axes) <= set(frames) else axis_frames(trials, axes)
    cache = {}
    return {(name, metric): evaluate(trials, axis=name, metric=metric, tolerances=tolerances, ks=ks,
                                     max_gap=max_gap, n_boot=n_boot, seed=seed, frame=frames[name], cache=cache)
            for name in axes for metric in metrics}


def metrics_table(trials: pd.DataFrame, *, axis=None, metrics=LOSSES, tolerances=TOLERANCES, ks=KS,
                  max_gap: float = MAX_GAP, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """The statistics of every swept line with bootstrap intervals over seeds; see the module docstring.

    ``trials`` is the trials table (``analysis.load``), one row per seed. ``axis`` is a column
    name (``"lr"``, ``"beta"``, ``"momentum"``, ...), a list of them, or None for α0 and every
    numeric hyperparameter column. Columns: axis, scale, series, label, variant, decay, at,
    at_best, lr, beta (the line's fixed α0 and β; NaN on their own axis or where unset), metric,
    statistic, value, ci_low, ci_high, resolved, n_values (grid points), n_seeds (fewest seeds at a
    grid point), max_gap (NaN on a linear axis).
    """
    check_settings(metrics, level, n_boot, max_gap)
    evaluated = evaluate_all(trials, axis=axis, metrics=metrics, tolerances=tolerances, ks=ks, max_gap=max_gap,
                             n_boot=n_boot, seed=seed)
    return metrics_from(evaluated, level=level, max_gap=max_gap, tolerances=tolerances, ks=ks)


def metrics_from(evaluated: dict[tuple[str, str], list[Evaluated]], *, level: float = 0.95,
                 max_gap: float = MAX_GAP, tolerances=TOLERANCES, ks=KS) -> pd.DataFrame:
    """``metrics_table`` of what ``evaluate_all`` returned."""
    rows = []
    for (name, metric), lines in evaluated.items():
        for e in lines:
            g = e.grid
            order = [s for s in statistic_names(name, tolerances=tolerances, ks=ks) if s in e.point]
            low, high = _intervals(e, order, name, level)
            ident = {k: g.ident[k] for k in ("axis", "scale", "series", "label", "variant", "decay", "at", "lr",
                                             "beta")}
            for j, stat in enumerate(order):
                rows.append({**ident, "at_best": e.at_best, "metric": metric, "statistic": stat,
                             "value": e.point[stat], "ci_low": float(low[j]), "ci_high": float(high[j]),
                             "resolved": bool(e.resolved.get(stat, False)), "n_values": len(g.x),
                             "n_seeds": g.n_seeds,
                             "max_gap": np.nan if g.ident["scale"] == "linear" else float(max_gap)})
    return pd.DataFrame(rows, columns=COLUMNS).astype({"at_best": bool, "resolved": bool})  # bool also when empty


def _intervals(e: Evaluated, order: list[str], axis: str, level: float) -> tuple[np.ndarray, np.ndarray]:
    """The t-interval of each statistic in ``order`` (see the module docstring): ``best_<axis>`` in the
    axis's coordinates and within the grid, losses and widths at least 0."""
    g = e.grid
    if not e.replicates or not order:
        return np.full(len(order), np.nan), np.full(len(order), np.nan)
    scale, best = g.ident["scale"], f"best_{axis}"
    coords = [to_axis(e.replicates[s], scale) if s == best else e.replicates[s] for s in order]
    estimate = [float(to_axis(e.point[s], scale)) if s == best else e.point[s] for s in order]
    low, high = t_interval(estimate, np.array(coords), level=level, n=len(g.seeds))
    for j, s in enumerate(order):
        if s == best:
            low[j], high[j] = from_axis(np.clip([low[j], high[j]], g.x.min(), g.x.max()), scale)
        elif s != f"{axis}_sensitivity":  # losses (cross-entropy) and widths are never negative (a
            low[j], high[j] = max(low[j], 0.0), max(high[j], 0.0)  # sensitivity is, where all is worse than L0)
    return low, high


def _generic(statistic: str, axis: str) -> str:
    """The summary's column for a statistic: ``best_<axis>`` reads "best", ``<axis>_sensitivity`` "sensitivity"."""
    return {f"best_{axis}": "best", f"{axis}_sensitivity": "sensitivity"}.get(statistic, statistic)


def metrics_summary(table: pd.DataFrame) -> pd.DataFrame:
    """``metrics_table`` for reading, wide: one row per (metric, axis, series, at), one column per statistic.

    ``best_<axis>`` and ``<axis>_sensitivity`` share the columns "best" and "sensitivity". Cells
    read "value [ci_low, ci_high]" (just the value without an interval); a value that is not
    ``resolved`` ends with " ?".
    """
    columns = ["metric", "axis", "optimizer", "at"]
    if table.empty:
        return pd.DataFrame(columns=columns)

    def cell(r) -> str:
        text = f"{r.value:.3g}"
        if np.isfinite(r.ci_low):
            text += f" [{r.ci_low:.3g}, {r.ci_high:.3g}]"
        return text if r.resolved else text + " ?"

    generic = [_generic(s, a) for s, a in zip(table["statistic"], table["axis"])]
    cells = table.assign(cell=[cell(r) for r in table.itertuples(index=False)], statistic=generic)
    keys = ["metric", "axis", "series", "at"]
    wide = cells.pivot(index=keys, columns="statistic", values="cell")
    order = list(dict.fromkeys(generic))
    wide = wide[order].reset_index()
    # the table's order of (metric, axis), not a-z
    rank = {k: i for i, k in enumerate(dict.fromkeys(zip(table["metric"], table["axis"])))}
    wide["_rank"] = [rank[k] for k in zip(wide["metric"], wide["axis"])]
    wide = wide.sort_values("_rank", kind="stable").drop(columns="_rank").reset_index(drop=True)
    wide.columns.name = None
    wide[order] = wide[order].fillna("—")  # a statistic that line lacks (no L0: no sensitivity)
    return wide.rename(columns={"series": "optimizer"})
