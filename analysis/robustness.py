"""Robustness metrics: how hard an optimizer is to tune, beyond what the papers report.

- ``valley_width``: decades of α0 whose mean minimal loss stays within a tolerance of the best.
- ``expected_best``: the expected best loss after k random grid draws (Dodge et al. 2019).
- ``importance``: α0 against β importance of HD optimizers (fANOVA through Optuna).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from .columns import prepare
from .stats import higher_is_better

__all__ = ["valley_width", "expected_best", "expected_best_of", "importance"]

_IDENT = ["series", "label", "variant", "decay"]
N_TREES = 16  # fANOVA's forest: Optuna's 64 cost over a second per series on a 40 × 5 grid, for the same ranking


def valley_span(y: np.ndarray, threshold: float, i: int) -> tuple[int, int]:
    """Indices of the first and last grid point of the contiguous run around i where y ≤ threshold.

    The valley's edges lie between each of them and its outer neighbour (off the grid where
    there is none): the brackets that ``analysis.metrics`` checks and refinement narrows.
    """
    lo = hi = i
    while lo - 1 >= 0 and y[lo - 1] <= threshold:
        lo -= 1
    while hi + 1 < len(y) and y[hi + 1] <= threshold:
        hi += 1
    return lo, hi


def _interval(x: np.ndarray, y: np.ndarray, threshold: float, i: int) -> tuple[float, float, bool]:
    """The interval around x[i] where the piecewise-linear y stays ≤ threshold, and whether it hits an edge."""
    bounds, censored = [], False
    for step, j in zip((-1, 1), valley_span(y, threshold, i)):
        if not 0 <= j + step < len(x):
            bounds.append(x[j])
            censored = True
        elif np.isfinite(y[j + step]):  # linear crossing between the last point in and the first out
            frac = (threshold - y[j]) / (y[j + step] - y[j])
            bounds.append(x[j] + frac * (x[j + step] - x[j]))
        else:  # a diverged neighbour: the valley provably reaches only the last point inside
            bounds.append(x[j])
    return bounds[0], bounds[1], censored


def valley_width(table: pd.DataFrame, *, metric: str = "min_train_loss", rtol: float = 0.1,
                 atol: float = 0.0) -> pd.DataFrame:
    """Valley width in decades of α0 per (series, beta), from a ``sensitivity_table``.

    The valley is the contiguous range of log10(lr) around the best lr where the mean minimal
    loss, linearly interpolated in log10(lr), is at most ``best + atol + rtol·|best|`` (for an
    accuracy metric: at least ``best − atol − rtol·|best|``).
    Diverged points (+inf) lie outside; lr values whose seeds all errored are skipped.
    ``censored`` is True when the valley reaches the edge of the grid (the true width is larger).
    Columns: series, label, variant, decay, beta, metric, rtol, atol, best_lr, best, threshold,
    low_lr, high_lr, width_decades, censored.
    """
    if rtol < 0 or atol < 0:
        raise ValueError(f"rtol and atol must be >= 0; got rtol={rtol}, atol={atol}")
    rows = table[table["metric"] == metric]
    if rows.empty:
        raise ValueError(f"metric must be one of {', '.join(sorted(table['metric'].unique()))}; got {metric!r}")
    out = []
    for (series, beta), group in rows.groupby(["series", "beta"], dropna=False, sort=True):
        group = group[group["mean"].notna()].sort_values("lr")
        record = dict(group.iloc[0][_IDENT]) if len(group) else dict(rows[rows["series"] == series].iloc[0][_IDENT])
        record.update(beta=beta, metric=metric, rtol=float(rtol), atol=float(atol))
        sign = -1.0 if higher_is_better(metric) else 1.0  # work on "lower is better" values
        x, y = np.log10(group["lr"].to_numpy(float)), sign * group["mean"].to_numpy(float)
        finite = np.isfinite(y)
        if not finite.any():
            record.update(best_lr=np.nan, best=np.nan, threshold=np.nan, low_lr=np.nan, high_lr=np.nan,
                          width_decades=np.nan, censored=False)
            out.append(record)
            continue
        i = int(np.argmin(np.where(finite, y, np.inf)))  # first minimum: the smaller lr on a tie
        threshold = y[i] + atol + rtol * abs(y[i])
        low, high, censored = _interval(x, y, threshold, i)
        record.update(best_lr=10 ** x[i], best=sign * y[i], threshold=sign * threshold, low_lr=10 ** low,
                      high_lr=10 ** high, width_decades=high - low, censored=censored)
        out.append(record)
    columns = [*_IDENT, "beta", "metric", "rtol", "atol", "best_lr", "best", "threshold",
               "low_lr", "high_lr", "width_decades", "censored"]
    return pd.DataFrame(out, columns=columns)


def expected_best_of(values, k, *, best: str = "min") -> np.ndarray:
    """E[best of k draws with replacement] from ``values`` (each equally likely), in closed form.

    With v(1) ≤ … ≤ v(N), P(min of k ≥ v(i)) = ((N−i+1)/N)^k, so
    E[min] = Σ v(i)·[((N−i+1)/N)^k − ((N−i)/N)^k]; the max mirrors it (Dodge et al. 2019).
    A 2-D ``values`` holds one set per row (e.g. bootstrap replicates); the result then has one column each.
    """
    if best not in ("min", "max"):
        raise ValueError(f"best must be 'min' or 'max'; got {best!r}")
    v = np.sort(np.asarray(values, dtype=float), axis=-1)  # 2-D: one set of values per row
    if v.size == 0 or not np.isfinite(v).all():
        raise ValueError("values must be a non-empty array of finite numbers")
    if best == "max":
        v = -v[..., ::-1]
    n = v.shape[-1]
    ks = np.atleast_1d(np.asarray(k, dtype=float))[:, None]
    i = np.arange(1, n + 1)[None, :]
    weights = ((n - i + 1) / n) ** ks - ((n - i) / n) ** ks
    expected = weights @ v.T  # (len(k),) for 1-D values, (len(k), rows) for 2-D
    return -expected if best == "max" else expected


def expected_best(table: pd.DataFrame, *, metric: str = "min_train_loss", k=None, cap: float | None = None,
                  best: str | None = None) -> pd.DataFrame:
    """Expected best mean ``metric`` after k random draws from each series' grid of (β, α0) configs.

    Input is a ``sensitivity_table``; each configuration is one equally likely draw. Diverged
    configurations (+inf) count as ``cap``, by default the worst finite mean of ``metric`` in
    the table, so an optimizer is charged the worst loss seen rather than an infinite one.
    Configurations whose seeds all errored are not draws. ``k`` defaults to 1…(largest grid).
    ``best`` ("min"/"max") defaults to "max" for accuracies and "min" otherwise.
    Columns: series, label, variant, decay, metric, n_configs, k, expected.
    """
    best = best or ("max" if higher_is_better(metric) else "min")
    rows = table[(table["metric"] == metric) & table["mean"].notna()]
    if rows.empty:
        raise ValueError(f"no {metric!r} rows with a result in the table")
    finite = rows["mean"][np.isfinite(rows["mean"])]
    if cap is None:
        if finite.empty:
            raise ValueError(f"every {metric!r} configuration diverged; pass cap=")
        cap = float(finite.max()) if best == "min" else float(finite.min())
    sizes = rows.groupby("series").size()
    ks = np.arange(1, sizes.max() + 1) if k is None else np.atleast_1d(np.asarray(k, dtype=int))
    if (ks < 1).any():
        raise ValueError(f"k must be >= 1; got {ks.tolist()}")
    out = []
    for series, group in rows.groupby("series", sort=True):
        values = group["mean"].where(np.isfinite(group["mean"]), cap).to_numpy(float)
        ident = group.iloc[0][_IDENT].to_dict()
        expected = expected_best_of(values, ks, best=best)
        out.append(pd.DataFrame({**ident, "metric": metric, "n_configs": len(values), "k": ks, "expected": expected}))
    return pd.concat(out, ignore_index=True)


def importance(trials: pd.DataFrame, *, metric: str = "min_train_loss", params=("lr", "beta"),
               seed: int = 0) -> pd.DataFrame:
    """fANOVA importance of ``params`` for each series where every param takes ≥ 2 values.

    Each configuration becomes a COMPLETE trial of an in-memory Optuna study
    (``optuna.trial.create_trial``) with log-scaled distributions, valued at the mean over its
    non-errored seeds, diverged values (+inf) capped at the series' worst finite value first. The
    seeds' spread is no parameter's doing, and a forest over the configurations' means costs the
    same at 3 seeds as at 30; the forest has ``N_TREES`` trees. Columns: series, label, variant,
    decay, metric, param, importance, n_trials (the trials averaged).
    """
    with warnings.catch_warnings():  # lazily: the import is slow and only this metric needs it
        warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto in a kernel
        import optuna

    trials = prepare(trials)
    columns = [*_IDENT, "metric", "param", "importance", "n_trials"]
    out = []
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        for series, group in trials.groupby("series", sort=True):
            group = group[group[metric].notna()]
            values = group[metric].astype(float)
            if group.empty or not np.isfinite(values).any():
                continue
            if any(p not in group or group[p].isna().any() or group[p].nunique() < 2 for p in params):
                continue
            finite = values[np.isfinite(values)]
            values = values.where(np.isfinite(values), finite.min() if higher_is_better(metric) else finite.max())
            means = values.groupby([group[p].astype(float) for p in params]).mean()
            distributions = {
                p: optuna.distributions.FloatDistribution(
                    float(group[p].min()), float(group[p].max()), log=bool((group[p] > 0).all()))
                for p in params
            }
            study = optuna.create_study(direction="maximize" if higher_is_better(metric) else "minimize")
            study.add_trials([
                optuna.trial.create_trial(params=dict(zip(params, map(float, key))), distributions=distributions,
                                          value=float(v))
                for key, v in means.items()
            ])
            evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=N_TREES, seed=seed)
            try:
                scores = optuna.importance.get_param_importances(study, evaluator=evaluator, params=list(params))
            except (RuntimeError, ValueError, ZeroDivisionError):
                scores = {p: math.nan for p in params}  # e.g. a constant loss: nothing to attribute
            ident = group.iloc[0][_IDENT].to_dict()
            for p in params:
                out.append({**ident, "metric": metric, "param": p, "importance": float(scores.get(p, math.nan)),
                            "n_trials": len(group)})
    finally:
        optuna.logging.set_verbosity(verbosity)
    return pd.DataFrame(out, columns=columns)
