"""create()/available(): every name builds and steps; bad input gives one-line ValueErrors."""

from __future__ import annotations

import math

import pytest
import torch
from optim_cases import ISSUE_NAMES, batches, tiny_model, train

from sensitivity.optim import OptimizerInfo, available, create


def test_every_issue_name_is_registered_with_its_info():
    infos = available()
    assert set(ISSUE_NAMES) <= set(infos)
    for name in ISSUE_NAMES:
        info = infos[name]
        assert isinstance(info, OptimizerInfo) and info.name == name
        assert info.description and info.paper
        assert "lr" in info.hyperparameters
        assert info.is_hd == ("-hd" in name), name
        assert info.is_hd == ("beta" in info.hyperparameters), name
        assert info.needs_closure == name.endswith("-l4"), name


def test_available_is_a_copy():
    available().clear()
    assert "sgd" in available()


def _kwargs(name: str) -> dict:
    return {"lr": 0.01} if not available()[name].needs_closure else {}


def test_registered_name_builds_from_every_params_form_and_steps_with_a_closure(registered_name):
    info = available()[registered_name]
    for form in ("tensors", "named", "groups"):
        model = tiny_model()
        if form == "tensors":
            if info.wants_names:
                continue  # e.g. CAM-HD's layer level needs module names; its own tests cover this
            params = model.parameters()
        elif form == "named":
            params = model.named_parameters()
        else:
            params = [{"params": list(model.named_parameters() if info.wants_names else model.parameters())}]
        opt = create(registered_name, params, **_kwargs(registered_name))
        assert isinstance(opt, torch.optim.Optimizer)
        before = [p.detach().clone() for p in model.parameters()]
        losses = train(model, opt, batches(count=3))
        assert all(math.isfinite(x) for x in losses)
        assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters())), form
        for group in opt.param_groups:
            assert all(isinstance(p, torch.Tensor) for p in group["params"])


@pytest.mark.parametrize("name", [n for n in ISSUE_NAMES if not n.endswith("-l4")])
def test_current_lr_is_a_python_float(name):
    model = tiny_model()
    opt = create(name, model.parameters(), lr=0.02)
    train(model, opt, batches(count=2))
    assert all(type(g["lr"]) is float for g in opt.param_groups)
    assert type(create(name, model.parameters(), lr=1).param_groups[0]["lr"]) is float


def test_names_are_stripped_for_optimizers_that_do_not_want_them():
    model = tiny_model()
    opt = create("adam-hd", model.named_parameters())
    assert opt.param_groups[0]["params"] == list(model.parameters())
    opt = create("sgd", [{"params": model.named_parameters(), "lr": 0.5}])
    assert opt.param_groups[0]["params"] == list(model.parameters())
    assert opt.param_groups[0]["lr"] == 0.5


def test_defaults_come_from_the_registry_and_keywords_override_them():
    model = tiny_model()
    opt = create("sgdn-hd-sgdn", model.parameters(), lr=0.3, lop_momentum=0.5)
    group = opt.param_groups[0]
    assert group["lr"] == 0.3 and group["lop_momentum"] == 0.5
    assert group["beta"] == available()["sgdn-hd-sgdn"].hyperparameters["beta"]
    assert group["momentum"] == 0.9
    adabound = create("adabound", tiny_model().parameters(), weight_decay=1e-4)
    # (coupled L2, the paper's: test_reference holds it equal to pytorch-optimizer's weight_decouple=False)
    assert adabound.param_groups[0]["weight_decay"] == 1e-4 and adabound.param_groups[0]["final_lr"] == 0.1


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("nope", {}, r"unknown optimizer 'nope'; valid names: .*adam.*sgd-hd.*sgdn"),
        ("sgd", {"lr": -0.1}, r"lr must be >= 0"),
        ("sgd-hd", {"beta": -1e-3}, r"beta must be >= 0"),
        ("adam-hd-adam", {"lr": float("nan")}, r"lr must be >= 0"),
        ("sgd-hd", {"lr": "0.1"}, r"lr must be a number"),
        ("sgd", {"beta": 1e-3}, r"beta is only for hypergradient optimizers"),
        ("adam-l4", {"beta": 1e-3}, r"beta is only for hypergradient optimizers"),
        ("adam", {"momentum": 0.9}, r"unknown hyperparameter\(s\) momentum; valid: lr, betas, eps, weight_decay"),
        ("sgd-hd", {"lop_momentum": 0.9}, r"unknown hyperparameter\(s\) lop_momentum; valid: lr, beta, weight_decay"),
        ("sgd-hd-sgdn", {"momentum": 1.5}, r"unknown hyperparameter"),
        ("sgdn-hd", {"momentum": 1.5}, r"momentum must be in \[0, 1\), got 1.5"),
        ("adam-hd", {"betas": (0.9,)}, r"betas must be 2 numbers like \[0.9, 0.999\]"),
        ("adam", {"betas": [0.9]}, r"betas must be 2 numbers"),
        ("radam", {"betas": "0.9,0.99"}, r"betas must be 2 numbers"),
        ("sgdn", {"momentum": "high"}, r"momentum must be a number"),
        ("adam-cam-hd", {"delta": None}, r"delta must be a number"),
        ("adam-hd-adam", {"lop_betas": (0.9, 1.0)}, r"lop_betas\[1\] must be in"),
        ("sgd-hd", {"weight_decay": -1.0}, r"weight_decay must be >= 0"),
        ("sgd-hd", {"lr_min": 1.0, "lr_max": 0.5}, r"lr_min must be <= lr_max"),
        ("adam-l4", {"gamma": 2.0}, r"gamma must be in"),
        ("sgdn-l4", {"tau": 0.0}, r"tau must be >="),
        # torch's own baselines: their ranges with the allowed values, not torch's "Invalid ... value"
        ("adam", {"eps": -1.0}, r"^eps must be >= 0, got -1.0$"),
        ("adam", {"betas": (1.5, 0.999)}, r"^betas\[0\] must be in \[0, 1\), got 1.5$"),
        ("sgdn", {"momentum": -0.5}, r"^momentum must be > 0, got -0.5$"),
        ("sgdn", {"momentum": 0.0}, r"^momentum must be > 0, got 0.0$"),
        ("sgd", {"weight_decay": -1.0}, r"^weight_decay must be >= 0, got -1.0$"),
    ],
)
def test_bad_input_raises_a_one_line_value_error(name, kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        create(name, tiny_model().parameters(), **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("params,match", [
    ([], "params is empty"),
    (torch.zeros(2, requires_grad=True), "got a Tensor"),
    ([1.0], "got float"),
    ([{"lr": 0.1}], "needs a 'params' key"),
])
def test_bad_params_raise_a_one_line_value_error(params, match):
    with pytest.raises(ValueError, match=match):
        create("sgd-hd", params)


def test_l4_requires_the_closure():
    model = tiny_model()
    opt = create("adam-l4", model.parameters())
    model(torch.ones(1, 3, dtype=torch.float64)).sum().backward()
    with pytest.raises(ValueError, match="needs the loss"):
        opt.step()
