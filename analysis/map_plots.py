"""Heatmaps of ``maps.heatmap_table``: mean minimal loss over α0 (x) and a second axis (y).

Cividis (perceptually uniform, readable with every common colour-vision deficiency); the colour
scale ends at L0, so every cell no better than initialization reads as the top colour, and is
logarithmic where the means span a factor of 4 or more. ``heatmap_figure`` gives every map one
scale, so a colour is one loss in all of them. Axes are
log-scaled where the axis is (``analysis.axes``: a ``log1m`` axis is log-scaled in 1 − value, its
ticks at the grid's values). Diverged cells are grey with ▲, all-errored ones ✕, the best
cell carries ★; cells not run stay blank.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import matplotlib.cm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch
from matplotlib.colors import LogNorm
from matplotlib.ticker import NullFormatter

from .axes import from_axis, to_axis
from .stats import LOSSES
from .style import PANEL, axes_or_current, grid, pretty, side_legend

__all__ = ["heatmap_plot", "heatmap_figure", "heatmap_norm", "CMAP"]

CMAP = "cividis"
DIVERGED = "0.75"


def _edges(values: np.ndarray, scale: str) -> np.ndarray:
    """Cell edges halfway between grid values in the axis's coordinates, back in its units."""
    x = to_axis(values, scale)
    if len(x) == 1:
        edges = np.array([x[0] - 0.5, x[0] + 0.5])
    else:
        mid = (x[1:] + x[:-1]) / 2
        edges = np.concatenate([[x[0] - (mid[0] - x[0])], mid, [x[-1] + (x[-1] - mid[-1])]])
    return from_axis(edges, scale)


def _set_scale(ax, which: str, scale: str, values: np.ndarray) -> None:
    setter = ax.set_xscale if which == "x" else ax.set_yscale
    if scale == "log":
        setter("log")
    elif scale == "log1m":
        setter("function", functions=(lambda v: -np.log10(np.clip(1.0 - v, 1e-12, None)),
                                      lambda x: 1.0 - 10.0 ** (-x)))
        (ax.set_xticks if which == "x" else ax.set_yticks)(values, [f"{v:g}" for v in values])


def heatmap_norm(cells: pd.DataFrame, *, metric: str | None = None):
    """(norm, capped) for the cells of ``metric`` (None: all): from the lowest finite mean to L0 (the
    highest finite mean where that is lower, or L0 is unknown; capped: some mean is above L0), on a
    log scale where the means span a factor of 4 or more."""
    from matplotlib.colors import Normalize

    rows = cells if metric is None else cells[cells["metric"] == metric]
    finite = rows["mean"][np.isfinite(rows["mean"])]
    if finite.empty:
        return Normalize(0.0, 1.0), False
    l0 = rows["l0"][np.isfinite(rows["l0"])]
    top = float(finite.max()) if l0.empty else min(float(finite.max()), float(l0.max()))
    low = float(finite.min())
    top = max(top, low * (1 + 1e-9) + 1e-12)
    norm = LogNorm(low, top) if low > 0 and top >= 4 * low else Normalize(low, top)
    return norm, bool(not l0.empty and finite.max() > l0.max())


def heatmap_plot(cells: pd.DataFrame, *, series: str | None = None, metric: str = "min_train_loss", ax=None,
                 norm=None, colorbar: bool = True):
    """One series' map for ``metric`` (``series`` may be None when ``cells`` holds one series).

    ``norm`` (default: ``heatmap_norm`` of the series' cells) maps means to colours; pass one norm
    to several maps to make one colour one loss across them.
    """
    ax = axes_or_current(ax)
    rows = cells[cells["metric"] == metric]
    names = list(dict.fromkeys(rows["series"]))
    if series is None and len(names) == 1:
        series = names[0]
    if series not in names:
        raise ValueError(f"series must be one of {', '.join(names)}; got {series!r}")
    rows = rows[rows["series"] == series]
    axis, scale = rows["axis"].iloc[0], rows["scale"].iloc[0]
    lrs, values = np.sort(rows["lr"].unique()), np.sort(rows["value"].unique())
    grid = rows.pivot_table(index="value", columns="lr", values="mean", aggfunc="first", dropna=False)
    grid = grid.reindex(index=values, columns=lrs)
    mean = grid.to_numpy(float)
    capped = False
    if norm is None:
        norm, capped = heatmap_norm(rows, metric=metric)
    xe, ye = _edges(lrs, "log"), _edges(values, scale)
    mesh = ax.pcolormesh(xe, ye, np.ma.masked_invalid(mean), cmap=CMAP, norm=norm, shading="flat")
    diverged = np.isinf(mean)
    if diverged.any():  # grey under a ▲ (hatching each cell costs seconds on a large grid)
        ax.pcolormesh(xe, ye, np.ma.masked_where(~diverged, np.zeros_like(mean)), cmap=ListedColormap([DIVERGED]),
                      shading="flat")
    cx, cy = lrs, values  # markers sit on the configuration itself
    errored = rows.pivot_table(index="value", columns="lr", values="n_error", aggfunc="first").reindex(
        index=values, columns=lrs).to_numpy(float)
    for mask, marker in ((diverged, "^"), (np.isnan(mean) & (errored > 0), "x")):
        j, i = np.nonzero(mask)
        if len(i):
            ax.plot(cx[i], cy[j], ls="none", marker=marker, color="0.2", ms=4, gid="diverged" if marker == "^"
                    else "error")
    best = rows[rows["best"]]
    if len(best):
        i, j = np.searchsorted(lrs, best["lr"].iloc[0]), np.searchsorted(values, best["value"].iloc[0])
        ax.plot([cx[i]], [cy[j]], ls="none", marker="*", ms=13, mfc="white", mec="black", mew=1.0, gid="best")
    ax.set_xscale("log")
    _set_scale(ax, "y", scale, values)
    ax.set_xlim(xe[0], xe[-1])
    ax.set_ylim(ye[0], ye[-1])
    ax.set_xlabel("α0 (lr)")
    ax.set_ylabel(pretty(axis) if scale != "log1m" else f"{pretty(axis)} (1 − {pretty(axis)} on a log scale)",
                  fontsize="small")
    at = rows["at"].iloc[0]
    ax.set_title(f"{series}" + (f" @ {at}" if at else ""), fontsize="small")
    if colorbar:
        _colorbar(ax.figure, mesh, ax, f"mean {pretty(metric)}", capped)
    ax.minorticks_off()  # the cells are the resolution (and minor ticks cost seconds in a large figure)
    ax.tick_params(labelsize="x-small")
    return ax


def _colorbar(fig, mappable, axes, label: str, capped: bool) -> None:
    shrink = min(1.0, 3.0 / fig.get_figheight())  # a bar of about three inches however tall the figure
    bar = fig.colorbar(mappable, ax=axes, extend="max" if capped else "neither", fraction=0.05, pad=0.03,
                       shrink=shrink, anchor=(0.0, 1.0) if shrink < 1 else (0.0, 0.5))
    bar.set_label(label + (" (top: ≥ L0)" if capped else ""), fontsize="x-small")
    if isinstance(mappable.norm, LogNorm):  # ticks at 1, 2, 5 × 10^k, labelled 0.2 rather than 2×10⁻¹
        low, high = mappable.norm.vmin, mappable.norm.vmax
        decades = range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
        ticks = [m * 10.0 ** e for e in decades for m in (1, 2, 5) if low <= m * 10.0 ** e <= high]
        bar.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
        bar.ax.yaxis.set_minor_formatter(NullFormatter())
    bar.ax.tick_params(which="both", labelsize="x-small")


def heatmap_figure(cells: pd.DataFrame, *, metrics=LOSSES, max_columns: int = 4) -> Figure:
    """Every series' map in ``cells`` (one ``heatmap_table`` or several concatenated), one panel per metric."""
    keys = list(dict.fromkeys(zip(cells["axis"], cells["series"])))
    metrics = [m for m in metrics if (cells["metric"] == m).any()]
    if not keys or not metrics:
        raise ValueError("no cells to map")
    per_row = max(1, max_columns // len(metrics))
    nrows, ncols = -(-len(keys) // per_row), min(len(keys), per_row) * len(metrics)
    # one colour scale, so one colour is one loss in every map (and one colour bar, not one per map)
    fig, axes = grid(nrows, ncols, legend_width=1.3, panel=(PANEL[0] * 1.05, PANEL[1]), gaps=(0.85, 1.0),
                     margins=(0.8, 0.15, 0.55, 0.85))
    norm, capped = heatmap_norm(cells[cells["metric"].isin(metrics)])
    for k, (axis, series) in enumerate(keys):
        for m, metric in enumerate(metrics):
            ax = axes[k // per_row, (k % per_row) * len(metrics) + m]
            heatmap_plot(cells[cells["axis"] == axis], series=series, metric=metric, ax=ax, norm=norm,
                         colorbar=False)
            ax.set_title(f"{ax.get_title()}\n{pretty(metric)}", fontsize="small")
    for ax in axes.ravel()[len(keys) * len(metrics):]:
        ax.set_visible(False)
    label = "mean " + " / ".join(pretty(m) for m in metrics)
    _colorbar(fig, matplotlib.cm.ScalarMappable(norm=norm, cmap=CMAP), list(axes.ravel()), label, capped)
    handles = [Line2D([], [], ls="none", marker="*", ms=11, mfc="white", mec="black"), Patch(facecolor=DIVERGED),
               Line2D([], [], ls="none", marker="x", color="0.2")]
    side_legend(fig, axes, handles, ["best cell", "diverged ▲", "all seeds errored"])
    return fig
