"""Figures of the robustness metrics: expected best after k draws, fANOVA importance, the ranking."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .style import PANEL, axes_or_current, figure_legend, grid, legend, palette_for, pretty

__all__ = ["expected_best_plot", "expected_best_figure", "importance_plot", "importance_figure", "ranking_plot",
           "ranking_figure"]


def expected_best_plot(table: pd.DataFrame, *, hue: str = "series", palette=None, ax=None):
    """Expected best loss against the number of random grid draws k, one line per ``hue`` level."""
    ax = axes_or_current(ax)
    for name, color in palette_for(table[hue], palette).items():
        g = table[table[hue] == name].sort_values("k")
        ax.plot(g["k"], g["expected"], marker="o", ms=3, color=color, label=str(name))
    ax.set_xlabel("k (random grid draws)")
    metric = table["metric"].iloc[0] if len(table) else "loss"
    ax.set_ylabel(f"expected best {pretty(metric)}")
    legend(ax)
    return ax


def expected_best_figure(table: pd.DataFrame, *, hue: str = "series", palette=None) -> Figure:
    """``expected_best_plot`` per metric found in ``table``."""
    metrics = list(dict.fromkeys(table["metric"]))
    if not metrics:
        raise ValueError("empty expected-best table")
    fig, axes = grid(1, len(metrics))
    for ax, metric in zip(axes[0], metrics):
        expected_best_plot(table[table["metric"] == metric], hue=hue, palette=palette, ax=ax)
    figure_legend(fig, axes)
    return fig


def importance_plot(table: pd.DataFrame, *, y: str = "series", hue: str = "param", ax=None):
    """Horizontal bars of fANOVA importance per ``y`` level, one bar per ``hue`` (param)."""
    import seaborn as sns

    ax = axes_or_current(ax)
    sns.barplot(data=table, x="importance", y=y, hue=hue, orient="h", ax=ax)
    sns.move_legend(ax, "center left", bbox_to_anchor=(1.0, 0.5), fontsize="x-small", title=hue)
    ax.set_xlim(0, 1)
    ax.set_xlabel("fANOVA importance")
    ax.set_ylabel("")
    return ax


def importance_figure(table: pd.DataFrame, **kwargs) -> Figure:
    """``importance_plot`` on a figure of its own, one bar row per series."""
    n = max(table["series"].nunique() if len(table) else 1, 1)
    fig = Figure(figsize=(PANEL[0] + 3.0, 1.0 + 0.45 * n), layout="constrained")
    importance_plot(table, ax=fig.subplots(), **kwargs)
    return fig


# --------------------------------------------------------------------------- ranking
def ranking_plot(ranking: pd.DataFrame, *, metric: str | None = None, ax=None):
    """Series ordered by a statistic (``comparisons.ranking_table``), best at the top, with 95% intervals.

    Between two neighbours, "<" says the upper one's value is significantly lower (the paired
    difference's interval excludes 0) and "≈" that it is not.
    """
    ax = axes_or_current(ax)
    rows = ranking if metric is None else ranking[ranking["metric"] == metric]
    rows = rows.sort_values("rank")
    y = np.arange(len(rows))
    value = rows["value"].to_numpy(float)
    low = (value - rows["ci_low"].to_numpy(float))
    high = (rows["ci_high"].to_numpy(float) - value)
    err = np.nan_to_num(np.vstack([low, high]), nan=0.0)
    ax.errorbar(value, y, xerr=err, ls="none", marker="o", ms=4, color="0.15", ecolor="0.45", capsize=2)
    names = [f"{s} @ {a}" if a else s for s, a in zip(rows["series"], rows["at"])]
    ax.set_yticks(y, names, fontsize="x-small")
    ax.set_ylim(len(rows) - 0.5, -0.5)  # rank 1 on top
    right = ax.get_yaxis_transform()  # x in axes, y in data coordinates
    for i, mark in enumerate(rows["mark"]):
        if mark:
            ax.text(1.02, i + 0.5, mark, transform=right, ha="left", va="center", fontsize="small",
                    color="black" if mark == "<" else "0.5", clip_on=False)
    ax.tick_params(axis="x", labelsize="x-small")
    ax.grid(axis="x", color="0.92")
    return ax


def ranking_figure(rankings: pd.DataFrame) -> Figure:
    """``ranking_plot`` per metric (rows) and statistic (columns) of concatenated ranking tables.

    ``rankings`` needs a ``statistic`` column besides ``ranking_table``'s (the report adds it).
    """
    statistics = list(dict.fromkeys(rankings["statistic"]))
    metrics = list(dict.fromkeys(rankings["metric"]))
    if not statistics or not metrics:
        raise ValueError("empty ranking")
    n = rankings.groupby(["metric", "statistic", "task"]).size().max()
    tasks = rankings.groupby(["metric", "statistic"])["task"].nunique().max()
    names = [f"{s} @ {a}" if a else s for s, a in zip(rankings["series"], rankings["at"])]
    label_width = 0.35 + 0.068 * max(map(len, names))  # inches of the longest y label at x-small, and its pad
    # a fixed layout: constrained layout would measure each of the many labels, seconds per figure
    fig, axes = grid(len(metrics) * tasks, len(statistics), legend_width=0.2,
                     panel=(PANEL[0] + label_width, 0.5 + 0.2 * n), gaps=(label_width + 0.3, 0.75),
                     margins=(label_width, 0.3, 0.65, 0.5), fixed=True)
    for col, statistic in enumerate(statistics):
        for row, ((metric, task), part) in enumerate(
                rankings[rankings["statistic"] == statistic].groupby(["metric", "task"], sort=False)):
            ax = ranking_plot(part, ax=axes[row, col])
            ax.set_xlabel(f"{pretty(statistic)} ({pretty(metric)})" + (f", {task}" if task else ""),
                          fontsize="x-small")
    fig.text(0.5, 0.1 / fig.get_figheight(), "<: significantly lower than the next series (paired 95% interval "
             "of the difference excludes 0); ≈: not", ha="center", va="bottom", fontsize="x-small", color="0.3")
    return fig
