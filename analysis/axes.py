"""Swept axes: a hyperparameter that a series runs at several values while everything else is fixed.

α0 (``lr``) is one axis; so is any numeric hyperparameter that varies inside a label (``beta``,
``momentum``, ``weight_decay``, ``batch_size``, ``warmup_steps``, ``d0``, ...: whatever columns the
table has, see ``analysis.columns``). For an axis, a *line* is the rows of one label and decay
whose other swept hyperparameters are fixed: its ``series`` names the label and the variant
columns other than the axis (``sgdn`` on the momentum axis, ``sgdn [momentum=0.9]`` on the lr
axis), and ``at`` the fixed α0 and β (``lr=0.01``), which are never part of a series name.

Each axis has one scale for the whole table, so widths compare across series: ``log`` (values
> 0, read in decades), ``log1m`` (values in [0, 1) read in decades of 1 − value, as momentum 0.9,
0.99, 0.999 is read) or ``linear``, whichever spaces the grid most evenly; α0 is always ``log``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .columns import (NOT_VARIANT, TASK_COLUMNS, hyperparameter_columns, is_hyperparameter, prepare, replicate_keys,
                      texts, variant_text, varying_columns)

__all__ = ["SCALES", "axis_scale", "to_axis", "from_axis", "axis_frame", "axis_frames", "same_task", "swept_axes",
           "min_values",
           "candidate_axes", "check_axis"]

SCALES = ("log", "log1m", "linear")
AT = ("lr", "beta")  # axes every series may sweep, named in `at` rather than in the series


def min_values(axis: str) -> int:
    """Values a line needs to count as swept along ``axis``: two α0 (as the valley plots), else three."""
    return 2 if axis == "lr" else 3


def to_axis(values, scale: str) -> np.ndarray:
    """Axis coordinates: log10 for ``log``, −log10(1 − v) for ``log1m``, the values for ``linear``."""
    v = np.asarray(values, dtype=float)
    if scale == "log":
        return np.log10(v)
    if scale == "log1m":
        return -np.log10(1.0 - v)
    if scale == "linear":
        return v
    raise ValueError(f"scale must be one of {', '.join(SCALES)}; got {scale!r}")


def from_axis(x, scale: str) -> np.ndarray:
    """The inverse of ``to_axis``."""
    x = np.asarray(x, dtype=float)
    if scale == "log":
        return 10.0 ** x
    if scale == "log1m":
        return 1.0 - 10.0 ** (-x)
    if scale == "linear":
        return x
    raise ValueError(f"scale must be one of {', '.join(SCALES)}; got {scale!r}")


def axis_scale(values, *, axis: str | None = None) -> str:
    """The scale that spaces the distinct ``values`` most evenly (see the module docstring).

    Evenness is the coefficient of variation of the steps between sorted values in each scale's
    coordinates; a tie keeps linear. Two values are ``log`` when positive and a decade or more apart.
    """
    if axis == "lr":
        return "log"
    v = np.unique(np.asarray(values, dtype=float)[np.isfinite(np.asarray(values, dtype=float))])
    positive = len(v) > 0 and bool((v > 0).all())
    if len(v) < 3:
        return "log" if positive and len(v) == 2 and v[1] >= 10 * v[0] else "linear"
    candidates = ["linear"] + (["log"] if positive else []) + (["log1m"] if bool((v >= 0).all() and (v < 1).all())
                                                            else [])

    def unevenness(scale: str) -> float:
        steps = np.diff(to_axis(v, scale))
        return float(steps.std() / steps.mean())

    scores = [unevenness(s) for s in candidates]
    return candidates[int(np.argmin(np.round(scores, 9)))]  # first minimum: linear on a tie


def _numeric(column: pd.Series) -> pd.Series | None:
    """The column as floats, or None when a set cell is not a number (lists, names, booleans)."""
    if pd.api.types.is_bool_dtype(column):
        return None
    if pd.api.types.is_numeric_dtype(column):
        return column.astype(float)
    try:
        values = column.dropna().unique()
    except TypeError:  # lists or arrays: not an axis
        return None
    if any(isinstance(v, (bool, np.bool_, str, list, tuple, np.ndarray)) for v in values):
        return None
    numbers = pd.to_numeric(column, errors="coerce")
    return None if (numbers.isna() & column.notna()).any() else numbers.astype(float)


def candidate_axes(trials: pd.DataFrame) -> list[str]:
    """α0 and the numeric hyperparameter columns that could be axes (``swept_axes`` checks which are)."""
    return ["lr", *[c for c in hyperparameter_columns(trials) if c != "lr" and c not in NOT_VARIANT - set(AT)
                    and _numeric(trials[c]) is not None]]


def check_axis(trials: pd.DataFrame, axis: str) -> pd.Series:
    """The ``axis`` column as floats; ValueError naming the possible axes when it cannot be one."""
    numbers = _numeric(trials[axis]) if isinstance(axis, str) and axis in trials.columns else None
    if numbers is None or not is_hyperparameter(axis) or axis in NOT_VARIANT - set(AT):
        raise ValueError(f"axis must be a numeric hyperparameter column of trials "
                         f"({', '.join(candidate_axes(trials))}); got {axis!r}")
    return numbers


def axis_frame(trials: pd.DataFrame, axis: str) -> pd.DataFrame:
    """The rows that lie on ``axis`` lines, with the line's identity added.

    Added columns: ``series``, ``variant`` (as named for this axis), ``at`` (the fixed α0/β of the
    line, "" when neither is swept), ``line`` (``series`` plus ``at``), ``task`` (a dict of the
    task columns set in the row; see ``same_task``), ``scale`` and ``x`` (the row's axis value
    in the scale's coordinates). Rows whose axis value is missing, and labels that do not vary
    ``axis`` or whose axis values are not numbers, are left out. Errored rows stay (the
    statistics skip them).
    """
    return axis_frames(trials, [axis])[axis]


def axis_frames(trials: pd.DataFrame, axes) -> dict[str, pd.DataFrame]:
    """``axis_frame`` of each of ``axes``, reading the table's cells once."""
    trials = prepare(trials).reset_index(drop=True)  # labels below are positions (a concat may repeat them)
    numbers = {axis: check_axis(trials, axis) for axis in axes}
    columns = [c for c in hyperparameter_columns(trials) if c not in NOT_VARIANT]
    text = pd.DataFrame({c: texts(trials[c]) for c in [*columns, *AT]}, index=trials.index)
    labels = text.groupby(trials["label"].to_numpy(), sort=False).indices  # label -> row positions
    keys = replicate_keys(trials)
    varying = {label: varying_columns(text.iloc[rows], keys[rows]) for label, rows in labels.items()}
    return {axis: _frame(trials, text, labels, varying, axis, numbers[axis]) for axis in axes}


def _frame(trials, text, labels, varying, axis, numbers) -> pd.DataFrame:
    n = len(trials)
    keep = np.zeros(n, dtype=bool)
    variant, at = np.full(n, "", dtype=object), np.full(n, "", dtype=object)
    for label, rows in labels.items():
        if axis not in varying[label]:
            continue
        rows = rows[numbers.to_numpy()[rows] == numbers.to_numpy()[rows]]  # the axis value set
        keep[rows] = True
        part = text.iloc[rows]
        variant[rows] = variant_text(part, [c for c in varying[label] if c != axis and c not in AT]).to_numpy()
        at[rows] = variant_text(part, [c for c in AT if c != axis and c in varying[label]]).to_numpy()
    if not keep.any():
        return trials.iloc[:0].assign(at="", line="", task=None, scale="linear", x=np.nan)
    out = trials[keep].assign(variant=variant[keep], at=at[keep])
    decay = out["decay"].map(lambda d: "" if d is None else f" ({d})")
    out["series"] = out["label"] + out["variant"].map(lambda v: f" [{v}]" if v else "") + decay
    out["line"] = out["series"] + out["at"].map(lambda a: f" @ {a}" if a else "")
    out["task"] = _tasks(out, axis)
    scale = axis_scale(numbers[keep].to_numpy(), axis=axis)  # the lines' values: not those of labels that fix it
    out["scale"] = scale
    out["x"] = to_axis(numbers[keep].to_numpy(), scale)
    return out


def _tasks(trials: pd.DataFrame, axis: str) -> pd.Series:
    """Per row, {task column: text} of the task columns set in it (the axis left out)."""
    columns = [c for c in TASK_COLUMNS if c in trials.columns and c != axis]
    text = pd.DataFrame({c: texts(trials[c]) for c in columns}, index=trials.index)
    keys = variant_text(text, columns)
    distinct = text.assign(_key=keys).drop_duplicates("_key")
    tasks = {row[-1]: {c: v for c, v in zip(columns, row[:-1]) if v != "None"}
             for row in distinct.itertuples(index=False)}
    return keys.map(tasks)


def same_task(a: dict, b: dict) -> bool:
    """Two task dicts agree: no column set in both with different values (a missing one agrees)."""
    return all(b.get(k, v) == v for k, v in a.items())


def swept_axes(trials: pd.DataFrame, *, axes=None) -> pd.DataFrame:
    """One row per (series, axis) with a line of ``min_values(axis)`` or more values on it.

    ``axes`` defaults to α0 and every hyperparameter column. Columns: axis, scale, series, label,
    n_lines (lines of the series on that axis), n_values (most values on one line).
    """
    trials = prepare(trials)
    axes = candidate_axes(trials) if axes is None else list(axes)
    rows = []
    for axis, frame in axis_frames(trials, axes).items():
        frame = frame[frame["status"] != "error"]
        if frame.empty:
            continue
        counts = frame.groupby(["series", "line"], sort=True)["x"].nunique().reset_index()
        counts = counts[counts["x"] >= min_values(axis)]
        for series, group in counts.groupby("series", sort=True):
            rows.append({"axis": axis, "scale": frame["scale"].iloc[0], "series": series,
                         "label": frame.loc[frame["series"] == series, "label"].iloc[0],
                         "n_lines": len(group), "n_values": int(group["x"].max())})
    return pd.DataFrame(rows, columns=["axis", "scale", "series", "label", "n_lines", "n_values"])
