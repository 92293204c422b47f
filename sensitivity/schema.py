"""The study file's structure (pydantic): fields, types and defaults, and its errors as one line.

What the fields mean (names, ranges, axes) is checked by :class:`sensitivity.study.Study`, with
field paths; this module knows only the shape of a study file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["StudyError", "ENTRY_KEYS", "SEQUENCE_HYPERPARAMETERS", "METRICS", "REFINE_POINTS", "KEEP_TRIALS", "SMOKE_TRAIN",
           "SMOKE_TEST", "SMOKE_BATCH", "SMOKE_OPTUNA_TRIALS", "Range", "Search", "Refine", "Resources", "Task",
           "Entry", "StudyModel", "pydantic_error", "read_yaml"]


class StudyError(ValueError):
    """A bad study file: one line naming the field and the allowed values."""


# run_trial keys that an optimizer entry sets; the task may not set them
ENTRY_KEYS = ("optimizer", "lr", "beta", "optimizer_args", "decay", "seed", "study", "label")
# hyperparameters whose single value is a sequence: a flat list is one value
SEQUENCE_HYPERPARAMETERS = {"betas", "lop_betas", "gammas", "levels"}
METRICS = ("min_train_loss", "min_test_loss", "final_train_loss", "final_test_loss")
# new α0 per series and refinement round, at most: both sides of the best α0 and of each valley edge
REFINE_POINTS = 4
# a study of at most this many trials keeps their records; a larger one makes them from its points when asked
KEEP_TRIALS = 200_000
# smoke-test stand-in sizes: any model trains one epoch on this in seconds on CPU
SMOKE_TRAIN, SMOKE_TEST, SMOKE_BATCH, SMOKE_OPTUNA_TRIALS = 32, 16, 16, 3


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Range(_Strict):
    low: float
    high: float
    log: bool = False


class Search(_Strict):
    algorithm: Literal["optuna"] = "optuna"
    sampler: Literal["tpe", "random"] = "tpe"
    trials: int = Field(gt=0)
    metric: Literal[METRICS] = "min_train_loss"  # type: ignore[valid-type]
    space: dict[str, Range] = Field(min_length=1)
    max_concurrent: int | None = Field(default=None, gt=0)


class Refine(_Strict):
    """Adaptive α0 refinement of a grid study (sensitivity.sweep.refine)."""

    rounds: int = Field(gt=0)
    resolution: float = Field(gt=0)  # decades: brackets wider than this are split at their log midpoint
    tolerance: float = Field(default=0.1, gt=0)  # the valley: mean loss <= best·(1 + tolerance)
    metric: Literal[METRICS] = "min_train_loss"  # type: ignore[valid-type]


class Resources(_Strict):
    cpu: float = Field(default=1.0, gt=0)
    gpu: float = Field(default=0.0, ge=0)


class Task(BaseModel):
    model_config = ConfigDict(extra="allow")  # any run_trial key; checked against CONFIG_KEYS
    dataset: str
    model: str


class Entry(BaseModel):
    model_config = ConfigDict(extra="allow")  # hyperparameters; checked against optim.available()
    name: str
    label: str | None = None
    task: dict[str, Any] = Field(default_factory=dict)


class StudyModel(_Strict):
    name: str = Field(pattern=r"^[a-z0-9_-]+$")
    description: str = ""
    task: Task
    seeds: Union[int, list[int]] = Field(default=1, validate_default=True)
    optimizers: list[Entry] = Field(min_length=1)
    search: Search | None = None
    refine: Refine | None = None
    resources: Resources = Field(default_factory=Resources)
    bundle: Union[Literal["auto"], int] = "auto"
    fuse: Union[Literal["auto", "off"], int] = "auto"  # fused trial arrays where they pay (sensitivity.fused.plan)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value):
        if isinstance(value, int):
            if value < 1:
                raise ValueError(f"a count must be >= 1, got {value}")
            return list(range(value))
        if not value or len(set(value)) != len(value) or min(value) < 0:
            raise ValueError(f"a list must be non-empty distinct non-negative ints, got {value}")
        return value

    @field_validator("bundle")
    @classmethod
    def _bundle(cls, value):
        if isinstance(value, int) and value < 1:
            raise ValueError(f"must be 'auto' or an int >= 1, got {value}")
        return value

    @field_validator("fuse", mode="before")
    @classmethod
    def _fuse(cls, value):
        if value is False:  # YAML 1.1 reads a bare `off` as false
            return "off"
        if value is True or (isinstance(value, int) and value < 1):
            raise ValueError(f"must be 'auto', 'off' or an int >= 1, got {value!r}")
        return value


def _path(loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("int", "list[int]", "literal['auto']", "literal['auto','off']", "Range", "str", "float"):
            continue  # union-branch names pydantic adds to the location
        else:
            out += f".{part}" if out else str(part)
    return out or "study"


def pydantic_error(exc: ValidationError) -> StudyError:
    errors = exc.errors()  # an unknown field first: a misspelt one is why a required field is missing
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    path, kind, msg = _path(err["loc"]), err["type"], err["msg"]
    if kind == "missing":
        return StudyError(f"{path}: missing required field")
    if kind == "extra_forbidden":
        parent = [p for p in err["loc"][:-1] if isinstance(p, str)]
        models = {"search": Search, "resources": Resources, "refine": Refine}
        model = Range if parent[-2:-1] == ["space"] else models.get(parent[-1] if parent else "", StudyModel)
        fields = model.model_fields
        return StudyError(f"{path}: unknown field; choose from {', '.join(fields)}")
    if kind == "string_pattern_mismatch":
        msg = "use only lowercase letters, digits, '-' and '_'"
    msg = msg.removeprefix("Value error, ")
    if "got" not in msg:
        msg = f"{msg} (got {err.get('input')!r})"
    return StudyError(f"{path}: {msg}")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-3 as a float (YAML 1.1 wants 1.0e-3)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def read_yaml(text: str, path: Path) -> Any:
    """The study file's YAML (1e-3 read as a float); StudyError naming the line of malformed YAML."""
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise StudyError(f"{path}:{where}: malformed YAML ({problem})") from None
    return data
