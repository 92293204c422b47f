"""AdaBound (Luo et al. 2019) on the functional core: one copy of the update for a solo run and for
the members of a fused array. pytorch-optimizer's AdaBound (``weight_decouple=False``, coupled L2)
is its test reference."""

from __future__ import annotations

import torch
from torch import Tensor

from sensitivity import checks

from . import functional as F
from .functional import Scalar
from .members import member_group
from .moments import AdamMoments
from .registry import register

__all__ = ["AdaBound", "adabound_step_"]

_SQ_EPS = 1e-15  # pytorch-optimizer's ε inside the square root of the denominator


def adabound_step_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    step: int,
    lr: Scalar,
    base_lr: Scalar,
    final_lr: Scalar,
    gamma: Scalar,
    beta1: Scalar,
    beta2: Scalar,
    eps: Scalar,
    weight_decay: Scalar,
) -> None:
    """One AdaBound step of tensors that all are at step `step` (after the increment), in place.

    pytorch-optimizer's ops: η = clamp(s/(√(v + 1e-15) + ε), lower, upper) with
    s = lr·√(1−β2^t)/(1−β1^t), then θ ← θ − η·m. The bounds follow lr: their limit is
    final_lr·lr/base_lr (0 when base_lr is 0). Per-member values are (K,) tensors.
    """
    g = F.coupled_l2(grads, params, weight_decay)
    F.adam_moments_(g, exp_avgs, exp_avg_sqs, beta1=beta1, beta2=beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = F.sqrt(1 - beta2**step)
    if isinstance(base_lr, Tensor):
        limit = torch.where(base_lr > 0, final_lr * lr / base_lr, 0.0)
    else:
        limit = final_lr * lr / base_lr if base_lr > 0 else 0.0
    lower = limit * (1 - 1 / (gamma * step + 1))
    upper = limit * (1 + 1 / (gamma * step))
    step_size = lr * bias_correction2_sqrt / bias_correction1
    update = torch._foreach_add(exp_avg_sqs, _SQ_EPS)
    torch._foreach_sqrt_(update)
    torch._foreach_add_(update, F.per_tensor(eps, update))
    if isinstance(step_size, Tensor):
        numerators = F.per_tensor(step_size, update)
    else:  # the numerator in each tensor's dtype, as pytorch-optimizer rounds it
        full = {(u.dtype, u.device): torch.full((), step_size, dtype=u.dtype, device=u.device) for u in update}
        numerators = [full[u.dtype, u.device] for u in update]
    for numerator, u in zip(numerators, update):  # s/u, in place
        torch.div(numerator, u, out=u)
    torch._foreach_clamp_min_(update, F.per_tensor(lower, update))
    torch._foreach_clamp_max_(update, F.per_tensor(upper, update))
    torch._foreach_mul_(update, exp_avgs)
    torch._foreach_sub_(params, update)


class AdaBound(AdamMoments):
    r"""AdaBound: Adam whose per-element step sizes are clipped to bounds that converge to SGD's.

    .. math::
        \begin{aligned}
        &\textbf{input}: α \text{ (lr)}, α^* \text{ (final\_lr)}, γ \text{ (gamma)}, β_1, β_2, ε,
            λ \text{ (weight decay)}, θ_0, f \\
        &\textbf{initialize}: m_0 ← 0, \; v_0 ← 0, \; α_0 ← α \text{ (base lr)} \\
        &\textbf{for } t = 1, 2, \ldots \textbf{ do} \\
        &\quad g_t ← ∇f(θ_{t-1}) + λ θ_{t-1} \\
        &\quad m_t ← β_1 m_{t-1} + (1-β_1) g_t, \quad v_t ← β_2 v_{t-1} + (1-β_2) g_t^2 \\
        &\quad α^*_t ← α^* α/α_0, \quad η_l ← α^*_t \big(1 - \tfrac{1}{γt + 1}\big), \quad
            η_u ← α^*_t \big(1 + \tfrac{1}{γt}\big) \\
        &\quad η_t ← \mathrm{clip}\Big(\frac{α \sqrt{1-β_2^t}/(1-β_1^t)}{\sqrt{v_t + 10^{-15}} + ε},
            η_l, η_u\Big) \\
        &\quad θ_t ← θ_{t-1} - η_t ⊙ m_t \\
        &\textbf{return } θ_t
        \end{aligned}

    pytorch-optimizer's AdaBound with ``weight_decouple=False`` (the paper's coupled L2), its
    ops (:func:`adabound_step_`) and its 10⁻¹⁵ under the square root; the tests hold the two equal
    in float64. α is the group's current ``lr``, so a decay of it scales the bounds too; α_0, the
    group's ``lr`` when it was added (``param_groups[i]["base_lr"]``, a first positive lr when it
    was 0), is saved with the state. t counts the steps in which the parameter had a gradient (as
    in torch's Adam; pytorch-optimizer counts the group's steps: the same when every parameter
    gets a gradient every step).

    **Fused arrays**: a param group may hold K members' tensors stacked on a leading member axis
    (``sensitivity.optim.members``), with ``lr`` a (K,) float64 tensor and any other
    hyperparameter a number shared by all or a (K,) tensor; one step then updates every member
    with its own values and bounds, no host sync.

    Args:
        params: tensors or param-group dicts.
        lr: α (default 1e-3). final_lr: α^* (default 0.1). gamma: γ, the bounds' speed (default 1e-3).
        betas: (β_1, β_2) (default (0.9, 0.999)). eps: ε (default 1e-8).
        weight_decay: λ, coupled L2 (default 0).

    State: per parameter ``step`` (a python int), ``exp_avg`` and ``exp_avg_sq``
    (:class:`~sensitivity.optim.moments.AdamMoments`).
    """

    def __init__(self, params, lr: float = 1e-3, final_lr: float = 0.1, gamma: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        defaults = dict(lr=lr, final_lr=final_lr, gamma=gamma, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if "base_lr" not in group:
            group["base_lr"] = group["lr"].clone() if isinstance(group["lr"], Tensor) else group["lr"]

    def _check(self, hp: dict) -> None:
        checks.number("final_lr", hp["final_lr"], low=0)
        checks.number("gamma", hp["gamma"], low=0, low_open=True)

    def _update_(self, group, params, grads, exp_avgs, exp_avg_sqs, step):
        base, lr = group["base_lr"], group["lr"]
        group["base_lr"] = F.where((base == 0) & (lr > 0), lr, base)  # a base lr of 0 takes the first positive lr
        beta1, beta2 = group["betas"]
        adabound_step_(params, grads, exp_avgs, exp_avg_sqs, step=step, lr=lr, base_lr=group["base_lr"],
                       final_lr=group["final_lr"], gamma=group["gamma"], beta1=beta1, beta2=beta2, eps=group["eps"],
                       weight_decay=group["weight_decay"])


# descriptions, papers and defaults: sensitivity/catalog.py
def _adabound(params, *, lr, final_lr, gamma, betas, eps, weight_decay):
    return AdaBound(params, lr=lr, final_lr=final_lr, gamma=gamma, betas=betas, eps=eps, weight_decay=weight_decay)


def _adabound_members(params, hyperparameters):
    return AdaBound([member_group(params, hyperparameters)])


register("adabound", _adabound, members=_adabound_members)
