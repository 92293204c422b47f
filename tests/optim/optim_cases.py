"""Shared tables and helpers for the optimizer tests (imported by the test modules; the
parametrisation over names is in conftest.py).

Tables select names by family from ``available()``, so registering new optimizers (CAM-HD has
its own test file) neither breaks nor silently widens the family tests.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from sensitivity.optim import available

OPS = ("sgd", "sgdn", "adam")
LOPS = ("sgd", "sgdn", "adam")
_HD = re.compile(r"(sgd|sgdn|adam)-hd(?:-(sgd|sgdn|adam))?")


def hd_names() -> list[str]:
    """The 12 HD names: <op>-hd and <op>-hd-<lop>."""
    return [n for n in available() if _HD.fullmatch(n)]


def op_lop(name: str) -> tuple[str, str]:
    op, lop = _HD.fullmatch(name).groups()
    return op, lop or "sgd"


BASELINES = ("sgd", "sgdn", "adam", "radam", "adabound")
L4_NAMES = ("adam-l4", "sgdn-l4")
ISSUE_NAMES = (
    BASELINES
    + L4_NAMES
    + tuple(f"{op}-hd" for op in OPS)
    + tuple(f"{op}-hd-{lop}" for op in OPS for lop in LOPS)
)

# torch.optim counterpart of each op (β = 0 must reproduce it).
TORCH_BASE = {
    "sgd": lambda params, lr, wd: torch.optim.SGD(params, lr=lr, weight_decay=wd, foreach=False),
    "sgdn": lambda params, lr, wd: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd, foreach=False),
    "adam": lambda params, lr, wd: torch.optim.Adam(params, lr=lr, weight_decay=wd, foreach=False),
}

# Per-op (α0, β) where the hypergradient visibly moves α within a few steps on the tiny model.
MOVING = {"sgd": (0.1, 0.05), "sgdn": (0.05, 0.02), "adam": (0.01, 1e-3)}

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
]


def tiny_model(dtype=torch.float64, device="cpu", seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(device=device, dtype=dtype)


def batches(dtype=torch.float64, device="cpu", count=6, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(5, 3, generator=gen).to(device, dtype), torch.randn(5, 2, generator=gen).to(device, dtype))
        for _ in range(count)
    ]


def train(model: nn.Module, opt: torch.optim.Optimizer, data, *, set_to_none: bool = True) -> list[float]:
    """One step per batch through step(closure); returns the losses. An optimizer with train/eval
    modes (Schedule-Free) is put in train mode first."""
    if hasattr(opt, "train"):
        opt.train()
    losses = []
    for x, y in data:
        def closure():
            opt.zero_grad(set_to_none=set_to_none)
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        losses.append(float(opt.step(closure).detach()))
    return losses


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])
