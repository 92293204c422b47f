"""Tables of the learning-rate-free optimizers' tests: the names, their authors' classes, the hyperparameters.

The authors' packages (prodigyopt, dadaptation, schedulefree, dog-optimizer; the ``test`` extra)
are the reference: ``REFERENCE[name](params, **hyperparameters)`` builds theirs with our keywords.
"""

from __future__ import annotations

import math

import pytest
import torch

NAMES = ("prodigy", "d-adapt-sgd", "d-adapt-adam", "schedule-free-sgd", "schedule-free-adamw", "dog", "ldog")
SCHEDULE_FREE = ("schedule-free-sgd", "schedule-free-adamw")


def reference(name: str):
    """The authors' class for `name` (skips the test when its package is not installed)."""
    if name == "prodigy":
        return pytest.importorskip("prodigyopt").Prodigy
    if name.startswith("d-adapt"):
        module = pytest.importorskip("dadaptation")
        return module.DAdaptSGD if name == "d-adapt-sgd" else module.DAdaptAdam
    if name in SCHEDULE_FREE:
        module = pytest.importorskip("schedulefree")
        return module.SGDScheduleFree if name == "schedule-free-sgd" else module.AdamWScheduleFree
    module = pytest.importorskip("dog")
    return module.DoG if name == "dog" else module.LDoG


# Every hyperparameter away from its default, weight decay on (two settings where a flag changes the algorithm).
AWAY = {
    "prodigy": [
        dict(lr=0.7, betas=(0.85, 0.99), beta3=0.97, eps=1e-6, weight_decay=0.01, decouple=False,
             use_bias_correction=True, safeguard_warmup=True, d0=1e-3, d_coef=0.8, growth_rate=1.05),
        dict(lr=1.3, betas=(0.0, 0.95), beta3=0.9, eps=1e-7, weight_decay=0.02, decouple=True,
             use_bias_correction=True, safeguard_warmup=False, d0=1e-4, d_coef=2.0, growth_rate=1.5),
    ],
    "d-adapt-sgd": [dict(lr=0.8, momentum=0.5, weight_decay=0.01, d0=1e-3, growth_rate=1.1)],
    "d-adapt-adam": [
        dict(lr=0.9, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01, decouple=True, use_bias_correction=True,
             d0=1e-4, growth_rate=1.2),
        dict(lr=1.2, betas=(0.7, 0.9), eps=1e-7, weight_decay=0.02, decouple=False, use_bias_correction=True,
             d0=1e-3, growth_rate=2.0),
    ],
    "schedule-free-sgd": [dict(lr=0.05, momentum=0.8, weight_decay=0.01, warmup_steps=10, r=0.5, weight_lr_power=1.5)],
    "schedule-free-adamw": [dict(lr=0.01, betas=(0.85, 0.99), eps=1e-6, weight_decay=0.02, warmup_steps=10, r=0.5,
                                 weight_lr_power=1.0)],
    "dog": [dict(lr=0.9, reps_rel=1e-4, weight_decay=0.01, eps=1e-6),
            dict(lr=1.1, reps_rel=1e-4, weight_decay=0.02, eps=1e-6, init_eta=1e-6)],
    "ldog": [dict(lr=0.9, reps_rel=1e-4, weight_decay=0.01, eps=1e-6),
             dict(lr=1.1, reps_rel=1e-4, weight_decay=0.02, eps=1e-6, init_eta=1e-6)],
}


def cases() -> list:
    """(name, hyperparameters) for the parity tests: the defaults, and every setting of AWAY."""
    out = [pytest.param(name, {}, id=f"{name}-defaults") for name in NAMES]
    out += [pytest.param(name, hp, id=f"{name}-away{i}") for name in NAMES for i, hp in enumerate(AWAY[name])]
    return out


MEMBER_CASES = [pytest.param(name, "", id=name) for name in NAMES] + [
    pytest.param(name, "init_eta", id=f"{name}-init_eta") for name in ("dog", "ldog")] + [
    pytest.param(name, "beta1=0", id=f"{name}-beta1=0") for name in ("prodigy", "d-adapt-adam")]


def member_hyperparameters(name: str, k: int, variant: str = "") -> dict:
    """Member k's hyperparameters: every number differs between members (flags, which change the
    algorithm, are shared and away from their defaults). `variant` "init_eta": DoG's with an init_eta
    each; "beta1=0": member 2 without momentum beside members with it (a branch of its own in the rule)."""
    values = {
        "prodigy": dict(lr=0.5 + 0.3 * k, betas=(0.9 - 0.05 * k, 0.999 - 0.01 * k), beta3=[None, 0.95, 0.9][k],
                        eps=10.0 ** (-8 + k), weight_decay=0.01 * (k + 1), decouple=False, use_bias_correction=True,
                        safeguard_warmup=True, d0=10.0 ** (-6 + k), d_coef=1 + 0.5 * k, growth_rate=[1.1, 2.0, math.inf][k]),
        "d-adapt-sgd": dict(lr=0.5 + 0.3 * k, momentum=0.3 * k, weight_decay=0.01 * (k + 1), d0=10.0 ** (-6 + k),
                            growth_rate=[1.1, 2.0, math.inf][k]),
        "d-adapt-adam": dict(lr=0.5 + 0.3 * k, betas=(0.9 - 0.05 * k, 0.999 - 0.01 * k), eps=10.0 ** (-8 + k),
                             weight_decay=0.01 * (k + 1), decouple=True, use_bias_correction=True,
                             d0=10.0 ** (-6 + k), growth_rate=[1.1, 2.0, math.inf][k]),
        "schedule-free-sgd": dict(lr=0.02 * (k + 1), momentum=0.9 - 0.1 * k, weight_decay=0.01 * k,
                                  warmup_steps=[0, 5, 10][k], r=0.25 * k, weight_lr_power=1.0 + 0.5 * k),
        "schedule-free-adamw": dict(lr=0.005 * (k + 1), betas=(0.9 - 0.05 * k, 0.999 - 0.01 * k),
                                    eps=10.0 ** (-8 + k), weight_decay=0.01 * k, warmup_steps=[0, 5, 10][k],
                                    r=0.25 * k, weight_lr_power=1.0 + 0.5 * k),
        "dog": dict(lr=0.8 + 0.2 * k, reps_rel=10.0 ** (-6 + k), weight_decay=0.01 * k, eps=10.0 ** (-8 + k)),
    }
    values["ldog"] = values["dog"]
    hp = {**values[name], **({"init_eta": 1e-3 * (k + 1)} if variant == "init_eta" else {})}
    if variant == "beta1=0" and k == 2:  # the member whose d moves most in these tests
        hp["betas"] = (0.0, hp["betas"][1])
    return hp


def quadratic_grads(params: list[torch.Tensor], step: int, seed: int = 0) -> list[torch.Tensor]:
    """∇ of Σ ½·a_i·(θ_i − c_i)² at `params`, plus noise fixed by (`seed`, `step`): a noisy convex problem."""
    gen = torch.Generator().manual_seed(seed * 100_003 + step)
    out = []
    for i, p in enumerate(params):
        a = 0.5 + i
        out.append(a * (p.detach() - 0.3 * (i + 1)) + 0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return out
