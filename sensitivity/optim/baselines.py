"""Constant-step baselines: thin registry entries over torch.optim and pytorch-optimizer."""

from __future__ import annotations

import torch

from .registry import register



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


# descriptions, papers and defaults: sensitivity/catalog.py
register("sgd", _sgd)
register("sgdn", _sgdn)
register("adam", _adam)
register("radam", _radam)
register("adabound", _adabound)
