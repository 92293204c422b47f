"""Sensitivity metrics with 95% bootstrap intervals over seeds (``metrics.csv`` of ``sensitivity plot``).

One row per series × β × loss metric × statistic, for every series run at two or more α0:

- ``best_lr``, ``best_loss``: the α0 with the lowest mean over seeds, and that mean;
- ``valley_width@rtol=…`` / ``valley_width@atol=…``: ``robustness.valley_width`` (decades of α0
  around the best within the tolerance), one statistic per tolerance;
- ``expected_best@k=…``: the expected best mean after k random draws from the α0 grid
  (Dodge et al. 2019), each point counting as min(loss, L0) (without L0 in the rows: a diverged
  point counts as the worst finite mean of the metric in the table);
- ``lr_sensitivity`` (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer
  training instabilities"): the mean over the α0 grid of min(loss(α0), L0) − min over α0 of loss,
  with L0 the loss at initialization (``init_train_loss``/``init_test_loss``), so a diverged point
  counts as L0. Lower is less sensitive.

Intervals: resample the seeds of every grid point with replacement, recompute the statistic from
the resampled means, take the 2.5% and 97.5% quantiles over ``n_boot`` replicates. The RNG of each
(series, β, metric) is seeded from ``seed`` and that key, so the output is reproducible and does not
depend on which other series are in the table. With one seed per point there is nothing to
resample: the interval is NaN.

``resolved`` is False where the statistic depends on an edge that lies off the grid, or between
two grid points more than ``max_gap`` decades apart: ``best_lr``/``best_loss`` when the best α0 is
the first or last grid point or a neighbour is more than ``max_gap`` away; a valley width when an
edge is censored or bracketed by a gap wider than ``max_gap``. ``expected_best`` and
``lr_sensitivity`` approach or subtract the grid minimum, so they follow ``best_lr``.
"""
from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from .columns import prepare
from .robustness import _interval, expected_best_of, valley_span
from .stats import LOSSES

__all__ = ["metrics_table", "metrics_summary", "MAX_GAP", "TOLERANCES", "KS"]

MAX_GAP = 0.5  # decades: an edge between grid points further apart than this is not resolved
TOLERANCES = ((0.1, 0.0), (0.0, 0.05))  # (rtol, atol): within 10% of the best, within 0.05 nats
KS = (1, 4)
COLUMNS = ["series", "label", "variant", "decay", "beta", "metric", "statistic", "value", "ci_low", "ci_high",
           "resolved", "n_lr", "n_seeds", "max_gap"]


def _init_column(metric: str) -> str:
    return "init_" + metric.split("_", 1)[1]  # min_train_loss -> init_train_loss


def _tolerance_name(rtol: float, atol: float) -> str:
    if rtol and atol:
        return f"valley_width@rtol={rtol:g},atol={atol:g}"
    return f"valley_width@rtol={rtol:g}" if rtol else f"valley_width@atol={atol:g}"


class _Grid:
    """One series' α0 grid: log10 α0 (sorted) and the per-point seed values (errors left out)."""

    def __init__(self, lr: np.ndarray, values: list[np.ndarray]):
        self.x, self.values = np.log10(lr), values

    def means(self) -> np.ndarray:
        return np.array([v.mean() for v in self.values])  # +inf when any seed diverged without a minimum

    def resample(self, rng: np.random.Generator, n_boot: int) -> np.ndarray:
        """(n_boot, n_points) means of the seeds of every point, resampled with replacement."""
        out = np.empty((n_boot, len(self.values)))
        for j, v in enumerate(self.values):
            out[:, j] = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
        return out


def _best(y: np.ndarray) -> int | None:
    finite = np.isfinite(y)
    return int(np.argmin(np.where(finite, y, np.inf))) if finite.any() else None  # first: smaller lr on a tie


def _statistics(x: np.ndarray, Y: np.ndarray, *, l0: float, cap: float, tolerances, ks) -> dict[str, np.ndarray]:
    """Every statistic of each row of per-α0 means ``Y`` (rows: the estimate or bootstrap replicates).

    Lower is better. A row without a finite mean gets NaN everywhere.
    """
    Y = np.atleast_2d(Y)
    finite = np.isfinite(Y)
    has = finite.any(axis=1)
    i = np.where(finite, Y, np.inf).argmin(axis=1)  # first minimum: the smaller lr on a tie
    best = np.where(has, Y[np.arange(len(Y)), i], np.nan)
    out = {"best_lr": np.where(has, 10.0 ** x[i], np.nan), "best_loss": best}
    for rtol, atol in tolerances:
        widths = np.full(len(Y), np.nan)
        for r in np.flatnonzero(has):  # robustness.valley_width's own interval, replicate by replicate
            low, high, _ = _interval(x, Y[r], best[r] + atol + rtol * abs(best[r]), int(i[r]))
            widths[r] = high - low
        out[_tolerance_name(rtol, atol)] = widths
    # worse than initialization is as bad as not training: min(loss, L0), as lr_sensitivity counts it
    capped = np.minimum(Y, l0) if np.isfinite(l0) else np.where(finite, Y, cap)
    ok = has & np.isfinite(capped).all(axis=1)
    for k in ks:
        expected = np.full(len(Y), np.nan)
        if ok.any():
            expected[ok] = expected_best_of(capped[ok], k)[0]
        out[f"expected_best@k={k}"] = expected
    if np.isfinite(l0):
        out["lr_sensitivity"] = np.where(has, np.minimum(Y, l0).mean(axis=1) - best, np.nan)
    return out


def _resolution(x: np.ndarray, y: np.ndarray, *, max_gap: float, tolerances) -> dict[str, bool]:
    """Whether each statistic's edges lie on the grid, bracketed by points at most max_gap apart."""
    i = _best(y)
    if i is None:
        return {}
    def bracketed(j: int, step: int) -> bool:  # the gap between grid point j and its outer neighbour
        k = j + step
        return 0 <= k < len(x) and abs(x[k] - x[j]) <= max_gap + 1e-9

    best = bracketed(i, -1) and bracketed(i, 1)
    out = {"best_lr": best, "best_loss": best, "lr_sensitivity": best}
    for rtol, atol in tolerances:
        lo, hi = valley_span(y, y[i] + atol + rtol * abs(y[i]), i)
        out[_tolerance_name(rtol, atol)] = bracketed(lo, -1) and bracketed(hi, 1)
    out["expected_best"] = best
    return out


def metrics_table(trials: pd.DataFrame, *, metrics=LOSSES, tolerances=TOLERANCES, ks=KS, max_gap: float = MAX_GAP,
                  n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """The statistics of every swept series with bootstrap intervals over seeds; see the module docstring.

    ``trials`` is the trials table (``analysis.load``), one row per seed. Columns: series, label,
    variant, decay, beta, metric, statistic, value, ci_low, ci_high, resolved, n_lr (grid points),
    n_seeds (fewest seeds at a grid point), max_gap.
    """
    bad = [m for m in metrics if m not in LOSSES and not m.endswith("_loss")]
    if bad:
        raise ValueError(f"metrics must be loss columns such as {', '.join(LOSSES)}; got {', '.join(bad)}")
    if not 0 < level < 1 or n_boot < 1 or max_gap <= 0:
        raise ValueError(f"need 0 < level < 1, n_boot >= 1 and max_gap > 0; got {level}, {n_boot}, {max_gap}")
    trials = prepare(trials)
    ran = trials[trials["status"] != "error"]
    rows = []
    for metric in metrics:
        values = ran[metric].astype(float)
        finite = values[np.isfinite(values)]
        worst = float(finite.max()) if len(finite) else np.nan  # the expected-best cap where L0 is unknown
        init = _init_column(metric)
        for (series, beta), group in ran.assign(_v=values).groupby(["series", "beta"], dropna=False, sort=True):
            group = group[group["_v"].notna()]
            if group["lr"].nunique() < 2:
                continue  # one α0: nothing to be sensitive to
            by_lr = group.groupby("lr", sort=True)["_v"]
            grid = _Grid(np.array(list(by_lr.groups), dtype=float), [g.to_numpy(float) for _, g in by_lr])
            l0s = group[init].astype(float) if init in group else pd.Series(dtype=float)
            l0s = l0s[np.isfinite(l0s)]
            l0 = float(l0s.mean()) if len(l0s) else np.nan
            kwargs = dict(l0=l0, cap=worst, tolerances=tolerances, ks=ks)
            y = grid.means()
            point = {name: v[0] for name, v in _statistics(grid.x, y, **kwargs).items() if not np.isnan(v[0])}
            resolved = _resolution(grid.x, y, max_gap=max_gap, tolerances=tolerances)
            n_seeds = min(len(v) for v in grid.values)
            boot: dict[str, np.ndarray] = {}
            if n_seeds > 1 and point:
                key = zlib.crc32(f"{series}|{beta}|{metric}".encode())
                rng = np.random.default_rng([seed, key])
                boot = _statistics(grid.x, grid.resample(rng, n_boot), **kwargs)
            ident = group.iloc[0]
            for name, value in point.items():
                reps = boot.get(name, np.array([]))
                reps = reps[~np.isnan(reps)]
                if len(reps) and len(reps) >= n_boot / 2:  # most replicates define it
                    low, high = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
                else:
                    low = high = np.nan
                rows.append({"series": series, "label": ident["label"], "variant": ident["variant"],
                             "decay": ident["decay"], "beta": beta, "metric": metric, "statistic": name,
                             "value": float(value), "ci_low": float(low), "ci_high": float(high),
                             "resolved": bool(resolved["expected_best" if name.startswith("expected_best")
                                                       else name]),
                             "n_lr": len(grid.x), "n_seeds": n_seeds, "max_gap": float(max_gap)})
    return pd.DataFrame(rows, columns=COLUMNS)


def metrics_summary(table: pd.DataFrame) -> pd.DataFrame:
    """``metrics_table`` for reading, wide: one row per (series, β, metric), one column per statistic.

    Cells read "value [ci_low, ci_high]" (just the value without an interval); a value that is not
    ``resolved`` ends with " ?".
    """
    def cell(r) -> str:
        text = f"{r.value:.3g}"
        if np.isfinite(r.ci_low):
            text += f" [{r.ci_low:.3g}, {r.ci_high:.3g}]"
        return text if r.resolved else text + " ?"

    keys = ["metric", "series", "beta"]
    if table.empty:
        return pd.DataFrame(columns=["metric", "optimizer", "β"])
    cells = table.assign(cell=[cell(r) for r in table.itertuples(index=False)], beta=table["beta"].fillna(-1.0))
    wide = cells.pivot(index=keys, columns="statistic", values="cell")
    order = list(dict.fromkeys(table["statistic"]))
    wide = wide[order].reset_index()
    rank = {m: i for i, m in enumerate(dict.fromkeys(table["metric"]))}  # the table's metric order, not a-z
    wide = wide.sort_values("metric", key=lambda m: m.map(rank), kind="stable").reset_index(drop=True)
    wide["beta"] = wide["beta"].where(wide["beta"] >= 0, np.nan)  # -1 stood in for "no β" (NaN cannot be a key)
    wide.columns.name = None
    wide[order] = wide[order].fillna("—")  # a statistic that series lacks (no L0: no lr_sensitivity)
    return wide.rename(columns={"series": "optimizer", "beta": "β"})
