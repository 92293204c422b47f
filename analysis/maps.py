"""Two-axis maps: the mean minimal loss over α0 and a second swept axis (``heatmap.png``).

A series that sweeps α0 together with another axis (HD's β, SGDN's momentum, a rule's second
knob; ``analysis.axes``) gets one cell per (α0, value) configuration it ran. Where the series
sweeps more than these two (an HD momentum series also over β), the map is the slice through its
best cell, as ``metrics.csv``'s ``at_best`` lines are.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .axes import AT, axis_frame, axis_frames, candidate_axes
from .columns import prepare, texts
from .grids import init_column
from .stats import LOSSES, cell_counts, higher_is_better, mean_se

__all__ = ["heatmap_table", "map_axes"]

COLUMNS = ["series", "label", "variant", "decay", "axis", "scale", "at", "lr", "value", "metric", "n", "n_diverged",
           "n_error", "mean", "se", "l0", "best"]


def map_axes(trials: pd.DataFrame, *, frames: dict[str, pd.DataFrame] | None = None) -> list[str]:
    """The axes other than α0 that some series sweeps at two or more values together with two or more α0.

    ``frames`` holds ``axes.axis_frames`` of the table where already made.
    """
    trials = prepare(trials)
    axes = candidate_axes(trials)[1:]
    frames = frames if frames is not None and set(axes) <= set(frames) else axis_frames(trials, axes)
    return [axis for axis in axes if not frames[axis].empty and _two_by_two(frames[axis], axis).any()]


def _two_by_two(frame: pd.DataFrame, axis: str) -> pd.Series:
    n = frame.groupby("series").agg(n_lr=("lr", "nunique"), n_axis=(axis, "nunique"))
    return (n["n_lr"] >= 2) & (n["n_axis"] >= 2)


def heatmap_table(trials: pd.DataFrame, *, axis: str, metrics=LOSSES, frame: pd.DataFrame | None = None
                  ) -> pd.DataFrame:
    """One row per cell (series, α0, ``axis`` value) and metric: n, n_diverged, n_error, mean, se over seeds.

    ``at`` names the slice of the axes the map does not show (β for an HD series mapped over
    momentum; "" when there is none), chosen per series and metric as the one holding the best
    cell; ``best`` marks that cell; ``l0`` is the series' mean loss at initialization (NaN without
    one). A diverged cell has mean +inf, an all-errored one NaN with ``n_error`` > 0. ``value`` is
    the axis value and ``scale`` its scale (``analysis.axes``). ``frame`` is ``axis_frame(trials,
    axis)`` where already made.
    """
    if axis == "lr":
        raise ValueError("axis must be the second axis of the map (α0 is always the first); got 'lr'")
    frame = axis_frame(trials, axis) if frame is None else frame
    if frame.empty:
        return pd.DataFrame(columns=COLUMNS)
    frame = frame[frame["series"].isin(_two_by_two(frame, axis).pipe(lambda s: s[s].index))]
    other = [c for c in AT if c not in ("lr", axis)]
    frame = frame.assign(at=texts(frame[other[0]]).map(lambda v: "" if v == "None" else f"{other[0]}={v}")
                         if other else "", value=frame[axis].astype(float))
    keys = ["series", "at", "lr", "value"]
    groups = [frame[k] for k in keys]
    ident = frame.groupby(keys, sort=True)[["label", "variant", "decay", "scale"]].first()
    counts = cell_counts(frame, keys)
    parts = []
    for metric in metrics:
        init = init_column(metric)
        l0 = (frame.groupby("series")[init].apply(lambda v: v[np.isfinite(v.astype(float))].astype(float).mean())
              if init in frame else pd.Series(np.nan, index=frame["series"].unique()))
        cells = ident.join(counts).join(mean_se(frame[metric], groups)).reset_index()
        cells = cells.assign(metric=metric, axis=axis, l0=cells["series"].map(l0).astype(float))
        finite = cells[np.isfinite(cells["mean"])]
        pick = "idxmax" if higher_is_better(metric) else "idxmin"  # the best cell of an accuracy is its highest
        best = finite.loc[getattr(finite.groupby("series")["mean"], pick)()] if len(finite) else finite
        chosen = dict(zip(best["series"], best["at"]))
        first = cells.drop_duplicates("series").set_index("series")["at"]  # no finite cell: the first slice
        cells = cells[cells["at"] == cells["series"].map(lambda s: chosen.get(s, first[s]))]
        cells["best"] = cells.index.isin(best.index)
        parts.append(cells)
    out = pd.concat(parts, ignore_index=True)
    out["n"] = out["n"].astype(int)
    return out[COLUMNS]
