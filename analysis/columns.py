"""Which columns of the trials table are hyperparameters, and the display keys built from them.

The rule is a complement: every column is a hyperparameter except the documented outcomes,
bookkeeping and analysis's own columns (README.md, "The results tables"). So an optimizer with
new hyperparameter names (Prodigy's ``d_coef``, Schedule-Free's ``warmup_steps``) needs no edit
here. A *series* is one line of a valley figure: a display label, plus the hyperparameters that
vary within that label (``variant``), plus the lr schedule (``decay``). A *method* is the label
and schedule alone: its variants compete for its best configuration.
"""
from __future__ import annotations

import ast
import math
import re
from collections.abc import Mapping

import numpy as np
import pandas as pd

__all__ = ["STATUSES", "OUTCOME_COLUMNS", "BOOKKEEPING_COLUMNS", "ADDED_COLUMNS", "TASK_COLUMNS",
           "is_hyperparameter", "hyperparameter_columns", "varying_columns", "replicate_keys", "canonical", "texts",
           "floats", "words", "prepare", "base_optimizer"]

STATUSES = ("ok", "diverged", "error")

# What a trial produced: not part of its configuration.
OUTCOME_COLUMNS = frozenset({"status", "final_lr", "epochs_completed", "steps", "wall_time_s", "error"})
OUTCOME_PATTERN = re.compile(r"^(?:(?:min|final|best|init)_\w+_(?:loss|acc)|iters_to_.+)$")
# Where and how a trial ran, or which run wrote it: never splits the seeds of one configuration.
BOOKKEEPING_COLUMNS = frozenset({"trial_id", "study", "label", "device", "node", "host", "round", "array_size",
                                 "array_id", "search_entry", "search_point", "smoke"})
# Added by analysis (prepare, the statistics); names starting with "_" are scratch columns.
ADDED_COLUMNS = frozenset({"variant", "series", "method"})
# The task a trial trains on: series compare only within one task (analysis.comparisons).
TASK_COLUMNS = ("dataset", "dataset_args", "model", "model_args", "batch_size", "epochs", "train_fraction",
                "augment", "divergence_factor", "loss_smoothing")
# Hyperparameters that never make a variant: the axes every series has (lr, beta), the schedule
# (in the series name), the replicate, and the optimizer (a label is one study entry, so its rows are
# one optimizer; older tables spell some names another way, e.g. sgd-hd for sgd-hd-sgd).
NOT_VARIANT = frozenset({"lr", "beta", "decay", "seed", "optimizer"})


def is_hyperparameter(column: str) -> bool:
    """Whether ``column`` is part of a trial's configuration (``seed`` is the replicate, not one)."""
    return not (column in OUTCOME_COLUMNS or column in BOOKKEEPING_COLUMNS or column in ADDED_COLUMNS
                or column == "seed" or column.startswith("_") or OUTCOME_PATTERN.match(column))


def hyperparameter_columns(trials: pd.DataFrame) -> list[str]:
    """The table's hyperparameter columns, in table order."""
    return [c for c in trials.columns if is_hyperparameter(str(c))]


# ---------------------------------------------------------------------------- cell texts
def _missing(value) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def canonical(value) -> str:
    """A stable text for any cell: lists, arrays and list-like strings print the same way."""
    if value is None:
        return "None"
    if isinstance(value, str):
        if value.startswith(("[", "(")):  # a list stored as text, e.g. gammas "[0.0, 1.0]" prints like [0, 1]
            try:
                return canonical(list(ast.literal_eval(value)))
            except (ValueError, SyntaxError, TypeError):
                return value
        return value
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {canonical(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, (list, tuple, np.ndarray)):
        return "[" + ", ".join(canonical(v) for v in value) + "]"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        return "None" if math.isnan(value) else f"{float(value):g}"
    return str(value)


def texts(column: pd.Series) -> pd.Series:
    """``canonical`` of every cell, computed once per distinct value (a table has few of them)."""
    try:
        codes, uniques = pd.factorize(column, use_na_sentinel=True)
    except TypeError:  # unhashable cells (lists or arrays from an older table): one by one
        return column.map(canonical).astype(object)
    names = np.array([canonical(u) for u in uniques] + ["None"], dtype=object)
    return pd.Series(names[codes], index=column.index, dtype=object)  # code -1 (missing) is the last


def floats(value) -> list[float] | None:
    """Numbers of a list-valued cell stored as a list, an array or a string such as "[0.2, 0.8]"."""
    if _missing(value):
        return None
    if isinstance(value, str):
        found = re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", value)
        return [float(v) for v in found] or None
    if isinstance(value, (list, tuple, np.ndarray)):
        return [float(v) for v in value]
    return [float(value)]


def words(value) -> list[str] | None:
    """Names of a list-valued cell such as ``levels`` (list, array or "unit,global" string)."""
    if _missing(value):
        return None
    if isinstance(value, str):
        return re.findall(r"[A-Za-z_]+", value) or None
    return [str(v) for v in value]


# ---------------------------------------------------------------------------- display keys
# the plain optimizer a rule builds on, for names that do not start with it (the learning-rate-free
# rules and the Adam variants): their valleys share a panel, and their comparisons a base
_BASES = {"prodigy": "adam", "d-adapt-sgd": "sgd", "d-adapt-adam": "adam", "schedule-free-sgd": "sgd",
          "schedule-free-adamw": "adam", "dog": "sgd", "ldog": "sgd", "radam": "adam", "adabound": "adam"}


def base_optimizer(label: str) -> str:
    """The base optimizer of a label: ``sgd`` for sgd, sgd-hd, sgd-cam-hd, d-adapt-sgd, dog; ``adam`` for
    adam-l4, prodigy, schedule-free-adamw; otherwise the label's first word."""
    label = str(label)
    return _BASES.get(label, label.split("-")[0])


def varying_columns(text: pd.DataFrame, keys: np.ndarray | None = None) -> list[str]:
    """Columns of ``text`` (cell texts of one label's rows) with two or more values set.

    A missing cell ("None") is not a value of its own where it can stand for a value the row did
    not write: older tables leave out a hyperparameter that newer ones write with its default (and
    older errored rows the task options). It is one where a row without a value and a row with one
    ran the same point: the same α0, β, schedule and seed (``keys``, from :func:`replicate_keys`,
    positional) and the same other cells. Then they are different configurations, and None is a
    setting (``lr_max: [null, 0.05]``).
    """
    out = []
    for column in text.columns:
        cells = text[column].to_numpy()
        values = set(np.unique(cells)) - {"None"}
        if keys is not None and values and len(values) < len(set(np.unique(cells))):
            unset = cells == "None"
            rest = text.drop(columns=column).assign(_key=keys)  # the same point: every other cell alike
            point = rest.groupby(list(rest.columns), sort=False).ngroup().to_numpy()
            if np.intersect1d(point[unset], point[~unset]).size:
                values.add("None")
        if len(values) > 1:
            out.append(column)
    return out


def replicate_keys(trials: pd.DataFrame) -> np.ndarray:
    """Per row (positional), a code of its α0, β, schedule and seed: two rows of one label that share
    it are two configurations, never one configuration's replicates (``varying_columns``)."""
    columns = [c for c in ("lr", "beta", "decay", "seed") if c in trials]
    text = pd.DataFrame({c: texts(trials[c]).to_numpy() for c in columns})
    return text.groupby(columns, sort=False).ngroup().to_numpy()


def prepare(trials: pd.DataFrame) -> pd.DataFrame:
    """Add ``label`` (falls back to ``optimizer``), ``variant``, ``series`` and ``method``; check ``status``.

    ``series`` = label [variant] (decay) identifies a line of the valley plots; ``method`` =
    label (decay) is one optimizer whose variants compete for its best configuration.

    Idempotent, so every statistic can call it on whatever frame it is given.
    """
    if {"label", "variant", "series", "method"} <= set(trials.columns):
        return trials
    for column in ("optimizer", "lr", "beta", "decay", "status"):
        if column not in trials:
            raise ValueError(f"trials lacks column {column!r} (needed: optimizer, lr, beta, decay, status)")
    bad = sorted(set(trials["status"].dropna()) - set(STATUSES))
    if bad or trials["status"].isna().any():
        shown = ", ".join(map(str, bad)) or "null"
        raise ValueError(f"status has {shown}; allowed: {', '.join(STATUSES)}")
    out = trials.copy()
    optimizer = out["optimizer"].astype(str)
    label = out["label"].where(out["label"].notna(), optimizer) if "label" in out else optimizer
    out["label"] = label.astype(str)
    out["beta"] = pd.to_numeric(out["beta"], errors="coerce").astype(float)
    out["lr"] = pd.to_numeric(out["lr"], errors="coerce").astype(float)
    out["decay"] = pd.Series([None if _missing(d) else str(d) for d in out["decay"]], index=out.index, dtype=object)
    # The sweep writes +inf losses for an errored trial (the contract forbids NaN there); an error
    # is no outcome, so its losses and accuracies become missing here and never count as diverged.
    errored = out["status"] == "error"
    outcome = [c for c in out.columns if c.startswith(("min_", "final_", "best_")) and c.endswith(("_loss", "_acc"))]
    for column in outcome:
        out[column] = pd.to_numeric(out[column], errors="coerce").astype(float).mask(errored)
    out["variant"] = _variants(out)
    decay = out["decay"].map(lambda d: "" if d is None else f" ({d})")
    variant = out["variant"].map(lambda v: f" [{v}]" if v else "")
    out["series"] = out["label"] + variant + decay
    out["method"] = out["label"] + decay  # "one optimizer" when its variants compete (best_configs)
    return out


def variant_text(text: pd.DataFrame, columns: list[str]) -> pd.Series:
    """ "c1=v1, c2=v2" per row of ``text`` over ``columns`` ("" when there are none), built once per
    distinct combination."""
    if not columns:
        return pd.Series("", index=text.index, dtype=object)
    codes = text.groupby(columns, sort=False).ngroup().to_numpy()  # numbered in order of first appearance
    firsts = text[columns].drop_duplicates()
    names = np.array([", ".join(f"{c}={v}" for c, v in zip(columns, row)) for row in firsts.itertuples(index=False)],
                     dtype=object)
    return pd.Series(names[codes], index=text.index, dtype=object)


def _variants(trials: pd.DataFrame) -> pd.Series:
    columns = [c for c in hyperparameter_columns(trials) if c not in NOT_VARIANT]
    text = pd.DataFrame({c: texts(trials[c]).to_numpy() for c in columns},
                        index=pd.RangeIndex(len(trials)))  # positional: the index may repeat
    variant = np.full(len(trials), "", dtype=object)
    keys = replicate_keys(trials)
    for _, rows in text.groupby(trials["label"].to_numpy(), sort=False):
        varying = varying_columns(rows, keys[rows.index.to_numpy()])
        if varying:
            variant[rows.index.to_numpy()] = variant_text(rows, varying).to_numpy()
    return pd.Series(variant, index=trials.index, dtype=object).astype(str)
