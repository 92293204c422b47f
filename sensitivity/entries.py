"""Each optimizer entry of a study file checked into its plan: its task, its axes and the keys a search samples.

The second stage of reading a study (torch-free): `schema` gave the file's structure; here every
entry's optimizer name, task keys, hyperparameters and values are checked (`axes` checks each
value), one `StudyError` naming the field and the allowed values; `study.Study` then expands the
plans into trials.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sensitivity import checks
from sensitivity.axes import axis, decay, is_sequence_param, no_repeats, rate
from sensitivity.schema import ENTRY_KEYS, Range, StudyError, StudyModel

__all__ = ["EntryPlan", "entry_plans", "task_config", "check_range", "choices"]


@dataclass(frozen=True)
class EntryPlan:
    """One entry, checked: its task (the study's with the entry's overrides), its grid axes (every
    value checked), the keys `search.space` samples for it, and whether its optimizer is an HD one."""

    task: dict
    axes: dict[str, list]
    searched: list[str]
    is_hd: bool


def choices(names) -> str:
    return ", ".join(sorted(names))


def _optimizers() -> dict:
    from sensitivity.catalog import available

    return available()


def task_config(model: StudyModel, overrides: dict, path: str, base_dir: Path) -> dict:
    """The study's task with an entry's `overrides` (at `path`), its keys, dataset and model checked."""
    from sensitivity.spec import CONFIG_KEYS, DATASETS, MODELS  # (the trial's keys without what needs torch)

    allowed = set(CONFIG_KEYS) - set(ENTRY_KEYS)
    task = {**model.task.model_dump(), **overrides}
    for key in task:
        if key not in allowed:
            where = f"{path}.{key}" if key in overrides else f"task.{key}"
            if key in ENTRY_KEYS:
                raise StudyError(f"{where}: set per optimizer entry, not in the task")
            raise StudyError(f"{where}: unknown task key; choose from {choices(allowed)}")
    where = "task" if "dataset" not in overrides else path
    if task["dataset"] not in DATASETS:
        raise StudyError(f"{where}.dataset: unknown dataset {task['dataset']!r}; choose from {choices(DATASETS)}")
    where = "task" if "model" not in overrides else path
    if task["model"] not in MODELS:
        raise StudyError(f"{where}.model: unknown model {task['model']!r}; choose from {choices(MODELS)}")
    if task.get("data_dir") is not None and "://" not in str(task["data_dir"]):
        # trials run in Ray's per-trial working directory: only absolute paths survive
        task["data_dir"] = str((base_dir / os.path.expanduser(str(task["data_dir"]))).resolve())
    return task


def check_range(path: str, key: str, rng: Range) -> None:
    """A `search.space` range: finite bounds, low < high, low > 0 on a log scale, rates >= 0."""
    for bound in ("low", "high"):
        checks.number(f"{path}.{bound}", getattr(rng, bound), error=StudyError)
    if not rng.low < rng.high:
        raise StudyError(f"{path}: low must be < high, got low={rng.low} high={rng.high}")
    if rng.log:
        checks.number(f"{path}.low (log: true)", rng.low, low=0, low_open=True, error=StudyError)
    if key in ("lr", "beta"):
        rate(f"{path}.low", key, rng.low)


def entry_plans(model: StudyModel, base_dir: Path) -> list[EntryPlan]:
    """Every entry of the study checked into its plan, in order; StudyError for the first bad field."""
    optimizers = _optimizers()
    search, refine = model.search, model.refine
    space = search.space if search else {}
    if search and refine:
        raise StudyError("refine: applies to grid studies only (an Optuna search places its own α0 points); "
                         "remove refine or search")
    for key, rng in space.items():
        check_range(f"search.space.{key}", key, rng)
    used_space = set()
    plans = []
    for i, entry in enumerate(model.optimizers):
        path = f"optimizers[{i}]"
        if entry.name not in optimizers:
            raise StudyError(f"{path}.name: unknown optimizer {entry.name!r}; choose from {choices(optimizers)}")
        info = optimizers[entry.name]
        defaults = dict(info.hyperparameters)
        allowed = set(defaults) | {"lr"}
        if info.is_hd:
            allowed.add("beta")
        else:
            allowed.discard("beta")
        task = task_config(model, entry.task, f"{path}.task", base_dir)
        axes: dict[str, list] = {}
        for key, value in (entry.model_extra or {}).items():
            fpath = f"{path}.{key}"
            if key == "beta" and not info.is_hd:
                hd = [n for n, o in optimizers.items() if o.is_hd]
                raise StudyError(f"{fpath}: beta applies only to HD optimizers ({choices(hd)}); "
                                 f"{entry.name!r} is not one")
            if key != "decay" and key not in allowed:
                raise StudyError(f"{fpath}: unknown hyperparameter of {entry.name!r}; choose from "
                                 f"{choices(allowed | {'decay', 'label', 'task'})}")
            values = axis(key, value, is_sequence_param(key, defaults.get(key)))
            if key in space:
                continue  # searched: the entry's grid for this key is replaced by the space
            if not values:
                raise StudyError(f"{fpath}: empty grid; give at least one value")
            if key == "decay":
                values = [decay(f"{fpath}[{j}]" if isinstance(value, list) else fpath, v)
                          for j, v in enumerate(values)]
            elif key in ("lr", "beta"):
                values = [rate(f"{fpath}[{j}]" if isinstance(value, list) else fpath, key, v)
                          for j, v in enumerate(values)]
            no_repeats(fpath, values)
            axes[key] = values
        searched = [k for k in space if k in allowed]
        if "lr" not in axes and "lr" not in searched and "lr" in defaults:
            axes["lr"] = [rate(f"{path}.lr (default)", "lr", defaults["lr"])]
        used_space.update(searched)
        if search and not searched:
            raise StudyError(f"{path}: none of search.space ({choices(space)}) is a hyperparameter of "
                             f"{entry.name!r}; choose from {choices(allowed)}")
        plans.append(EntryPlan(task=task, axes=axes, searched=searched, is_hd=info.is_hd))
    for key in space:
        if key not in used_space:
            raise StudyError(f"search.space.{key}: not a hyperparameter of any optimizer entry")
    return plans
