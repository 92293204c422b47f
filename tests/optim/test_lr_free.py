"""The learning-rate-free optimizers' contract: the authors' defaults, one-line errors, what the curves report."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from lr_free_cases import NAMES, SCHEDULE_FREE, reference
from optim_cases import batches, tiny_model, train

from sensitivity import catalog
from sensitivity.optim import available, create


@pytest.mark.parametrize("name", NAMES)
def test_defaults_are_the_authors(name):
    """Every hyperparameter is a keyword of the authors' class, with their default."""
    signature = inspect.signature(reference(name)).parameters
    for key, default in available()[name].hyperparameters.items():
        theirs = signature[key].default
        assert default == (tuple(theirs) if isinstance(theirs, (list, tuple)) else theirs), key
        assert type(default) is type(theirs) or isinstance(default, float), key  # (0.0 where theirs says 0)
    assert "arXiv:" in catalog.available()[name].paper


@pytest.mark.parametrize("name, kwargs, match", [
    ("prodigy", {"lr": 0.0}, r"lr must be > 0, got 0.0"),
    ("prodigy", {"d0": 0.0}, r"d0 must be > 0"),
    ("prodigy", {"betas": (0.9, 1.0)}, r"betas\[1\] must be in \[0, 1\)"),
    ("prodigy", {"beta3": 1.5}, r"beta3 must be in \[0, 1\)"),
    ("prodigy", {"decouple": "yes"}, r"decouple must be True or False, got 'yes'"),
    ("prodigy", {"growth_rate": 0.5}, r"growth_rate must be >= 1"),
    ("prodigy", {"d_coef": -1.0}, r"d_coef must be > 0"),
    ("d-adapt-sgd", {"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
    ("d-adapt-sgd", {"weight_decay": -0.1}, r"weight_decay must be >= 0"),
    ("d-adapt-adam", {"eps": 0.0}, r"eps must be > 0"),
    ("d-adapt-adam", {"use_bias_correction": 1}, r"use_bias_correction must be True or False"),
    ("schedule-free-sgd", {"momentum": 0.0}, r"momentum must be in \(0, 1\)"),
    ("schedule-free-sgd", {"warmup_steps": 2.5}, r"warmup_steps must be an integer >= 0"),
    ("schedule-free-adamw", {"betas": (0.0, 0.999)}, r"betas\[0\] must be in \(0, 1\)"),
    ("schedule-free-adamw", {"r": -1.0}, r"r must be >= 0"),
    ("schedule-free-adamw", {"weight_lr_power": -2.0}, r"weight_lr_power must be >= 0"),
    ("dog", {"reps_rel": 0.0}, r"reps_rel must be > 0"),
    ("dog", {"lr": 0.0}, r"lr must be > 0"),
    ("ldog", {"init_eta": -1.0}, r"init_eta must be > 0"),
    ("ldog", {"eps": float("nan")}, r"eps must be >= 0"),
])
def test_bad_input_raises_a_one_line_value_error(name, kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        create(name, tiny_model().parameters(), **kwargs)
    assert "\n" not in str(err.value)


def test_dog_ignores_reps_rel_given_init_eta_as_the_authors():
    create("dog", tiny_model().parameters(), reps_rel=0.0, init_eta=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_lr_is_the_multiplier_and_the_curves_report_the_step_size(name):
    """param_groups' lr stays the python multiplier (a decay multiplies it); the curves' lr is the step."""
    model = tiny_model()
    opt = create(name, model.parameters(), lr=0.5)
    train(model, opt, batches(count=3))
    group = opt.param_groups[0]
    assert type(group["lr"]) is float and group["lr"] == 0.5
    d_before = float(group["d"]) if "d" in group else None
    train(model, opt, batches(count=1, seed=3))
    curves = opt.curve_metrics()
    assert all(type(v) is float and math.isfinite(v) for v in curves.values())
    if name in ("prodigy", "d-adapt-adam"):  # d·lr of the last step (no bias correction by default)
        assert curves["lr"] == pytest.approx(0.5 * d_before, rel=1e-12)
    elif name == "d-adapt-sgd":
        assert curves["lr"] == pytest.approx(0.5 * d_before / float(group["g0_norm"]), rel=1e-12)
    elif name in SCHEDULE_FREE:
        assert curves["lr"] == 0.5
    else:
        assert curves["lr"] > 0 and ("rbar" in curves) == (name == "dog")
    group["lr"] *= 0.1
    train(model, opt, batches(count=1, seed=5))
    if name in SCHEDULE_FREE:
        assert opt.curve_metrics()["lr"] == pytest.approx(0.05)


def test_prodigy_step_size_is_d_times_lr_and_starts_at_d0():
    model = tiny_model()
    opt = create("prodigy", model.parameters(), lr=2.0, d0=1e-4)
    assert opt.curve_metrics() == {"lr": pytest.approx(2e-4), "d": pytest.approx(1e-4)}
    d_before = float(opt.param_groups[0]["d"])
    train(model, opt, batches(count=1))
    assert opt.curve_metrics()["lr"] == pytest.approx(2.0 * d_before)
    assert opt.curve_metrics()["d"] >= d_before


def test_a_step_waits_for_no_device_value():
    """The running numbers are device tensors even solo: a step reads no tensor into python (checked on
    CPU by counting the conversions that would wait for an accelerator)."""
    calls = []
    model = tiny_model()
    opts = [create(name, model.parameters()) for name in NAMES]
    for opt in opts:
        train(model, opt, batches(count=1))  # first steps create the state (Prodigy reads p.any() once)
    conversions = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")
    originals = {attr: getattr(torch.Tensor, attr) for attr in conversions}

    def spy(attr):
        def read(self, *args):
            calls.append(attr)
            return originals[attr](self, *args)
        return read

    try:
        for attr in conversions:
            setattr(torch.Tensor, attr, spy(attr))
        for opt in opts:
            for p in model.parameters():
                p.grad = torch.randn_like(p)
            opt.step()
    finally:
        for attr, original in originals.items():
            setattr(torch.Tensor, attr, original)
    assert calls == []
