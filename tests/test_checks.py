"""The shared value checks: good values come back normalised, bad ones raise one line naming the field."""

import argparse
import math
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from sensitivity import checks

INF, NAN = math.inf, math.nan

NUMBER_OK = [
    # value, bounds, expected
    (0, dict(low=0), 0.0),
    (3, {}, 3.0),
    (-2.5, {}, -2.5),
    (np.float32(0.5), dict(low=0, high=1), 0.5),
    (np.int64(7), dict(low=1), 7.0),
    (Fraction(1, 4), dict(low=0, high=1, high_open=True), 0.25),
    (1.0, dict(low=0, high=1), 1.0),  # closed bounds take their ends
    (0.0, dict(low=0, high=1, high_open=True), 0.0),
    (1e-12, dict(low=1e-12), 1e-12),
    (INF, dict(low=1, low_open=True, finite=False), INF),
    (-INF, dict(finite=False), -INF),
    (None, dict(allow_none=True), None),
    (2, dict(allow_none=True, low=0), 2.0),
]


@pytest.mark.parametrize("value, kw, expected", NUMBER_OK)
def test_number_returns_a_float(value, kw, expected):
    out = checks.number("x", value, **kw)
    assert out == expected and (out is None or type(out) is float)


NUMBER_BAD = [
    # value, bounds, message
    (True, {}, "x must be a number, got True"),
    (False, dict(low=0), "x must be a number, got False"),
    ("0.1", dict(low=0), "x must be a number, got '0.1'"),
    (None, {}, "x must be a number, got None"),
    ([1], {}, "x must be a number, got [1]"),
    (1 + 0j, {}, "x must be a number, got (1+0j)"),
    ("a", dict(allow_none=True), "x must be a number or None, got 'a'"),
    (NAN, {}, "x must be a finite number, got nan"),
    (NAN, dict(finite=False), "x must be a number, got nan"),
    (NAN, dict(finite=False, allow_none=True), "x must be a number or None, got nan"),
    (NAN, dict(low=0), "x must be >= 0, got nan"),  # the range says what is allowed
    (NAN, dict(low=0, high=1, high_open=True), "x must be in [0, 1), got nan"),
    (INF, {}, "x must be a finite number, got inf"),
    (INF, dict(low=0), "x must be a finite number, got inf"),
    (-INF, dict(low=1, finite=False), "x must be >= 1, got -inf"),
    (-1, dict(low=0), "x must be >= 0, got -1"),
    (0, dict(low=0, low_open=True), "x must be > 0, got 0"),
    (1.5, dict(high=1), "x must be <= 1, got 1.5"),
    (1.0, dict(high=1, high_open=True), "x must be < 1, got 1.0"),
    (1.0, dict(low=0, high=1, high_open=True), "x must be in [0, 1), got 1.0"),
    (0.0, dict(low=0, high=1, low_open=True), "x must be in (0, 1], got 0.0"),
    (0.0, dict(low=0, high=1, low_open=True, high_open=True), "x must be in (0, 1), got 0.0"),
    (2, dict(low=0, high=1), "x must be in [0, 1], got 2"),
    (0.0, dict(low=1e-12), "x must be >= 1e-12, got 0.0"),
    (0.5, dict(low=0.75), "x must be >= 0.75, got 0.5"),
]


@pytest.mark.parametrize("value, kw, message", NUMBER_BAD)
def test_number_rejects_with_one_line(value, kw, message):
    with pytest.raises(ValueError) as info:
        checks.number("x", value, **kw)
    assert str(info.value) == message


INTEGER_OK = [(1, dict(low=1), 1), (0, dict(low=0), 0), (-3, {}, -3), (np.int32(4), dict(low=1, high=4), 4),
              (10**20, dict(low=1), 10**20)]


@pytest.mark.parametrize("value, kw, expected", INTEGER_OK)
def test_integer_returns_an_int(value, kw, expected):
    out = checks.integer("n", value, **kw)
    assert out == expected and type(out) is int


INTEGER_BAD = [
    (0, dict(low=1), "n must be an integer >= 1, got 0"),
    (-1, dict(low=0), "n must be an integer >= 0, got -1"),
    (5, dict(low=1, high=4), "n must be an integer in [1, 4], got 5"),
    (5, dict(high=4), "n must be an integer <= 4, got 5"),
    (True, dict(low=0), "n must be an integer >= 0, got True"),
    (2.0, dict(low=1), "n must be an integer >= 1, got 2.0"),  # a float is not an epoch count
    (2.5, {}, "n must be an integer, got 2.5"),
    ("3", dict(low=1), "n must be an integer >= 1, got '3'"),
    (None, dict(low=1), "n must be an integer >= 1, got None"),
    (NAN, dict(low=1), "n must be an integer >= 1, got nan"),
]


@pytest.mark.parametrize("value, kw, message", INTEGER_BAD)
def test_integer_rejects_with_one_line(value, kw, message):
    with pytest.raises(ValueError) as info:
        checks.integer("n", value, **kw)
    assert str(info.value) == message


def test_pair_returns_two_floats():
    assert checks.pair("betas", [0.9, 0]) == (0.9, 0.0)
    assert checks.pair("betas", (np.float64(0.5), 0.999)) == (0.5, 0.999)
    assert checks.pair("gammas", (1, 1), names="(g1, g2)", low=0, high=1, high_open=False) == (1.0, 1.0)


PAIR_BAD = [
    ((0.9,), {}, "betas must be a pair (beta1, beta2) in [0, 1), got (0.9,)"),
    ((0.9, 0.99, 0.999), {}, "betas must be a pair (beta1, beta2) in [0, 1), got (0.9, 0.99, 0.999)"),
    ("ab", {}, "betas must be a pair (beta1, beta2) in [0, 1), got 'ab'"),
    (0.9, {}, "betas must be a pair (beta1, beta2) in [0, 1), got 0.9"),
    (None, {}, "betas must be a pair (beta1, beta2) in [0, 1), got None"),
    ((0.9, 1.0), {}, "betas[1] must be in [0, 1), got 1.0"),
    ((-0.1, 0.5), {}, "betas[0] must be in [0, 1), got -0.1"),
    ((0.9, NAN), {}, "betas[1] must be in [0, 1), got nan"),
    ((True, 0.5), {}, "betas[0] must be a number, got True"),
    ((0.9, "x"), {}, "betas[1] must be a number, got 'x'"),
    ((0.0, 1.0), dict(names="(a, b)", low=0, high=1, low_open=True, high_open=False),
     "betas[0] must be in (0, 1], got 0.0"),
    ((1,), dict(names="(a, b)", low=0, high=1, low_open=True, high_open=False),
     "betas must be a pair (a, b) in (0, 1], got (1,)"),
]


@pytest.mark.parametrize("value, kw, message", PAIR_BAD)
def test_pair_rejects_with_one_line(value, kw, message):
    with pytest.raises(ValueError) as info:
        checks.pair("betas", value, **kw)
    assert str(info.value) == message


@pytest.mark.parametrize("check, value, kw", [
    (checks.number, -1, dict(low=0)), (checks.number, "x", {}), (checks.integer, 0, dict(low=1)),
    (checks.pair, (0.5,), {}), (checks.pair, (0.5, 2), {}),
])
def test_the_caller_chooses_the_exception(check, value, kw):
    class StudyError(ValueError):
        pass

    with pytest.raises(StudyError, match=r"^f\S* must be "):
        check("f", value, error=StudyError, **kw)
    with pytest.raises(argparse.ArgumentTypeError, match=r"^(\[1\] )?must be "):  # argparse names the option
        check("", value, error=argparse.ArgumentTypeError, **kw)


@pytest.mark.parametrize("kw, words", [
    (dict(low=0), ">= 0"), (dict(low=0, low_open=True), "> 0"), (dict(high=1), "<= 1"),
    (dict(high=1, high_open=True), "< 1"), (dict(low=0.5, high=2), "in [0.5, 2]"),
    (dict(low=1, high=3, low_open=True, high_open=True), "in (1, 3)"), ({}, ""),
    (dict(low=10**7), ">= 10000000"), (dict(low=1e-8), ">= 1e-08"),
])
def test_bounds_in_words(kw, words):
    assert checks.bounds(**kw) == words


def test_checks_imports_nothing_heavy():
    code = ("import sys, sensitivity.checks;"
            " print(sorted({'torch', 'ray', 'pydantic', 'numpy', 'pandas'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

