"""What every figure shares: panel size, colours, line styles, the diverged/errored markers, legends.

Figures follow seaborn's conventions (tidy data first, column names keyword-only, ``ax=``);
figure-level functions lay panels out on a ``matplotlib.figure.Figure`` that is not registered
with pyplot, so nothing needs closing.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogLocator, NullFormatter

__all__ = ["PANEL", "TOP", "STAGGER", "LINESTYLES", "CLOSE_RGB", "palette_for", "line_styles", "grid",
           "legend", "figure_legend", "side_legend", "pretty", "axes_or_current", "light_log_ticks"]

PANEL = (3.6, 2.8)  # inches per panel: small, so reports and tests stay fast
TOP = 0.97  # where diverged/errored points sit, in axes coordinates ...
STAGGER = 0.03  # ... each line a little lower than the previous one, so coinciding markers stay visible
MARKERS = {"diverged": ("^", "diverged (at top)"), "error": ("x", "all seeds errored (at top)"),
            "above": ("2", "finite, above the panel (at top)"),
            "unresolved": ("o", "best α0 not resolved (edge of grid or wide gap)")}
ABOVE = 1.25  # a valley panel ends at this many times the highest loss any line starts from (about L0)
# line styles that tell apart lines whose colours are (nearly) the same
LINESTYLES = ("-", "--", ":", "-.")
CONSTRAINED_PANELS = 8  # more panels than this: a fixed layout (see grid)
MARGINS = (0.75, 0.15, 0.55, 0.6)  # inches left, right, bottom, top of a fixed layout (tick labels, titles)
CLOSE_RGB = 0.3  # RGB distance below which two colours read as one (tab10's and Set1's browns, reds, ...)


def pretty(name: str) -> str:
    return name.replace("_", " ")


def axes_or_current(ax):
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


def legend(ax, **kwargs) -> None:
    handles, labels = ax.get_legend_handles_labels()
    for gid, (marker, text) in MARKERS.items():
        if any(line.get_gid() == gid for line in ax.lines):
            handles.append(Line2D([], [], ls="none", marker=marker, color="0.3",
                                  mfc="none" if gid == "unresolved" else "0.3"))
            labels.append(text)
    if handles:
        ax.legend(handles, labels, fontsize="x-small", handlelength=4, **kwargs)  # long enough to show dashes


def figure_legend(fig: Figure, axes) -> None:
    """One legend for the figure, merged from every panel (panels lose their own)."""
    seen, markers = {}, {}
    notes = {text for _, text in MARKERS.values()}
    for ax in np.ravel(axes):
        legend = ax.get_legend()
        if legend is None:
            continue
        for handle, text in zip(legend.legend_handles, legend.get_texts()):
            (markers if text.get_text() in notes else seen).setdefault(text.get_text(), handle)
        legend.remove()
    seen.update(markers)  # the ▲/✕ explanations go last
    if seen:
        side_legend(fig, axes, list(seen.values()), list(seen.keys()))


def side_legend(fig: Figure, axes, handles, labels) -> None:
    """A figure legend right of the panels, in either layout of ``grid``."""
    place = dict(loc="outside right upper")
    if fig.get_layout_engine() is None:  # a fixed layout: just right of the panels
        shown = [ax for ax in np.ravel(axes) if ax.get_visible()]
        right, top = max(ax.get_position().x1 for ax in shown), max(ax.get_position().y1 for ax in shown)
        place = dict(loc="upper left", bbox_to_anchor=(right + 0.1 / fig.get_figwidth(), top))
    fig.legend(handles, labels, fontsize="x-small", handlelength=4, **place)  # long enough to show dashes


def light_log_ticks(ax) -> None:
    """Minor ticks at 2 and 5 × 10^k, unlabelled, on a log axis spanning a decade or more.

    Matplotlib labels none of its eight minor ticks per decade there anyway, but makes each one a
    tick object with its own lines and text: a few milliseconds apiece, seconds per large figure.
    """
    for axis, limits in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        low, high = sorted(limits)
        if axis.get_scale() == "log" and low > 0 and high / low >= 10:
            axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
            axis.set_minor_formatter(NullFormatter())


def grid(nrows: int, ncols: int, *, legend_width: float = 2.0, panel=PANEL, gaps: tuple[float, float] = (0.65, 0.8),
         margins: tuple[float, float, float, float] | None = None, fixed: bool | None = None
         ) -> tuple[Figure, np.ndarray]:
    """A figure of nrows × ncols panels of ``panel`` inches, ``legend_width`` inches on the right.

    Up to ``CONSTRAINED_PANELS`` panels (or with ``fixed=False``), matplotlib's constrained layout
    places them; beyond (or with ``fixed=True``), a fixed layout does, with ``gaps`` inches between
    columns and rows and ``margins`` inches left, right, bottom and top (default ``MARGINS``):
    constrained layout measures every tick label of every panel, seconds per figure at scale.
    """
    width, height = panel[0] * ncols + legend_width, panel[1] * nrows
    if not (fixed if fixed is not None else nrows * ncols > CONSTRAINED_PANELS):
        fig = Figure(figsize=(width, height), layout="constrained")
        return fig, fig.subplots(nrows, ncols, squeeze=False)
    left, right, bottom, top = margins or MARGINS
    height += top + bottom  # the panels keep their size; the margins come on top
    fig = Figure(figsize=(width, height))
    box_w, box_h = width - left - right - legend_width, height - top - bottom
    ax_w, ax_h = (box_w - (ncols - 1) * gaps[0]) / ncols, (box_h - (nrows - 1) * gaps[1]) / nrows
    spec = dict(left=left / width, right=(width - right - legend_width) / width, bottom=bottom / height,
                top=(height - top) / height, wspace=gaps[0] / ax_w, hspace=gaps[1] / ax_h)
    return fig, fig.subplots(nrows, ncols, squeeze=False, gridspec_kw=spec)


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
