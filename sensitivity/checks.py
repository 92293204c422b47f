"""Checks of single values: each returns the value normalised or raises one line naming the field.

The message says the field, the values it allows and the value it got ("lr must be >= 0, got -1").
The config reader, the study reader, the CLI and the optimizers all check through these, so a bad
value reads the same wherever it is caught. Pure Python: `sensitivity validate` runs without torch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

__all__ = ["is_number", "bounds", "number", "integer", "pair"]


def is_number(value: Any) -> bool:
    """A real number (NaN and inf included), and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _text(x: float) -> str:
    return str(x) if isinstance(x, numbers.Integral) else f"{x:g}"


def bounds(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> str:
    """The allowed range in words: '>= 0', '< 1', 'in [0, 1)'; '' when unbounded."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_text(low)}, {_text(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {_text(low)}"
    if high is not None:
        return f"{'<' if high_open else '<='} {_text(high)}"
    return ""


def _fail(error: type[Exception], key: str, allowed: str, value: Any) -> Exception:
    # an empty key leaves naming the field to the caller (argparse puts the option in front)
    return error(f"{key + ' ' if key else ''}must be {allowed}, got {value!r}")


def _within(value: float, low, high, low_open: bool, high_open: bool) -> bool:
    if low is not None and not (value > low if low_open else value >= low):
        return False
    return high is None or (value < high if high_open else value <= high)


def number(key: str, value: Any, *, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False, finite: bool = True, allow_none: bool = False,
           error: type[Exception] = ValueError) -> float | None:
    """`value` as a float, if it is a real number within the bounds (closed unless `*_open`).

    NaN is never allowed; ±inf only with ``finite=False``; None only with ``allow_none`` (returned as is).
    """
    if value is None and allow_none:
        return None
    kind = ("a finite number" if finite else "a number") + (" or None" if allow_none else "")
    if not is_number(value):
        raise _fail(error, key, "a number" + (" or None" if allow_none else ""), value)
    x = float(value)
    allowed = bounds(low, high, low_open=low_open, high_open=high_open)
    if math.isnan(x):
        raise _fail(error, key, allowed or kind, value)
    if finite and math.isinf(x):
        raise _fail(error, key, kind, value)
    if not _within(x, low, high, low_open, high_open):
        raise _fail(error, key, allowed, value)
    return x


def integer(key: str, value: Any, *, low: int | None = None, high: int | None = None,
            error: type[Exception] = ValueError) -> int:
    """`value` as an int, if it is an integer (not a bool, not a float such as 3.0) within [low, high]."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or not _within(value, low, high, False, False)):
        allowed = bounds(low, high)
        raise _fail(error, key, "an integer" + (f" {allowed}" if allowed else ""), value)
    return int(value)


def pair(key: str, value: Any, *, names: str = "(beta1, beta2)", low: float = 0.0, high: float = 1.0,
         low_open: bool = False, high_open: bool = True, error: type[Exception] = ValueError) -> tuple[float, float]:
    """`value` as a tuple of two floats, each within the bounds (by default [0, 1), as Adam's betas)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        allowed = bounds(low, high, low_open=low_open, high_open=high_open)
        raise _fail(error, key, f"a pair {names} {allowed}", value)
    return tuple(number(f"{key}[{i}]", v, low=low, high=high, low_open=low_open, high_open=high_open, error=error)
                 for i, v in enumerate(value))
