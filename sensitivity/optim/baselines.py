"""Constant-step baselines sgd, sgdn and adam: thin registry entries over torch.optim (RAdam and
AdaBound, implemented here, are in ``radam.py`` and ``adabound.py``)."""

from __future__ import annotations

import torch

from sensitivity import checks

from .registry import register


# torch's own ranges, checked first so that a bad value's message names the allowed ones
def _sgd(params, *, lr, weight_decay):
    checks.number("lr", lr, low=0), checks.number("weight_decay", weight_decay, low=0)
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


def _sgdn(params, *, lr, momentum, weight_decay):
    checks.number("lr", lr, low=0), checks.number("weight_decay", weight_decay, low=0)
    checks.number("momentum", momentum, low=0, low_open=True)  # (Nesterov needs some momentum)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)


def _adam(params, *, lr, betas, eps, weight_decay):
    checks.number("lr", lr, low=0), checks.number("weight_decay", weight_decay, low=0)
    checks.pair("betas", betas), checks.number("eps", eps, low=0)
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def _members(name: str, solo, op: str):
    """sgd, sgdn and adam over stacked tensors: the HD family's base optimizer without the
    lr-optimizer (torch's formulas; the tests hold the two equal in float64). Each distinct
    member configuration first passes torch's own checks, as its solo run does."""
    def build(params, hyperparameters):
        from .hd import members_factory  # (hd registers its names after these)

        for hp in {repr(sorted(hp.items())): hp for hp in hyperparameters}.values():
            solo([torch.zeros(1)], **hp)
        return members_factory(op, None)(params, hyperparameters)

    build.__name__ = f"{name}_members"
    return build


# descriptions, papers and defaults: sensitivity/catalog.py
register("sgd", _sgd, members=_members("sgd", _sgd, "sgd"))
register("sgdn", _sgdn, members=_members("sgdn", _sgdn, "sgdn"))
register("adam", _adam, members=_members("adam", _adam, "adam"))
