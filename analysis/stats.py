"""Statistics over the trials and curves tables: tidy DataFrames in, tidy DataFrames out.

Conventions (shared by every function here):
- a *configuration* is (series, beta, lr); its seeds are averaged;
- errored trials (null losses) are counted in ``n_error`` and left out of the mean;
- a diverged trial counts with the minimum it reached before diverging, which is +inf when it
  reached none, so a configuration with such a seed has mean +inf (drawn as "diverged");
- the standard error is std(ddof=1)/sqrt(n) over finite values, NaN for n < 2 or an inf value;
- "best" is the lowest value, except for accuracies (``higher_is_better``), where it is the highest.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd

from .columns import floats, prepare, words

__all__ = [
    "LOSSES", "higher_is_better", "sensitivity_table", "swept", "best_beta", "config_table", "best_configs",
    "best_trials", "curve_stats", "threshold_table", "combination_table", "t_quantile",
]

LOSSES = ("min_train_loss", "min_test_loss")
CONFIG = ("series", "beta", "lr")


def higher_is_better(metric: str) -> bool:
    """Accuracies are maximised; losses and iteration counts are minimised."""
    return "acc" in metric


def _score(values: pd.Series, metric) -> pd.Series:
    """Values turned so that lower is better (accuracies negated), per row when ``metric`` is a Series."""
    if isinstance(metric, pd.Series):
        return values.where(~metric.map(higher_is_better).to_numpy(bool), -values)
    return -values if higher_is_better(metric) else values


def mean_se(values: pd.Series, groups: list) -> pd.DataFrame:
    """Per group: n (non-null values), mean (inf if any inf), se (finite values only)."""
    v = values.astype(float)
    finite = v.where(np.isfinite(v))
    g = finite.groupby(groups, dropna=False, sort=False)
    count = v.notna().groupby(groups, dropna=False, sort=False).sum()
    n_inf = np.isinf(v).groupby(groups, dropna=False, sort=False).sum()
    mean = g.mean().where(n_inf == 0, np.inf).where(count > 0, np.nan)
    se = (g.std(ddof=1) / np.sqrt(count)).where((n_inf == 0) & (count > 1), np.nan)
    return pd.DataFrame({"n": count.astype(int), "mean": mean, "se": se})


def _first(trials: pd.DataFrame, keys: list[str], columns) -> pd.DataFrame:
    return trials.groupby(keys, dropna=False, sort=False)[list(columns)].first()


def cell_counts(trials: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per group of `keys`: how many trials diverged (n_diverged) and how many errored (n_error)."""
    groups = [trials[k] for k in keys]
    status = trials["status"]
    return pd.DataFrame({
        f"n_{s}": (status == s).groupby(groups, dropna=False, sort=False).sum().astype(int)
        for s in ("diverged", "error")
    })


def sensitivity_table(trials: pd.DataFrame, *, metrics=LOSSES) -> pd.DataFrame:
    """Mean and SE over seeds of each metric per (series, beta, lr), with best lr per (series, beta).

    Long form, one row per configuration and metric: series, label, variant, decay, beta, lr,
    metric, n, n_diverged, n_error, mean, se, best_lr, lr_ratio (= lr / best_lr). best_lr is
    the lr with the best finite mean (the smaller lr on a tie), NaN when none is finite.
    """
    trials = prepare(trials)
    keys = list(CONFIG)
    groups = [trials[k] for k in keys]
    ident = _first(trials, keys, ["label", "variant", "decay"])
    counts = cell_counts(trials, keys)
    parts = []
    for metric in metrics:
        stats = mean_se(trials[metric], groups)
        parts.append(ident.join(counts).join(stats).assign(metric=metric).reset_index())
    table = pd.concat(parts, ignore_index=True)
    table = table.sort_values(["metric", "series", "beta", "lr"], na_position="first", kind="stable")
    table = table.reset_index(drop=True)
    finite = table[np.isfinite(table["mean"])].assign(_score=lambda t: _score(t["mean"], t["metric"]))
    best = finite.loc[finite.groupby(["metric", "series", "beta"], dropna=False)["_score"].idxmin()]
    best = best[["metric", "series", "beta", "lr"]].rename(columns={"lr": "best_lr"})
    table = table.merge(best, on=["metric", "series", "beta"], how="left")
    table["lr_ratio"] = table["lr"] / table["best_lr"]
    columns = ["series", "label", "variant", "decay", "beta", "lr", "metric",
               "n", "n_diverged", "n_error", "mean", "se", "best_lr", "lr_ratio"]
    return table[columns]


def swept(table: pd.DataFrame, *, min_lrs: int = 2) -> pd.DataFrame:
    """Rows of the series run at ``min_lrs`` or more lr values (a valley needs at least two)."""
    n_lr = table.groupby("series")["lr"].nunique()
    return table[table["series"].isin(n_lr[n_lr >= min_lrs].index)].reset_index(drop=True)


def best_beta(table: pd.DataFrame) -> pd.DataFrame:
    """Keep, per (series, metric), the rows of the β whose best mean is best (rows without β stay)."""
    hd = table[table["beta"].notna()]
    hd = hd.assign(_score=_score(hd["mean"], hd["metric"]))
    score = hd[np.isfinite(hd["_score"])].groupby(["metric", "series", "beta"])["_score"].min().reset_index()
    keep = score.loc[score.groupby(["metric", "series"])["_score"].idxmin(), ["metric", "series", "beta"]]
    # series with no finite β at all keep their smallest β so the plot can still show them diverged
    lost = hd.drop_duplicates(["metric", "series"]).merge(keep[["metric", "series"]], how="left", indicator=True)
    lost = lost.loc[lost["_merge"] == "left_only", ["metric", "series", "beta"]]
    keep = pd.concat([keep, lost]).assign(_keep=True)
    marked = table.merge(keep, on=["metric", "series", "beta"], how="left")
    mask = table["beta"].isna().to_numpy() | marked["_keep"].eq(True).to_numpy()
    return table[mask].reset_index(drop=True)


def config_table(trials: pd.DataFrame, *, columns=None) -> pd.DataFrame:
    """Per configuration (series, beta, lr): n_trials, n_diverged, n_error and <col>_mean/<col>_se.

    ``columns`` defaults to the minimal losses and test accuracies present.
    """
    trials = prepare(trials)
    if columns is None:
        columns = [c for c in (*LOSSES, "best_test_acc", "final_test_acc") if c in trials]
    keys = list(CONFIG)
    groups = [trials[k] for k in keys]
    out = _first(trials, keys, ["method", "label", "variant", "decay"])
    out = out.join(trials.groupby(groups, dropna=False, sort=False).size().rename("n_trials"))
    out = out.join(cell_counts(trials, keys))
    for col in columns:
        stats = mean_se(trials[col], groups)
        out[f"{col}_mean"], out[f"{col}_se"] = stats["mean"], stats["se"]
    out = out.reset_index().sort_values(list(keys), na_position="first", kind="stable")
    return out[["method", "series", "label", "variant", "decay", "beta", "lr", "n_trials", "n_diverged", "n_error",
                *[f"{c}_{s}" for c in columns for s in ("mean", "se")]]].reset_index(drop=True)


def best_configs(trials: pd.DataFrame, *, metric: str = "min_train_loss", by: str = "method",
                 columns=None) -> pd.DataFrame:
    """The configuration with the best mean ``metric`` per ``by`` group (config_table's columns).

    ``by="method"`` lets a label's variants (e.g. fixed gammas) compete; ``by="series"`` keeps
    them apart. A group that never reached a finite value keeps one row with series, beta and
    lr NaN, so it is reported rather than silently missing.
    """
    if by not in ("method", "series"):
        raise ValueError(f"by must be 'method' or 'series'; got {by!r}")
    configs = config_table(trials, columns=columns)
    key = f"{metric}_mean"
    if key not in configs:
        allowed = ", ".join(c[:-5] for c in configs if c.endswith("_mean"))
        raise ValueError(f"metric must be one of {allowed}; got {metric!r}")
    finite = configs[np.isfinite(configs[key])].assign(_score=lambda c: _score(c[key], metric))
    best = configs.loc[finite.groupby(by, sort=False)["_score"].idxmin()]
    missing = sorted(set(configs[by]) - set(best[by]))
    if missing:
        counts = ["n_trials", "n_diverged", "n_error"]
        empty = configs.drop_duplicates(by).set_index(by).loc[missing].reset_index()
        stat_cols = [c for c in configs if c.endswith(("_mean", "_se"))]
        empty[["beta", "lr", *stat_cols]] = np.nan
        if by == "method":
            empty[["series", "variant"]] = None
        empty[counts] = configs.groupby(by)[counts].sum().loc[missing].to_numpy()
        best = pd.concat([best, empty[configs.columns]])
    return best.sort_values(by, kind="stable").reset_index(drop=True)


def best_trials(trials: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """The trial rows (all seeds) of the configurations in ``best``."""
    trials = prepare(trials)
    chosen = best[list(CONFIG)].dropna(subset=["lr"])
    return trials.merge(chosen, on=list(CONFIG), how="inner")


# -------------------------------------------------------------------------------- curves
@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: float) -> float:
    """Student-t quantile, from the CDF written as an integral over θ with x = √df·tan θ.

    The density then becomes c·cos(θ)^(df−1), smooth on [0, π/2), so a cumulative trapezoid
    on a fine grid inverts it to ~1e-7 without scipy.
    """
    if not 0 < p < 1 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0; got p={p}, df={df}")
    if p == 0.5:
        return 0.0
    theta = np.linspace(0.0, math.pi / 2, 20_001)
    f = np.cos(theta) ** (df - 1)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(math.pi)
    cdf = np.concatenate([[0.0], np.cumsum((f[1:] + f[:-1]) / 2 * np.diff(theta))]) * c
    target = abs(p - 0.5)
    t = math.sqrt(df) * math.tan(float(np.interp(target, cdf, theta)))
    return t if p > 0.5 else -t


def curve_stats(curves: pd.DataFrame, trials: pd.DataFrame, *, variables=None, hue: str = "series",
                level: float = 0.95) -> pd.DataFrame:
    """Mean and t-interval over seeds per (hue, variable, epoch) for the given trials' curves.

    ``trials`` picks the runs (e.g. ``best_trials``); its ``hue`` column names the lines.
    ``variables`` defaults to every numeric curve column. Non-finite values (the epoch a run
    diverged) are left out. Columns: hue, variable, epoch, n, mean, se, low, high.
    """
    trials = prepare(trials)
    if variables is None:
        skip = {"trial_id", "epoch", "step"}
        variables = [c for c in curves.columns if c not in skip and pd.api.types.is_numeric_dtype(curves[c])]
    variables = [v for v in variables if v in curves.columns]
    picked = curves[curves["trial_id"].isin(trials["trial_id"])]  # a few trials of millions of rows: filter first
    merged = picked.merge(trials[["trial_id", hue]], on="trial_id", how="inner")
    long = merged.melt(id_vars=[hue, "epoch"], value_vars=variables, var_name="variable", value_name="value")
    long["value"] = long["value"].astype(float).where(lambda v: np.isfinite(v))
    long = long.dropna(subset=["value"])
    keys = [hue, "variable", "epoch"]
    g = long.groupby(keys, sort=True)["value"]
    out = pd.DataFrame({"n": g.count(), "mean": g.mean(), "se": g.std(ddof=1) / np.sqrt(g.count())}).reset_index()
    out.loc[out["n"] < 2, "se"] = np.nan
    tq = out["n"].map(lambda n: t_quantile(0.5 + level / 2, int(n) - 1) if n > 1 else np.nan)
    out["low"], out["high"] = out["mean"] - tq * out["se"], out["mean"] + tq * out["se"]
    out["n"] = out["n"].astype(int)
    return out[[*keys, "n", "mean", "se", "low", "high"]]


# -------------------------------------------------------------------------------- tables
def threshold_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Iterations to reach each training-loss threshold, per configuration (Mittal 2019, §4).

    One row per (series, beta, lr, threshold): n (trials that ran), n_reached, and mean/se of
    ``iters_to_<threshold>`` over the seeds that reached it. ``threshold`` keeps the text of
    the column suffix; rows are ordered by its numeric value.
    """
    trials = prepare(trials)
    columns = [c for c in trials.columns if c.startswith("iters_to_")]
    if not columns:
        raise ValueError("no iters_to_<threshold> columns in trials")
    ran = trials[trials["status"] != "error"]
    keys = list(CONFIG)
    groups = [ran[k] for k in keys]
    ident = _first(ran, keys, ["label", "variant", "decay"])
    parts = []
    for col in columns:
        iters = ran[col].astype(float)
        g = iters.groupby(groups, dropna=False, sort=False)
        part = ident.assign(
            threshold=col.removeprefix("iters_to_"),
            n=ran.groupby(groups, dropna=False, sort=False).size(),
            n_reached=g.count(), iters_mean=g.mean(), iters_se=g.std(ddof=1) / np.sqrt(g.count()))
        parts.append(part.reset_index())
    out = pd.concat(parts, ignore_index=True)
    out["n_reached"] = out["n_reached"].astype(int)
    out["n"] = out["n"].astype(int)
    out.loc[out["n_reached"] < 2, "iters_se"] = np.nan
    order = pd.to_numeric(out["threshold"], errors="coerce")
    out = out.assign(_t=order).sort_values(["_t", "threshold", "series", "beta", "lr"], na_position="first",
                                           kind="stable")
    return out[["series", "label", "variant", "decay", "beta", "lr", "threshold", "n", "n_reached",
                "iters_mean", "iters_se"]].reset_index(drop=True)


def fixed_gamma(trials: pd.DataFrame, *, level: str = "global") -> pd.Series:
    """γ of ``level`` per trial (NaN when the trial has no gammas); levels are leaf first, global last."""
    if "gammas" not in trials:
        return pd.Series(np.nan, index=trials.index)
    levels = trials["levels"] if "levels" in trials else pd.Series(None, index=trials.index, dtype=object)

    def pick(gammas, names):
        values, names = floats(gammas), words(names)
        if not values:
            return np.nan
        if names and level in names and len(names) == len(values):
            return values[names.index(level)]
        return values[-1] if level == "global" else np.nan

    return pd.Series([pick(g, n) for g, n in zip(trials["gammas"], levels)], index=trials.index, dtype=float)


def combination_table(trials: pd.DataFrame, *, y: str = "final_test_acc", level: str = "global") -> pd.DataFrame:
    """Mean and SE of ``y`` per fixed γ of ``level`` (CAM-HD Figure 1), for labels whose gammas vary.

    Columns: line, label, decay, beta, lr, gamma, n, mean, se. ``line`` is the label, plus
    whichever of decay/beta/lr also vary inside it.
    """
    columns = ["line", "label", "decay", "beta", "lr", "gamma", "n", "mean", "se"]
    trials = prepare(trials)
    rows = trials.assign(gamma=fixed_gamma(trials, level=level), decay=trials["decay"].fillna("none"))
    rows = rows[rows["gamma"].notna()]
    varied = rows.groupby("label")["gamma"].nunique()
    rows = rows[rows["label"].isin(varied[varied > 1].index)]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    keys = ["label", "decay", "beta", "lr", "gamma"]
    stats = mean_se(rows[y], [rows[k] for k in keys]).reset_index()
    spread = rows.groupby("label")[["decay", "beta", "lr"]].nunique(dropna=False)

    def line(row) -> str:
        extra = [f"{k}={_text(row[k])}" for k in ("decay", "beta", "lr") if spread.loc[row["label"], k] > 1]
        return row["label"] + (f" ({', '.join(extra)})" if extra else "")

    stats["line"] = stats.apply(line, axis=1)
    stats["decay"] = stats["decay"].astype(object).where(stats["decay"] != "none", None)
    stats = stats.sort_values(["line", "gamma"], kind="stable").reset_index(drop=True)
    return stats[columns]


def _text(v) -> str:
    return f"{v:g}" if isinstance(v, (float, np.floating)) else str(v)
