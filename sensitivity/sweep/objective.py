"""A trial's value for an Optuna search, and a point's mean over seeds (no Ray, no torch)."""

from __future__ import annotations

import math


def metric_value(row: dict, metric: str) -> float:
    """The row's metric; +inf for an errored trial or a missing/NaN value (never NaN)."""
    value = row.get(metric)
    if row.get("status") == "error" or value is None or not isinstance(value, (int, float)) or math.isnan(value):
        return math.inf
    return float(value)


def mean_metric(values: list[float]) -> float:
    if not values or any(not math.isfinite(v) for v in values):
        return math.inf  # a diverged seed makes the point as bad as it gets, and never NaN
    return float(sum(values) / len(values))
