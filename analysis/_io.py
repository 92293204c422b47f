"""Read a study's parquet tables and add the display columns every statistic groups by.

The parquet schema (README.md, "The results tables") is the whole contract: nothing here imports
``sensitivity``. A *series* is one line of a valley figure: a display label, plus the hyperparameters that vary
within that label (``variant``), plus the lr schedule (``decay``). A *method* is the label and
schedule alone: its variants compete for its best configuration. α0 (``lr``) and β (``beta``)
are the swept axes and stay columns of their own.
"""
from __future__ import annotations

import ast
import io
import math
import pathlib
import re
from collections.abc import Mapping

import numpy as np
import pandas as pd

__all__ = ["ResultsError", "load", "prepare", "results_root", "smoke_run", "STATUSES", "TRIAL_COLUMNS", "CURVE_COLUMNS"]

STATUSES = ("ok", "diverged", "error")

# What analysis reads; the contract has more, which are kept but not required.
TRIAL_COLUMNS = (
    "trial_id", "optimizer", "lr", "beta", "decay", "seed", "status",
    "min_train_loss", "min_test_loss", "best_test_acc", "final_test_acc",
)
# Outcomes an errored worker does not write: a table whose trials all lacked one gets it as missing values.
OUTCOME_COLUMNS = ("min_train_loss", "min_test_loss", "best_test_acc", "final_test_acc")
CURVE_COLUMNS = ("trial_id", "epoch", "step", "train_loss", "test_loss", "train_acc", "test_acc", "lr")

# Hyperparameters that may vary inside one label (design.md's keywords plus the task keys a
# study entry may override). A whitelist, because extra per-seed columns (node, timings)
# must never split the seeds of one configuration apart.
HYPERPARAMETER_COLUMNS = (
    "optimizer", "study", "dataset", "model", "model_args", "batch_size", "epochs", "weight_decay",
    "train_fraction", "augment", "divergence_factor", "momentum", "betas", "eps", "lop_momentum",
    "lop_betas", "lop_eps", "lr_min", "lr_max", "levels", "gammas", "delta", "decay_rate",
    "alpha_inf", "optimizer_args", "dataset_args", "loss_smoothing",
)


class ResultsError(ValueError):
    """A results directory that is missing, unreadable or not shaped like the contract."""


def _read(path: pathlib.Path) -> pd.DataFrame:
    try:
        # One read of the bytes: a running sweep replaces the file by rename, and pyarrow may
        # open a path more than once, which could mix two versions of it.
        return pd.read_parquet(io.BytesIO(path.read_bytes()))
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ResultsError(f"cannot read {path}: {reason}") from None


def _require(frame: pd.DataFrame, columns, path: pathlib.Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ResultsError(f"{path} lacks column(s) {', '.join(missing)}")


def load(results_dir) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return ``(trials, curves)`` of a results directory, with the columns of ``prepare`` added.

    ``results_dir`` may also be the path of its trials.parquet or curves.parquet. Raises
    ResultsError (one line) when the directory or ``trials.parquet`` is missing, a file cannot be
    read, the table holds no trials or only errored ones, identity columns are missing, or a status
    is not one of STATUSES. Outcome columns no trial wrote are added as missing values. A missing
    ``curves.parquet`` gives an empty curves table (the curve figures are then skipped). ``smoke``
    (bool) comes from the table, else from the ``smoke:`` header of the study.yaml beside it.
    """
    root = results_root(results_dir)
    if not root.is_dir():
        raise ResultsError(f"results directory not found: {root}")
    trials_path, curves_path = root / "trials.parquet", root / "curves.parquet"
    if not trials_path.is_file():
        raise ResultsError(f"no trials.parquet in {root} (expected <out>/<study>/trials.parquet)")
    trials = _read(trials_path)
    if trials.empty:
        raise ResultsError(f"{trials_path} has no finished trials yet")
    if "status" in trials and (trials["status"] == "error").all():
        errors = trials["error"].dropna() if "error" in trials else pd.Series(dtype=object)
        first = " ".join(str(errors.iloc[0]).split()) if len(errors) else "no message recorded"
        raise ResultsError(f"all {len(trials)} trials errored: {first}")
    _require(trials, [c for c in TRIAL_COLUMNS if c not in OUTCOME_COLUMNS], trials_path)
    for column in OUTCOME_COLUMNS:
        if column not in trials:
            trials[column] = np.nan
    if "smoke" not in trials:
        trials["smoke"] = smoke_run(root)
    if curves_path.is_file():
        curves = _read(curves_path)
        _require(curves, CURVE_COLUMNS, curves_path)
    else:
        curves = pd.DataFrame({c: pd.Series(dtype=float) for c in CURVE_COLUMNS})
    try:
        trials = prepare(trials)
    except ValueError as exc:
        raise ResultsError(f"{trials_path}: {exc}") from None
    return trials, curves


def results_root(path) -> pathlib.Path:
    """A study's results directory, given it or one of its parquet tables."""
    path = pathlib.Path(path)
    return path.parent if path.suffix == ".parquet" and path.is_file() else path


def smoke_run(root) -> bool:
    """Whether the study.yaml beside the tables says the run was ``--smoke`` (False without one)."""
    try:
        head = (pathlib.Path(root) / "study.yaml").read_text(errors="replace")[:300]
    except OSError:
        return False
    return re.search(r"smoke: true\b", head) is not None


# ---------------------------------------------------------------------------- display keys
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


def prepare(trials: pd.DataFrame) -> pd.DataFrame:
    """Add ``label`` (falls back to ``optimizer``), ``variant``, ``series`` and ``method``; check ``status``.

    ``series`` = label [variant] (decay) identifies a line of the valley plots; ``method`` =
    label (decay) is one optimizer whose variants compete for its best configuration.

    Idempotent, so every statistic can call it on whatever frame it is given.
    """
    if {"label", "variant", "series", "method"} <= set(trials.columns):
        return trials
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


def _variants(trials: pd.DataFrame) -> pd.Series:
    columns = [c for c in HYPERPARAMETER_COLUMNS if c in trials.columns]
    text = pd.DataFrame({c: trials[c].map(canonical) for c in columns}, index=trials.index)
    variant = pd.Series("", index=trials.index, dtype=object)
    for _, rows in text.groupby(trials["label"], sort=False):
        varying = [c for c in columns if rows[c].nunique() > 1]
        if varying:
            variant[rows.index] = [", ".join(f"{c}={row[c]}" for c in varying) for _, row in rows.iterrows()]
    return variant.astype(str)
