"""An entry's fields as axes: which values a field takes, the checks each value gets, and their
--smoke stand-ins (torch-free)."""

from __future__ import annotations

from typing import Any

from sensitivity import checks
from sensitivity.identity import value_key
from sensitivity.schema import SEQUENCE_HYPERPARAMETERS, SMOKE_BATCH, SMOKE_TEST, SMOKE_TRAIN, StudyError

__all__ = ["is_sequence_param", "axis", "decay", "no_repeats", "rate", "smoke_axes", "smoke_task"]




def is_sequence_param(key: str, default: Any) -> bool:
    return key in SEQUENCE_HYPERPARAMETERS or isinstance(default, (list, tuple))


def axis(key: str, value: Any, sequence_valued: bool) -> list:
    """The values an entry's field takes: a list is an axis unless it is one sequence value."""
    if key == "decay":
        return list(value) if isinstance(value, list) else [value]
    if sequence_valued:
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, (list, tuple)) for v in value):
            return [list(v) for v in value]
        if isinstance(value, (list, tuple)) and not value:
            return []
        return [list(value) if isinstance(value, (list, tuple)) else value]
    return list(value) if isinstance(value, (list, tuple)) else [value]


def decay(path: str, value: Any) -> dict | None:
    if value is None or value == "none":
        return None
    if not isinstance(value, dict):
        raise StudyError(f"{path}: expected {{every_epochs: N, factor: F}}, {{milestones: [..], factor: F}} or null, "
                         f"got {value!r}")
    keys = set(value)
    if keys not in ({"every_epochs", "factor"}, {"milestones", "factor"}):
        raise StudyError(f"{path}: keys must be every_epochs+factor or milestones+factor, got {', '.join(sorted(keys))}")
    factor = checks.number(f"{path}.factor", value["factor"], low=0, low_open=True, error=StudyError)
    if "every_epochs" in value:
        every = checks.integer(f"{path}.every_epochs", value["every_epochs"], low=1, error=StudyError)
        return {"every_epochs": every, "factor": factor}
    stones = value["milestones"]
    if not isinstance(stones, list) or not stones:
        raise StudyError(f"{path}.milestones must be a non-empty list of epochs >= 1, got {stones!r}")
    stones = [checks.integer(f"{path}.milestones[{j}]", m, low=1, error=StudyError) for j, m in enumerate(stones)]
    return {"milestones": sorted(stones), "factor": factor}


def no_repeats(path: str, values: list) -> None:
    """A value given twice in one axis (0.01 and 1.0e-2) would run one trial twice."""
    seen: dict[str, int] = {}
    for j, value in enumerate(values):
        key = value_key(value)
        if key in seen:
            raise StudyError(f"{path}: value {value!r} is given twice (items {seen[key]} and {j}); remove one")
        seen[key] = j


def rate(path: str, key: str, value: Any) -> float:
    """A value of lr (> 0: its axes are logarithmic) or beta (>= 0)."""
    return checks.number(path, value, low=0, low_open=key == "lr", error=StudyError)


def smoke_axes(axes: dict[str, list]) -> dict[str, list]:
    """--smoke: the smallest and largest α0, the first value of every other axis."""
    out = {}
    for key, values in axes.items():
        if key == "lr":
            out[key] = values if len(values) <= 2 else [values[0], values[-1]]  # smallest and largest usually
        else:
            out[key] = values[:1]
    return out

def smoke_task(task: dict) -> dict:
    """--smoke: one short epoch, small batches; a dataset whose files tests lack becomes synthetic
    data of its shape and classes."""
    from sensitivity.spec import dataset_info

    task = dict(task)
    task["epochs"] = 1
    task["batch_size"] = min(int(task.get("batch_size", SMOKE_BATCH)), SMOKE_BATCH)
    if task["dataset"] not in ("digits", "synthetic"):
        # the real files are not on test machines: same shape and classes, generated
        shape, classes = dataset_info(task["dataset"])
        task["dataset"] = "synthetic"
        task["dataset_args"] = {"shape": list(shape), "num_classes": int(classes),
                                "train_size": SMOKE_TRAIN, "test_size": SMOKE_TEST}
        task.pop("data_dir", None)
        task.pop("download", None)
        task.pop("augment", None)
    elif task["dataset"] == "synthetic":
        args = dict(task.get("dataset_args") or {})
        args.update(train_size=SMOKE_TRAIN, test_size=SMOKE_TEST)
        task["dataset_args"] = args
    return task
