"""Figures, seaborn's way: tidy data first, column names keyword-only, ``ax=`` to compose.

Axes-level functions (``*_plot``) draw on one Axes and return it. Figure-level functions
(``*_figure``) lay several panels out on a new ``matplotlib.figure.Figure`` (not registered
with pyplot, so nothing needs closing) and return it. Statistics come from ``analysis.stats``
and ``analysis.robustness``; nothing here computes more than a filter.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from .stats import LOSSES, best_beta

__all__ = [
    "valley_plot", "valley_figure", "decay_labels", "decay_figure", "hd_series", "hd_figure",
    "curve_plot", "curves_figure", "gamma_figure", "combination_plot", "combination_figure",
    "expected_best_plot", "expected_best_figure", "importance_plot", "importance_figure", "palette_for",
    "line_styles", "base_optimizer",
]

PANEL = (3.6, 2.8)  # inches per panel: small, so reports and tests stay fast
TOP = 0.97  # where diverged/errored points sit, in axes coordinates ...
STAGGER = 0.03  # ... each line a little lower than the previous one, so coinciding markers stay visible
_MARKERS = {"diverged": ("^", "diverged (at top)"), "error": ("x", "all seeds errored (at top)"),
            "unresolved": ("o", "best α0 not resolved (edge of grid or wide gap)")}
# line styles that tell apart lines whose colours are (nearly) the same
LINESTYLES = ("-", "--", ":", "-.")
CLOSE_RGB = 0.3  # RGB distance below which two colours read as one (tab10's and Set1's browns, reds, ...)
MAX_SERIES = 8  # more lines than this in one valley panel: one panel per base optimizer


def _pretty(name: str) -> str:
    return name.replace("_", " ")


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt  # only for interactive use without ax=

        ax = plt.gca()
    return ax


def palette_for(levels, palette=None) -> dict:
    """Map each level to a colour: a dict is used as given (gaps filled), a name or None picks colours."""
    import seaborn as sns  # lazily: it is slow to import, and `import analysis` should stay light

    levels = list(dict.fromkeys(levels))
    if isinstance(palette, dict):
        missing = [lv for lv in levels if lv not in palette]
        filler = dict(zip(missing, sns.color_palette("husl", max(len(missing), 1))))
        return {lv: palette.get(lv, filler.get(lv)) for lv in levels}
    if palette is None:  # distinct colours first (tab20's pairs would suggest relations that are not there)
        colors = [*sns.color_palette("tab10"), *sns.color_palette("Dark2"), *sns.color_palette("Set1")]
        if len(levels) > len(colors):
            colors = sns.color_palette("husl", len(levels))
        return dict(zip(levels, colors))
    return dict(zip(levels, sns.color_palette(palette, max(len(levels), 1))))


def _name(hue: str, level, rows: pd.DataFrame) -> str:
    if hue == "beta":
        return f"β={level:g}"
    if "beta" in rows and rows["beta"].notna().all() and rows["beta"].nunique() == 1:
        return f"{level}, β={rows['beta'].iloc[0]:g}"  # an HD line reduced to one β
    return str(level)


def _legend(ax, **kwargs) -> None:
    handles, labels = ax.get_legend_handles_labels()
    for gid, (marker, text) in _MARKERS.items():
        if any(line.get_gid() == gid for line in ax.lines):
            handles.append(Line2D([], [], ls="none", marker=marker, color="0.3",
                                  mfc="none" if gid == "unresolved" else "0.3"))
            labels.append(text)
    if handles:
        ax.legend(handles, labels, fontsize="x-small", handlelength=4, **kwargs)  # long enough to show dashes


def _figure_legend(fig: Figure, axes) -> None:
    """One legend for the figure, merged from every panel (panels lose their own)."""
    seen, markers = {}, {}
    notes = {text for _, text in _MARKERS.values()}
    for ax in np.ravel(axes):
        legend = ax.get_legend()
        if legend is None:
            continue
        for handle, text in zip(legend.legend_handles, legend.get_texts()):
            (markers if text.get_text() in notes else seen).setdefault(text.get_text(), handle)
        legend.remove()
    seen.update(markers)  # the ▲/✕ explanations go last
    if seen:
        fig.legend(list(seen.values()), list(seen.keys()), loc="outside right upper", fontsize="x-small",
                   handlelength=4)  # a dashed line with a marker reads as solid at the default length


def _grid(nrows: int, ncols: int, *, legend_width: float = 2.0) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(PANEL[0] * ncols + legend_width, PANEL[1] * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


# --------------------------------------------------------------------------- valleys
def line_styles(colors: dict) -> dict:
    """A line style per level such that no two levels share a (nearly equal) colour and a style.

    Levels keep a solid line unless an earlier level has a colour within ``CLOSE_RGB`` of theirs
    and the same style; then they take the first style no such level has.
    """
    from matplotlib.colors import to_rgb

    used: list[tuple[np.ndarray, object]] = []
    out = {}
    for level, color in colors.items():
        rgb = np.asarray(to_rgb(color))
        taken = [ls for other, ls in used if np.linalg.norm(other - rgb) < CLOSE_RGB]
        style = next((ls for ls in LINESTYLES if ls not in taken), LINESTYLES[len(taken) % len(LINESTYLES)])
        used.append((rgb, style))
        out[level] = style
    return out


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
    ax = _axes(ax)
    rows = table[table["metric"] == metric]
    colors = palette_for(rows[hue], palette)
    names = _line_names(rows, hue, colors)
    styles = dict(line_styles({names[level]: c for level, c in colors.items()}), **(linestyles or {}))
    top = ax.get_xaxis_transform()  # x in data, y in axes coordinates
    for i, (level, color) in enumerate(colors.items()):
        g = rows[rows[hue] == level].sort_values("lr")
        name = names[level]
        if g["best_lr"].isna().all():  # no finite mean: lr / best lr is undefined
            ax.plot([], [], color=color, ls=styles[name], label=f"{name} (no finite loss)")
            continue
        ok = np.isfinite(g["mean"])
        ax.plot(g.loc[ok, "lr_ratio"], g.loc[ok, "mean"], marker="o", ms=3, color=color, ls=styles[name],
                label=name)
        ring = ok & np.isin(g["lr"].to_numpy(float), _unresolved_lrs(unresolved, metric, g))
        if ring.any():
            ax.plot(g.loc[ring, "lr_ratio"], g.loc[ring, "mean"], ls="none", marker="o", ms=9, mfc="none",
                    mew=1.2, color=color, gid="unresolved")
        for gid, mask in (("diverged", np.isinf(g["mean"])), ("error", g["mean"].isna())):
            if mask.any():
                y = TOP - STAGGER * (i % 4)
                ax.plot(g.loc[mask, "lr_ratio"], [y] * int(mask.sum()), ls="none", marker=_MARKERS[gid][0],
                        color=color, transform=top, gid=gid, clip_on=False)
    ax.set_xscale("log")
    ax.set_xlabel("lr / best lr")
    ax.set_ylabel(_pretty(metric))
    _legend(ax)
    return ax


def base_optimizer(label: str) -> str:
    """The base optimizer of a label: ``sgd`` for sgd, sgd-hd, sgd-cam-hd; ``adam`` for adam-l4."""
    return str(label).split("-")[0]


def valley_figure(table: pd.DataFrame, *, metrics=LOSSES, hue: str = "series", palette=None,
                  unresolved: pd.DataFrame | None = None, max_series: int = MAX_SERIES) -> Figure:
    """Train and test valleys side by side (robustness study Figures 4–5); HD lines at their best β.

    With more than ``max_series`` lines, one column of panels per base optimizer (``base_optimizer``
    of the label), train above test. ``unresolved`` marks points as in ``valley_plot``.
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
        fig, axes = _grid(1, len(metrics))
        for ax, metric in zip(axes[0], metrics):
            valley_plot(table, metric=metric, hue=hue, palette=palette, unresolved=unresolved, linestyles=styles,
                        ax=ax)
    else:
        base = table["label"].map(base_optimizer)
        bases = sorted(set(base))
        fig, axes = _grid(len(metrics), len(bases), legend_width=2.4)
        for col, name in enumerate(bases):
            for row, metric in enumerate(metrics):
                ax = valley_plot(table[base == name], metric=metric, hue=hue, palette=palette,
                                 unresolved=unresolved, linestyles=styles, ax=axes[row, col])
                ax.set_title(name if row == 0 else "", fontsize="small")
    _figure_legend(fig, axes)
    return fig


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
    fig, axes = _grid(len(metrics), len(labels), legend_width=0.3)
    for col, label in enumerate(labels):
        for row, metric in enumerate(metrics):
            ax = valley_plot(table[table["label"] == label], metric=metric, palette=palette, ax=axes[row, col])
            ax.set_title(label if row == 0 else "", fontsize="small")
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
    fig, axes = _grid(len(metrics), len(series), legend_width=0.3)
    for col, name in enumerate(series):
        rows = table[table["series"] == name].sort_values("beta")
        for row, metric in enumerate(metrics):
            ax = valley_plot(rows, metric=metric, hue="beta", palette=palette, ax=axes[row, col])
            ax.set_title(name if row == 0 else "", fontsize="small")
    return fig


# ---------------------------------------------------------------------------- curves
def curve_plot(stats: pd.DataFrame, *, y: str | None = None, hue: str = "series", palette=None,
               logy: bool | None = None, ax=None):
    """Mean over seeds against epoch with its confidence band, one line per ``hue`` level.

    ``stats`` comes from ``curve_stats``; ``y`` picks its ``variable`` (None: use all rows).
    Loss and lr panels get a log y axis when every mean is positive (``logy`` overrides).
    """
    ax = _axes(ax)
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
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # epochs are whole numbers
    if rows["epoch"].nunique() == 1:  # one epoch: room for an integer tick around it
        epoch = float(rows["epoch"].iloc[0])
        ax.set_xlim(epoch - 0.5, epoch + 0.5)
    ax.set_xlabel("epoch")
    if y is not None:
        ax.set_ylabel(_pretty(y))
    _legend(ax)
    return ax


def curves_figure(stats: pd.DataFrame, *, variables=("train_loss", "test_loss", "train_acc", "test_acc"),
                  hue: str = "series", palette=None, ncols: int = 2) -> Figure:
    """Learning curves (or any curve variables, e.g. ``("lr",)``) with 95% bands, one panel each."""
    variables = [v for v in variables if (stats["variable"] == v).any()]
    if not variables:
        raise ValueError("no curve data for the requested variables")
    ncols = min(ncols, len(variables))
    nrows = -(-len(variables) // ncols)
    fig, axes = _grid(nrows, ncols)
    for ax, variable in zip(axes.ravel(), variables):
        curve_plot(stats, y=variable, hue=hue, palette=palette, ax=ax)
    for ax in axes.ravel()[len(variables):]:
        ax.set_visible(False)
    _figure_legend(fig, axes)
    return fig


def gamma_figure(stats: pd.DataFrame, *, hue: str = "series") -> Figure:
    """γ of each level over training, one panel per CAM-HD line (CAM-HD Figures 5–8)."""
    rows = stats[stats["variable"].str.startswith("gamma_")]
    names = list(dict.fromkeys(rows[hue]))
    if not names:
        raise ValueError("no gamma_<level> curves")
    rows = rows.assign(level=rows["variable"].str.removeprefix("gamma_"))
    fig, axes = _grid(1, len(names), legend_width=0.3)
    for ax, name in zip(axes[0], names):
        curve_plot(rows[rows[hue] == name], hue="level", logy=False, ax=ax)
        ax.set_ylabel("γ")
        ax.set_title(name, fontsize="small")
    return fig


def combination_plot(table: pd.DataFrame, *, hue: str = "line", level: str = "global", y: str = "final_test_acc",
                     palette=None, ax=None):
    """``y`` (mean ± SE over seeds) against the fixed γ of ``level`` (CAM-HD Figure 1)."""
    ax = _axes(ax)
    for name, color in palette_for(table[hue], palette).items():
        g = table[table[hue] == name].sort_values("gamma")
        ax.errorbar(g["gamma"], g["mean"], yerr=g["se"].fillna(0.0), marker="o", ms=3, capsize=3,
                    color=color, label=str(name))
    ax.set_xlabel(f"γ ({level})")
    ax.set_ylabel(_pretty(y))
    _legend(ax)
    return ax


def combination_figure(table: pd.DataFrame, **kwargs) -> Figure:
    """``combination_plot`` on a figure of its own."""
    fig, axes = _grid(1, 1)
    combination_plot(table, ax=axes[0, 0], **kwargs)
    return fig


# ------------------------------------------------------------------------ robustness
def expected_best_plot(table: pd.DataFrame, *, hue: str = "series", palette=None, ax=None):
    """Expected best loss against the number of random grid draws k, one line per ``hue`` level."""
    ax = _axes(ax)
    for name, color in palette_for(table[hue], palette).items():
        g = table[table[hue] == name].sort_values("k")
        ax.plot(g["k"], g["expected"], marker="o", ms=3, color=color, label=str(name))
    ax.set_xlabel("k (random grid draws)")
    metric = table["metric"].iloc[0] if len(table) else "loss"
    ax.set_ylabel(f"expected best {_pretty(metric)}")
    _legend(ax)
    return ax


def expected_best_figure(table: pd.DataFrame, *, hue: str = "series", palette=None) -> Figure:
    """``expected_best_plot`` per metric found in ``table``."""
    metrics = list(dict.fromkeys(table["metric"]))
    if not metrics:
        raise ValueError("empty expected-best table")
    fig, axes = _grid(1, len(metrics))
    for ax, metric in zip(axes[0], metrics):
        expected_best_plot(table[table["metric"] == metric], hue=hue, palette=palette, ax=ax)
    _figure_legend(fig, axes)
    return fig


def importance_plot(table: pd.DataFrame, *, y: str = "series", hue: str = "param", ax=None):
    """Horizontal bars of fANOVA importance per ``y`` level, one bar per ``hue`` (param)."""
    import seaborn as sns

    ax = _axes(ax)
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
