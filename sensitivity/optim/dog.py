"""DoG and LDoG (Ivgi et al. 2023): SGD with the step size distance over gradients; dog-optimizer 1.0.3.

The math lives in :mod:`sensitivity.optim.lr_free_functional`; this module gathers tensors and state.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sensitivity import checks

from . import lr_free_functional as F
from .lr_free import LRFreeOptimizer, register_rule

__all__ = ["DoG", "LDoG"]


class DoG(LRFreeOptimizer):
    r"""DoG: SGD with the step size η = lr·(largest distance from the start)/√(sum of squared gradient norms).

    .. math::
        \begin{aligned}
        &\textbf{input}: \text{lr} \text{ (multiplier, } c \text{ in the paper)}, ε_r \text{ (reps\_rel)},
            λ \text{ (weight decay)}, ε, η_0 \text{ (init\_eta, optional)}, θ_0, f \\
        &\textbf{initialize}: x_0 ← θ_0 \\
        &\textbf{for } t = 1, 2, \ldots \textbf{ do} \\
        &\quad g ← ∇f(θ) + λθ \\
        &\quad \textbf{if } t = 1: \; \bar r ← ε_r (1 + \|x_0\|), \; G ← \|g\|^2 + ε
            \quad (\bar r ← 0 \text{ when } η_0 \text{ is given}) \\
        &\quad \textbf{else}: \; \bar r ← \max(\bar r, \|θ - x_0\|), \; G ← G + \|g\|^2 \\
        &\quad η ← \text{lr} \cdot \bar r / \sqrt G \quad (t = 1 \text{ with } η_0: η ← η_0) \\
        &\quad θ ← θ - η g \\
        &\textbf{return } θ
        \end{aligned}

    DoG takes the norms over all tensors of a param group (one η per group); LDoG (the subclass)
    takes them per tensor (one η per tensor). As in dog-optimizer, each group is its own DoG, and
    init_eta replaces the first η outright (lr does not multiply it) and makes the initial distance
    0, so r̄ is then the first step's length. Weight decay is coupled L2 added to the gradient
    (written into ``p.grad``, as dog-optimizer does), so it also enters G. The authors stress that
    DoG wants iterate averaging (their ``PolynomialDecayAverager``), which is not part of the step.

    ``curve_metrics()``: ``lr`` is η of the latest step (before any step: init_eta, or NaN when η
    needs the first gradient), ``rbar`` and ``G`` its r̄ and G (LDoG: ``lr`` is η averaged over the
    elements, with ``eta_min`` and ``eta_max`` over the tensors). Group entries ``rbar``, ``G``,
    ``eta``: tensors on the device (per tensor for LDoG, with a leading member axis in a fused
    group); per tensor the state holds ``x0``. Differences from dog-optimizer: no assertion that
    G > 0 (it needs a host sync; a non-finite G gives a non-finite step instead of AssertionError),
    and a tensor without a gradient neither moves nor adds to G (dog-optimizer fails on it).

    Args:
        params: tensors or param-group dicts.
        lr: multiplier of η (default 1).
        reps_rel: ε_r, the relative initial distance (default 1e-6; the authors suggest 1e-4 with batch norm).
        weight_decay: λ (default 0).
        eps: ε, added to G on the first step (default 1e-8).
        init_eta: the first step size η_0 (default None: from reps_rel).
    """

    layerwise = False

    positive_lr = True

    def __init__(self, params, lr: float = 1.0, reps_rel: float = 1e-6, weight_decay: float = 0.0, eps: float = 1e-8,
                 init_eta: float | None = None):
        defaults = dict(lr=lr, reps_rel=reps_rel, weight_decay=weight_decay, eps=eps, init_eta=init_eta)
        super().__init__(params, defaults)

    @staticmethod
    def check(hp) -> None:
        checks.number("lr", hp["lr"], low=0)
        init_eta = checks.number("init_eta", hp["init_eta"], low=0, low_open=True, allow_none=True)
        if init_eta is None:  # with init_eta the authors ignore reps_rel
            checks.number("reps_rel", hp["reps_rel"], low=0, low_open=True)
        checks.number("weight_decay", hp["weight_decay"], low=0)
        checks.number("eps", hp["eps"], low=0)

    def _curve(self, group: dict) -> dict:
        if "eta" not in group:
            eta = math.nan if group["init_eta"] is None else group["init_eta"]
            extra = {"eta_min": eta, "eta_max": eta} if self.layerwise else {"rbar": math.nan, "G": math.nan}
            return {"lr": eta, **extra}
        eta = group["eta"]
        if not self.layerwise:
            return {"lr": eta, "rbar": group["rbar"], "G": group["G"]}
        k = eta.shape[0] if eta.dim() == 2 else 1
        sizes = torch.tensor([p.numel() / k for p in group["params"]], dtype=eta.dtype, device=eta.device)
        return {"lr": (eta * sizes).sum(-1) / sizes.sum(), "eta_min": eta.amin(-1), "eta_max": eta.amax(-1)}

    def _step(self) -> None:
        for group in self.param_groups:
            params = group["params"]
            first = "rbar" not in group
            if first:  # the start x_0 of every tensor of the group, as dog-optimizer's init_buffer
                for p in params:
                    self.state[p]["x0"] = p.detach().clone()
            decay = group["weight_decay"]
            grads = [p.grad for p in params]
            moving = [i for i, g in enumerate(grads) if g is not None]
            if isinstance(decay, Tensor) or decay > 0:
                F.axpy_([grads[i] for i in moving], [params[i] for i in moving], decay)
            init_eta = group["init_eta"]
            eta = F.dog_eta(first, params, grads, [self.state[p]["x0"] for p in params], group, lr=group["lr"],
                            reps_rel=0.0 if init_eta is not None else group["reps_rel"], eps=group["eps"],
                            layerwise=self.layerwise, like=self._number(group, 0.0), ws=self.workspace)
            if first and init_eta is not None:
                eta = eta * 0 + (init_eta[:, None] if self.layerwise and isinstance(init_eta, Tensor) else init_eta)
            group["eta"] = eta
            etas = [eta[..., i] if self.layerwise else eta for i in moving]
            F.dog_apply([params[i] for i in moving], [grads[i] for i in moving], etas)


class LDoG(DoG):
    __doc__ = """Layer-wise DoG: DoG's step size for each tensor separately (r̄, G and η per tensor).

    Everything else is :class:`DoG`'s (see there); dog-optimizer's ``LDoG``.
    """

    layerwise = True


# descriptions, papers and defaults: sensitivity/catalog.py
register_rule("dog", DoG)
register_rule("ldog", LDoG)
