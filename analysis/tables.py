"""Readable versions of the statistics (the paper tables) and their markdown text.

The tidy frames from ``stats``/``robustness`` are what the CSV files hold; the functions here
turn them into the wide, formatted frames a paper table shows.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = ["to_markdown", "pm", "best_config_summary", "threshold_summary", "expected_best_summary",
           "comparison_summary", "ranking_summary"]

DASH = "—"


def _cell(value, floatfmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if isinstance(value, (float, np.floating)):
        return "inf" if math.isinf(value) and value > 0 else f"{value:{floatfmt}}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(frame: pd.DataFrame, *, floatfmt: str = ".4g") -> str:
    """A GitHub-markdown table; missing values print as an em dash, numbers with ``floatfmt``."""
    header = [str(c) for c in frame.columns]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if num else "---" for num in numeric) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, floatfmt) for v in row) + " |")
    return "\n".join(lines) + "\n"


def pm(mean, se, fmt: str = ".4g", se_fmt: str = ".2g") -> str:
    """"mean ± se" (just the mean when se is missing, a dash when both are)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return DASH
    if math.isinf(mean):
        return "inf"
    if se is None or (isinstance(se, float) and math.isnan(se)):
        return f"{mean:{fmt}}"
    return f"{mean:{fmt}} ± {se:{se_fmt}}"


def best_config_summary(best: pd.DataFrame) -> pd.DataFrame:
    """The best configuration per optimizer with mean ± SE columns (CAM-HD Tables 2–3)."""
    out = pd.DataFrame({"optimizer": best["method"]})
    if best["variant"].fillna("").astype(bool).any():
        out["variant"] = best["variant"]
    out = out.assign(**{"β": best["beta"], "α0": best["lr"], "seeds": best["n_trials"] - best["n_error"]})
    for col in ("min_train_loss", "min_test_loss", "best_test_acc", "final_test_acc"):
        if f"{col}_mean" in best:
            out[col.replace("_", " ")] = [pm(m, s) for m, s in zip(best[f"{col}_mean"], best[f"{col}_se"])]
    out["diverged"] = best["n_diverged"]
    return out


def threshold_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Iterations to each threshold, wide: one row per (series, β, α0), "mean ± se (reached/n)" cells."""
    columns = {t: f"loss < {t}" for t in dict.fromkeys(table["threshold"])}
    rows: dict[tuple, dict] = {}
    for r in table.sort_values(["series", "beta", "lr"], na_position="first", kind="stable").itertuples(index=False):
        key = (r.series, None if pd.isna(r.beta) else r.beta, r.lr)  # NaN != NaN would split rows
        row = rows.setdefault(key, {"optimizer": r.series, "β": r.beta, "α0": r.lr})
        row[columns[r.threshold]] = (f"{pm(r.iters_mean, r.iters_se, '.0f', '.0f')} ({r.n_reached}/{r.n})"
                                     if r.n_reached else f"never (0/{r.n})")
    return pd.DataFrame(list(rows.values()), columns=["optimizer", "β", "α0", *columns.values()])


def expected_best_summary(table: pd.DataFrame, *, ks=(1, 2, 4, 8, 16)) -> pd.DataFrame:
    """Expected best after k draws for a few k, wide: one row per (series, metric)."""
    rows = table[table["k"].isin(ks)]
    wide = rows.pivot_table(index=["metric", "series", "n_configs"], columns="k", values="expected", sort=True)
    wide.columns = [f"k={k}" for k in wide.columns]
    return wide.reset_index().rename(columns={"series": "optimizer", "n_configs": "configs"})


def _interval_text(value, low, high, fmt: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    text = f"{value:{fmt}}"
    return text + (f" [{low:{fmt}}, {high:{fmt}}]" if np.isfinite(low) else "")


def comparison_summary(table: pd.DataFrame) -> pd.DataFrame:
    """``comparisons_table`` rows for reading: "a − b" with its interval, significant, seeds paired."""
    return pd.DataFrame({
        "metric": table["metric"], "axis": table["axis"], "statistic": table["statistic"],
        "a": [f"{a} @ {at}" if at else a for a, at in zip(table["a"], table["a_at"])],
        "b": [f"{b} @ {at}" if at else b for b, at in zip(table["b"], table["b_at"])],
        "a − b [95% CI]": [_interval_text(d, lo, hi) for d, lo, hi in
                           zip(table["difference"], table["ci_low"], table["ci_high"])],
        "significant": ["yes" if s else "no" for s in table["significant"]],
        "paired seeds": [int(n) if p else 0 for n, p in zip(table["n_shared"], table["paired"])],
    }).reset_index(drop=True)


def ranking_summary(ranking: pd.DataFrame) -> pd.DataFrame:
    """The ranking for reading: rank, series, value [CI], and "<" or "≈" to the next series."""
    return pd.DataFrame({
        "metric": ranking["metric"], "statistic": ranking["statistic"], "rank": ranking["rank"],
        "optimizer": [f"{s} @ {at}" if at else s for s, at in zip(ranking["series"], ranking["at"])],
        "value [95% CI]": [_interval_text(v, lo, hi) + ("" if r else " ?") for v, lo, hi, r in
                           zip(ranking["value"], ranking["ci_low"], ranking["ci_high"], ranking["resolved"])],
        "vs next": [f"{m} {n}" if m else "" for m, n in zip(ranking["mark"], ranking["next"])],
        "next − this [95% CI]": [_interval_text(-d, -hi, -lo) if n else "" for d, lo, hi, n in
                                 zip(ranking["difference"], ranking["diff_low"], ranking["diff_high"],
                                     ranking["next"])],
    }).reset_index(drop=True)
