"""Valley figures: mean minimal loss against α0, one line per series (robustness study Figures 4–7).

Axes-level functions (``*_plot``) draw on one Axes and return it; figure-level functions
(``*_figure``) lay several panels out on a new Figure (``analysis.style``). Statistics come from
``analysis.stats``; nothing here computes more than a filter.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .columns import base_optimizer
from .stats import LOSSES, best_beta
from .style import (ABOVE, MARKERS, STAGGER, TOP, axes_or_current, figure_legend, grid, legend, line_styles, palette_for,
                    pretty, light_log_ticks)

__all__ = ["valley_plot", "valley_figure", "decay_labels", "decay_figure", "hd_series", "hd_figure", "base_optimizer",
           "facets", "MAX_SERIES", "MAX_COLUMNS"]

MAX_SERIES = 8  # more lines than this in one valley panel: one panel per base optimizer
MAX_COLUMNS = 6  # panels side by side before a faceted figure wraps


def _name(hue: str, level, rows: pd.DataFrame) -> str:
    if hue == "beta":
        return f"β={level:g}"
    if "beta" in rows and rows["beta"].notna().all() and rows["beta"].nunique() == 1:
        return f"{level}, β={rows['beta'].iloc[0]:g}"  # an HD line reduced to one β
    return str(level)


def _unresolved_lrs(unresolved, metric: str, rows: pd.DataFrame) -> np.ndarray:
    """The lr values of ``rows`` (one line) that ``unresolved`` lists for ``metric``."""
    if unresolved is None or unresolved.empty or rows.empty:
        return np.array([])
    marks = unresolved[(unresolved["metric"] == metric) & (unresolved["series"].isin(rows["series"]))]
    beta = rows["beta"].iloc[0]
    marks = marks[marks["beta"].isna()] if pd.isna(beta) else marks[marks["beta"] == beta]
    return marks["lr"].to_numpy(float)


def _line_names(rows: pd.DataFrame, hue: str, colors: dict) -> dict:
    """{level: the line's legend name} (an HD series at one β is named with it)."""
    return {level: _name(hue, level, rows[rows[hue] == level]) for level in colors}


def valley_plot(table: pd.DataFrame, *, metric: str = "min_train_loss", hue: str = "series",
                palette=None, unresolved: pd.DataFrame | None = None, linestyles: dict | None = None, ax=None):
    """Mean minimal loss against lr / best lr (log x), one line per ``hue`` level.

    ``table`` is a ``sensitivity_table`` (or a filter of it). Diverged configurations (mean
    +inf) are drawn as ▲ and all-errored ones as ✕ near the top of the panel (line i at
    ``TOP - STAGGER·(i mod 4)``), in the line's colour; a line with no finite point is named
    in the legend as such. Lines of (nearly) the same colour get different line styles
    (``linestyles``, keyed by legend name, fixes them, e.g. across the panels of a figure).
    ``unresolved`` (columns series, beta, metric, lr; e.g. the best α0 rows of ``metrics_table``
    that are not resolved) puts an open ring around those points.
    """
    ax = axes_or_current(ax)
    rows = table[table["metric"] == metric]
    colors = palette_for(rows[hue], palette)
    names = _line_names(rows, hue, colors)
    styles = dict(line_styles({names[level]: c for level, c in colors.items()}), **(linestyles or {}))
    top = ax.get_xaxis_transform()  # x in data, y in axes coordinates
    ceiling = _ceiling(rows, hue)
    for i, (level, color) in enumerate(colors.items()):
        g = rows[rows[hue] == level].sort_values("lr")
        name = names[level]
        if g["best_lr"].isna().all():  # no finite mean: lr / best lr is undefined
            ax.plot([], [], color=color, ls=styles[name], label=f"{name} (no finite loss)")
            continue
        ok = np.isfinite(g["mean"])
        above = ok & (g["mean"] > ceiling)
        shown = g.loc[ok, "mean"].clip(upper=ceiling)  # the line goes up to the edge, the point is marked there
        ax.plot(g.loc[ok, "lr_ratio"], shown, marker="o", ms=3, color=color, ls=styles[name], label=name)
        if above.any():
            ax.plot(g.loc[above, "lr_ratio"], [TOP - STAGGER * (i % 4)] * int(above.sum()), ls="none",
                    marker=MARKERS["above"][0], ms=9, color=color, transform=top, gid="above", clip_on=False)
        ring = ok & np.isin(g["lr"].to_numpy(float), _unresolved_lrs(unresolved, metric, g))
        if ring.any():
            ax.plot(g.loc[ring, "lr_ratio"], g.loc[ring, "mean"], ls="none", marker="o", ms=9, mfc="none",
                    mew=1.2, color=color, gid="unresolved")
        for gid, mask in (("diverged", np.isinf(g["mean"])), ("error", g["mean"].isna())):
            if mask.any():
                y = TOP - STAGGER * (i % 4)
                ax.plot(g.loc[mask, "lr_ratio"], [y] * int(mask.sum()), ls="none", marker=MARKERS[gid][0],
                        color=color, transform=top, gid=gid, clip_on=False)
    if np.isfinite(ceiling):
        ax.set_ylim(top=ceiling)
    ax.set_xscale("log")
    light_log_ticks(ax)
    ax.set_xlabel("lr / best lr")
    ax.set_ylabel(pretty(metric))
    legend(ax)
    return ax


def _ceiling(rows: pd.DataFrame, hue: str) -> float:
    """Where a valley panel ends: ABOVE × the highest mean any line starts from at its smallest α0
    (about L0: a step too small to train), so that one finite loss far above L0 (a run that blew up
    without diverging) does not flatten every valley; inf when nothing rises above it."""
    finite = rows[np.isfinite(rows["mean"])]
    if finite.empty:
        return math.inf
    starts = finite.sort_values("lr").groupby(hue, sort=False)["mean"].first()
    ceiling = ABOVE * float(starts.max())
    return ceiling if ceiling > 0 and float(finite["mean"].max()) > ceiling else math.inf


def valley_figure(table: pd.DataFrame, *, metrics=LOSSES, hue: str = "series", palette=None,
                  unresolved: pd.DataFrame | None = None, max_series: int = MAX_SERIES) -> Figure:
    """Train and test valleys side by side (robustness study Figures 4–5); HD lines at their best β.

    With more than ``max_series`` lines, one column of panels per base optimizer (``base_optimizer``
    of the label), train above test, wrapped after ``MAX_COLUMNS`` columns. ``unresolved`` marks points
    as in ``valley_plot``.
    """
    table = best_beta(table)
    if not isinstance(palette, dict):  # one colour per series across the panels
        palette = palette_for(table[hue], palette)
    # one style per legend name across the panels: an HD series whose best β differs between train
    # and test is two names of one colour, so they must differ in style
    colors = {}
    for metric in metrics:
        rows = table[table["metric"] == metric]
        levels = palette_for(rows[hue], palette)
        colors.update({name: levels[level] for level, name in _line_names(rows, hue, levels).items()})
    styles = line_styles(colors)
    if table[hue].nunique() <= max_series:
        fig, axes = grid(1, len(metrics))
        for ax, metric in zip(axes[0], metrics):
            valley_plot(table, metric=metric, hue=hue, palette=palette, unresolved=unresolved, linestyles=styles,
                        ax=ax)
    else:
        base = table["label"].map(base_optimizer)
        bases = sorted(set(base))
        fig, axes, place = facets(len(bases), len(metrics), legend_width=2.4)
        for k, name in enumerate(bases):
            for m, metric in enumerate(metrics):
                ax = valley_plot(table[base == name], metric=metric, hue=hue, palette=palette,
                                 unresolved=unresolved, linestyles=styles, ax=axes[place(k, m)])
                ax.set_title(name if m == 0 else "", fontsize="small")
    figure_legend(fig, axes)
    return fig


def facets(n: int, n_metrics: int, *, legend_width: float, max_columns: int = MAX_COLUMNS):
    """(fig, axes, place) for n items × n_metrics panels: one column per item, a row per metric,
    wrapped after ``max_columns`` items (then the next items' metrics go below); ``place(item,
    metric)`` gives a panel's (row, column). Unused panels are hidden."""
    ncols = min(n, max_columns)
    blocks = -(-n // ncols)
    fig, axes = grid(blocks * n_metrics, ncols, legend_width=legend_width)
    for k in range(n, blocks * ncols):
        for m in range(n_metrics):
            axes[(k // ncols) * n_metrics + m, k % ncols].set_visible(False)

    def place(item: int, metric: int) -> tuple[int, int]:
        return (item // ncols) * n_metrics + metric, item % ncols

    return fig, axes, place


def decay_labels(table: pd.DataFrame) -> list[str]:
    """Labels that have both constant-step and lr-decay series."""
    has = table.groupby("label")["decay"].agg(lambda d: (d.isna().any(), d.notna().any()))
    return sorted(label for label, (const, dec) in has.items() if const and dec)


def decay_figure(table: pd.DataFrame, *, metrics=LOSSES, palette=None) -> Figure:
    """Constant step against lr-decay, one panel per base optimizer (robustness Figure 6)."""
    labels = decay_labels(table)
    if not labels:
        raise ValueError("no label has both constant-step and decay runs")
    table = best_beta(table)
    fig, axes, place = facets(len(labels), len(metrics), legend_width=0.3)
    for k, label in enumerate(labels):
        for m, metric in enumerate(metrics):
            ax = valley_plot(table[table["label"] == label], metric=metric, palette=palette, ax=axes[place(k, m)])
            ax.set_title(label if m == 0 else "", fontsize="small")
    return fig


def hd_series(table: pd.DataFrame) -> list[str]:
    """Series swept over β (HD optimizers) with at least two α0 values."""
    hd = table[table["beta"].notna()]
    n_lr = hd.groupby("series")["lr"].nunique()
    return sorted(n_lr[n_lr > 1].index)


def hd_figure(table: pd.DataFrame, *, metrics=LOSSES, palette="viridis") -> Figure:
    """α0-sensitivity of each HD series, one line per β (robustness Figure 7)."""
    series = hd_series(table)
    if not series:
        raise ValueError("no HD series with at least two lr values")
    fig, axes, place = facets(len(series), len(metrics), legend_width=0.3)
    for k, name in enumerate(series):
        rows = table[table["series"] == name].sort_values("beta")
        for m, metric in enumerate(metrics):
            ax = valley_plot(rows, metric=metric, hue="beta", palette=palette, ax=axes[place(k, m)])
            ax.set_title(name if m == 0 else "", fontsize="small")
    return fig
