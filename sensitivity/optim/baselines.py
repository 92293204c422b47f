"""Constant-step baselines: thin registry entries over torch.optim and pytorch-optimizer."""

from __future__ import annotations

import torch

from .registry import register

_ADAM = "Kingma & Ba 2015, Adam: A Method for Stochastic Optimization (arXiv:1412.6980)"


def _sgd(params, *, lr, weight_decay):
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


def _sgdn(params, *, lr, momentum, weight_decay):
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)


def _adam(params, *, lr, betas, eps, weight_decay):
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def _radam(params, *, lr, betas, eps, weight_decay):
    # decoupled_weight_decay=False (torch's default): weight decay is coupled L2, like every optimizer here.
    return torch.optim.RAdam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def _adabound(params, *, lr, final_lr, gamma, betas, eps, weight_decay):
    from pytorch_optimizer import AdaBound  # lazy: keep `import sensitivity.optim` light

    # weight_decouple=False: the paper's coupled L2 (weight decay added to the gradient).
    return AdaBound(
        params, lr=lr, final_lr=final_lr, gamma=gamma, betas=tuple(betas), eps=eps,
        weight_decay=weight_decay, weight_decouple=False,
    )


_ADAM_HP = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}

register(
    "sgd", _sgd,
    description="SGD with a constant step size (torch.optim.SGD)",
    paper="Robbins & Monro 1951, A Stochastic Approximation Method",
    hyperparameters={"lr": 1e-3, "weight_decay": 0.0},
)
register(
    "sgdn", _sgdn,
    description="SGD with Nesterov momentum (torch.optim.SGD, nesterov=True, dampening 0)",
    paper="Sutskever et al. 2013, On the importance of initialization and momentum in deep learning (ICML)",
    hyperparameters={"lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0},
)
register(
    "adam", _adam,
    description="Adam with a constant step size (torch.optim.Adam)",
    paper=_ADAM,
    hyperparameters=dict(_ADAM_HP),
)
register(
    "radam", _radam,
    description="Rectified Adam: Adam with a variance-rectified warm-up (torch.optim.RAdam)",
    paper="Liu et al. 2020, On the Variance of the Adaptive Learning Rate and Beyond (ICLR, arXiv:1908.03265)",
    hyperparameters=dict(_ADAM_HP),
)
register(
    "adabound", _adabound,
    description="AdaBound: Adam with per-element step sizes clipped to bounds converging to SGD at final_lr (pytorch-optimizer)",
    paper="Luo et al. 2019, Adaptive Gradient Methods with Dynamic Bound of Learning Rate (ICLR, arXiv:1902.09843)",
    hyperparameters={"lr": 1e-3, "final_lr": 0.1, "gamma": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
)
