"""RAdam (Liu et al. 2020) on the functional core: one copy of the update for a solo run and for
the members of a fused array. torch.optim.RAdam (coupled L2) is its test reference."""

from __future__ import annotations

import torch
from torch import Tensor

from . import functional as F
from .functional import Scalar
from .members import member_group
from .moments import AdamMoments
from .registry import register

__all__ = ["RAdam", "radam_step_"]


def radam_step_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    step: int,
    lr: Scalar,
    beta1: Scalar,
    beta2: Scalar,
    eps: Scalar,
    weight_decay: Scalar,
) -> None:
    """One RAdam step of tensors that all are at step `step` (after the increment), in place.

    The ops of torch's foreach RAdam: θ ← θ + m·b with b = 1/((√v + ε)/s_r) + s_u, where
    s_r = −lr·r_t·√(1−β2^t)/(1−β1^t) and s_u = −lr·[r_t = 0]/(1−β1^t), so one pass serves the
    rectified (r_t > 0) and the unrectified step (s_r = −0: the reciprocal is −0). With per-member
    values (K,) tensors, each member takes its own branch.
    """
    g = F.coupled_l2(grads, params, weight_decay)
    F.adam_moments_(g, exp_avgs, exp_avg_sqs, beta1=beta1, beta2=beta2)
    rho_inf = 2 / (1 - beta2) - 1
    bias_correction2 = 1 - beta2**step
    rho_t = rho_inf - 2 * step * (beta2**step) / bias_correction2

    def rectification():  # r_t², defined where ρ_t > 5
        return (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)

    if isinstance(rho_t, Tensor):  # per member (a member at ρ_t ≤ 5 takes 0; its other branch is never used)
        rect = torch.where(rho_t > 5, torch.sqrt(rectification()), 0.0)
    else:
        rect = rectification() ** 0.5 if rho_t > 5 else 0
    unrectified = F.where(rect > 0, 0.0, 1.0)
    bias_correction1 = 1 - beta1**step
    unrect_step = (lr * unrectified / bias_correction1) * -1
    rect_step = (bias_correction2**0.5) * (lr * rect / bias_correction1) * -1
    buffer = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(buffer, F.per_tensor(eps, buffer))
    torch._foreach_div_(buffer, F.per_tensor(rect_step, buffer))
    torch._foreach_reciprocal_(buffer)
    torch._foreach_add_(buffer, F.per_tensor(unrect_step, buffer))
    torch._foreach_addcmul_(params, exp_avgs, buffer)


class RAdam(AdamMoments):
    r"""Rectified Adam with coupled L2 weight decay.

    .. math::
        \begin{aligned}
        &\textbf{input}: γ \text{ (lr)}, β_1, β_2, ε, λ \text{ (weight decay)}, θ_0, f; \quad
            ρ_∞ = 2/(1-β_2) - 1 \\
        &\textbf{initialize}: m_0 ← 0, \; v_0 ← 0 \\
        &\textbf{for } t = 1, 2, \ldots \textbf{ do} \\
        &\quad g_t ← ∇f(θ_{t-1}) + λ θ_{t-1} \\
        &\quad m_t ← β_1 m_{t-1} + (1-β_1) g_t, \quad v_t ← β_2 v_{t-1} + (1-β_2) g_t^2 \\
        &\quad \hat m_t ← m_t/(1-β_1^t), \quad ρ_t ← ρ_∞ - 2 t β_2^t/(1-β_2^t) \\
        &\quad \textbf{if } ρ_t > 5: \; r_t ← \sqrt{\frac{(ρ_t-4)(ρ_t-2)ρ_∞}{(ρ_∞-4)(ρ_∞-2)ρ_t}}, \;
            θ_t ← θ_{t-1} - γ \hat m_t r_t \frac{\sqrt{1-β_2^t}}{\sqrt{v_t} + ε} \\
        &\quad \textbf{else}: \; θ_t ← θ_{t-1} - γ \hat m_t \\
        &\textbf{return } θ_t
        \end{aligned}

    torch.optim.RAdam's algorithm (``decoupled_weight_decay=False``) and its foreach ops
    (:func:`radam_step_`); the tests hold the two equal in float64. t counts the steps in which the
    parameter had a gradient, as torch's per-parameter ``step``.

    **Fused arrays**: a param group may hold K members' tensors stacked on a leading member axis
    (``sensitivity.optim.members``), with ``lr`` a (K,) float64 tensor and any other
    hyperparameter a number shared by all or a (K,) tensor (betas: a pair); one step then updates
    every member with its own values, no host sync.

    Args:
        params: tensors or param-group dicts.
        lr: γ (default 1e-3). betas: (β_1, β_2) (default (0.9, 0.999)). eps: ε (default 1e-8).
        weight_decay: λ, coupled L2 (default 0).

    State: per parameter ``step`` (a python int), ``exp_avg`` and ``exp_avg_sq``
    (:class:`~sensitivity.optim.moments.AdamMoments`).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _update_(self, group, params, grads, exp_avgs, exp_avg_sqs, step):
        beta1, beta2 = group["betas"]
        radam_step_(params, grads, exp_avgs, exp_avg_sqs, step=step, lr=group["lr"], beta1=beta1, beta2=beta2,
                    eps=group["eps"], weight_decay=group["weight_decay"])


# descriptions, papers and defaults: sensitivity/catalog.py
def _radam(params, *, lr, betas, eps, weight_decay):
    return RAdam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def _radam_members(params, hyperparameters):
    return RAdam([member_group(params, hyperparameters)])


register("radam", _radam, members=_radam_members)
