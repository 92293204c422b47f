"""Curves over training (loss, accuracy, lr, CAM-HD's γ) and CAM-HD's combination figure."""
from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .style import axes_or_current, figure_legend, grid, legend, light_log_ticks, palette_for, pretty

__all__ = ["curve_plot", "curves_figure", "gamma_figure", "combination_plot", "combination_figure"]


def curve_plot(stats: pd.DataFrame, *, y: str | None = None, hue: str = "series", palette=None,
               logy: bool | None = None, ax=None):
    """Mean over seeds against epoch with its confidence band, one line per ``hue`` level.

    ``stats`` comes from ``curve_stats``; ``y`` picks its ``variable`` (None: use all rows).
    Loss and lr panels get a log y axis when every mean is positive (``logy`` overrides).
    """
    ax = axes_or_current(ax)
    rows = stats if y is None else stats[stats["variable"] == y]
    if logy is None:
        logy = (y is not None and (y.endswith("loss") or y == "lr" or y.startswith("lr_"))
                and len(rows) > 0 and bool((rows["mean"] > 0).all()))
    # bands stay where the variable can be: accuracies in [0, 1]; on a log axis above zero, where a
    # band reaching zero would stretch the axis over decades below every line
    accuracy = y is not None and y.endswith("acc")
    floor = float(rows["mean"].min()) / 2 if logy and len(rows) else float("nan")
    low_limit = 0.0 if accuracy else (floor if floor > 0 else None)
    high_limit = 1.0 if accuracy else None
    for level, color in palette_for(rows[hue], palette).items():
        g = rows[rows[hue] == level].sort_values("epoch")
        single = g["epoch"].nunique() == 1  # one epoch (a smoke run): a line of one point needs a marker
        ax.plot(g["epoch"], g["mean"], color=color, label=str(level), marker="o" if single else None, ms=4)
        band = g["low"].notna()
        if band.any():
            low = g.loc[band, "low"].clip(lower=low_limit, upper=high_limit)
            high = g.loc[band, "high"].clip(lower=low_limit, upper=high_limit)
            if single:
                ax.errorbar(g.loc[band, "epoch"], g.loc[band, "mean"],
                            yerr=[g.loc[band, "mean"] - low, high - g.loc[band, "mean"]], color=color, capsize=3,
                            ls="none")
            else:
                ax.fill_between(g.loc[band, "epoch"], low, high, color=color, alpha=0.2, lw=0)
    if logy:
        ax.set_yscale("log")
        if floor > 0:
            ax.set_ylim(bottom=floor)
        light_log_ticks(ax)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # epochs are whole numbers
    if rows["epoch"].nunique() == 1:  # one epoch: room for an integer tick around it
        epoch = float(rows["epoch"].iloc[0])
        ax.set_xlim(epoch - 0.5, epoch + 0.5)
    ax.set_xlabel("epoch")
    if y is not None:
        ax.set_ylabel(pretty(y))
    legend(ax)
    return ax


def curves_figure(stats: pd.DataFrame, *, variables=("train_loss", "test_loss", "train_acc", "test_acc"),
                  hue: str = "series", palette=None, ncols: int = 2) -> Figure:
    """Learning curves (or any curve variables, e.g. ``("lr",)``) with 95% bands, one panel each."""
    variables = [v for v in variables if (stats["variable"] == v).any()]
    if not variables:
        raise ValueError("no curve data for the requested variables")
    ncols = min(ncols, len(variables))
    nrows = -(-len(variables) // ncols)
    fig, axes = grid(nrows, ncols)
    for ax, variable in zip(axes.ravel(), variables):
        curve_plot(stats, y=variable, hue=hue, palette=palette, ax=ax)
    for ax in axes.ravel()[len(variables):]:
        ax.set_visible(False)
    figure_legend(fig, axes)
    return fig


def gamma_figure(stats: pd.DataFrame, *, hue: str = "series") -> Figure:
    """γ of each level over training, one panel per CAM-HD line (CAM-HD Figures 5–8)."""
    rows = stats[stats["variable"].str.startswith("gamma_")]
    names = list(dict.fromkeys(rows[hue]))
    if not names:
        raise ValueError("no gamma_<level> curves")
    rows = rows.assign(level=rows["variable"].str.removeprefix("gamma_"))
    fig, axes = grid(1, len(names), legend_width=0.3)
    for ax, name in zip(axes[0], names):
        curve_plot(rows[rows[hue] == name], hue="level", logy=False, ax=ax)
        ax.set_ylabel("γ")
        ax.set_title(name, fontsize="small")
    return fig


def combination_plot(table: pd.DataFrame, *, hue: str = "line", level: str = "global", y: str = "final_test_acc",
                     palette=None, ax=None):
    """``y`` (mean ± SE over seeds) against the fixed γ of ``level`` (CAM-HD Figure 1)."""
    ax = axes_or_current(ax)
    for name, color in palette_for(table[hue], palette).items():
        g = table[table[hue] == name].sort_values("gamma")
        ax.errorbar(g["gamma"], g["mean"], yerr=g["se"].fillna(0.0), marker="o", ms=3, capsize=3,
                    color=color, label=str(name))
    ax.set_xlabel(f"γ ({level})")
    ax.set_ylabel(pretty(y))
    legend(ax)
    return ax


def combination_figure(table: pd.DataFrame, **kwargs) -> Figure:
    """``combination_plot`` on a figure of its own."""
    fig, axes = grid(1, 1)
    combination_plot(table, ax=axes[0, 0], **kwargs)
    return fig
