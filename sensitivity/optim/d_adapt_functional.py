"""Pure update math of Prodigy and D-Adaptation (SGD, Adam), over lists of tensors, with the member axis.

Written from prodigyopt 1.1.2 and dadaptation 3.2; the conventions (scalars, running numbers as
tensors, :class:`Workspace`) are :mod:`sensitivity.optim.lr_free_functional`'s, whose helpers
these use. Each rule's step has three parts, as in the authors' code: the sums over every param
group (``*_accumulate``), d's update from them (``*_estimate``), the step of each group (``*_apply``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .lr_free_functional import (FRESH_WORKSPACE, Scalar, Workspace, axpy_, coef, ema_sq_, gate, l1, nonzero, operand,
                                 py_max, py_min, scale_, sq_norms, total, total_of_differences)

__all__ = ["d_step_size", "prodigy_accumulate", "prodigy_estimate", "prodigy_apply", "dadapt_sgd_accumulate",
           "dadapt_estimate", "dadapt_sgd_apply", "dadapt_adam_accumulate", "dadapt_adam_apply"]


# -- Prodigy (prodigyopt.Prodigy.step) --------------------------------------------------------------------------


def d_step_size(d: Tensor, lr, k: Tensor, beta1, beta2, bias_correction: bool) -> Tensor:
    """η = d·lr·b, b = √(1−β2^{k+1})/(1−β1^{k+1}) with Adam's bias correction, else 1 (Prodigy, D-Adapt Adam)."""
    b = (1 - beta2 ** (k + 1)) ** 0.5 / (1 - beta1 ** (k + 1)) if bias_correction else 1.0
    return d * lr * b


def prodigy_accumulate(params, grads, p0s, exp_avgs, exp_avg_sqs, ss, *, d, dlr, d0, beta1, beta2, beta3,
                       safeguard_warmup: bool, live=True, ws: Workspace = FRESH_WORKSPACE) -> tuple[Tensor, Tensor]:
    """The first loop over one param group (its lr > 0; with a member axis, `live` marks the members whose is).

    Returns (Σ (d/d0)·dlr·⟨g, p0 − p⟩, Σ|s|) after the updates s ← β3·s + (d/d0)·dlr·g
    (``safeguard_warmup``: (d/d0)·d·g), m ← β1·m + d(1−β1)·g and v ← β2·v + d²(1−β2)·g², the last
    two as m ← β1·m + (1−β1)·(d·g), v ← β2·v + (1−β2)·(d·g)² with `grads` scaled by d in place
    (they hold coupled weight decay already; :func:`prodigy_apply` reads them so). A None in `p0s`
    is an all-zero start (the authors keep a scalar 0 there); ``exp_avgs`` is None when β1 = 0.
    """
    full = [i for i, p0 in enumerate(p0s) if p0 is not None]
    zero = [i for i, p0 in enumerate(p0s) if p0 is None]
    dot = total_of_differences([grads[i] for i in full], [p0s[i] for i in full], [params[i] for i in full], d, ws)
    if zero:  # p0 = 0: ⟨g, 0 − p⟩ = −⟨g, p⟩ exactly, without the difference
        dot = dot - total([grads[i] for i in zero], [params[i] for i in zero], d)
    numerator = gate(live, (d / d0) * dlr * dot, 0.0)
    scale_(ss, gate(live, beta3, 1.0))
    axpy_(ss, grads, gate(live, (d / d0) * (d if safeguard_warmup else dlr), 0.0))
    scale_(grads, d)
    if exp_avgs is not None:
        scale_(exp_avgs, gate(live, beta1, 1.0))
        axpy_(exp_avgs, grads, gate(live, 1 - beta1, 0.0))
    ema_sq_(exp_avg_sqs, grads, gate(live, beta2, 1.0), gate(live, 1 - beta2, 0.0), ws)
    return numerator, l1(ss, d, ws)


def prodigy_estimate(d, d_max, d_numerator, numerator, denom, *, d0, d_coef, growth_rate, beta3, live=True):
    """d from the step's sums: returns (d, d_max, d_numerator, active) after the step.

    numerator ← β3·numerator + Σ; d̂ = d_coef·numerator/Σ|s|; while d = d0, d ← max(d, d̂);
    d_max ← max(d_max, d̂); d ← min(d_max, d·growth_rate). A member whose Σ|s| = 0 (no gradient yet)
    or whose lr is 0 is not active: the authors return before the update, so nothing of it changes.
    """
    numerator = beta3 * d_numerator + numerator
    active = (denom != 0) & live
    d_hat = d_coef * numerator / denom
    new_d = torch.where(d == d0, py_max(d, d_hat), d)
    new_max = py_max(d_max, d_hat)
    new_d = py_min(new_max, new_d * growth_rate)
    return (torch.where(active, new_d, d), torch.where(active, new_max, d_max),
            torch.where(active, numerator, d_numerator), active)


def prodigy_apply(params, grads, exp_avgs, exp_avg_sqs, *, d, d_before, dlr, eps, weight_decay, decouple: bool,
                  active, beta1, ws: Workspace = FRESH_WORKSPACE) -> None:
    """The step: p ← (1 − λ·dlr)·p (decoupled), then p ← p − dlr·m/(√v + d·ε) (β1 = 0: dlr·d·g), with d
    the updated estimate and dlr the step's d·lr·bias-correction; inactive members stay. `grads` are
    as :func:`prodigy_accumulate` left them, d_before·g. A member with β1 = 0 in an array that keeps m
    for the others has m = d_before·g, so its step is scaled by d/d_before, as the β1 = 0 rule's."""
    dlr = torch.where(active, dlr, 0.0)
    if decouple and nonzero(weight_decay):
        scale_(params, 1 - weight_decay * dlr)
    step = -dlr if exp_avgs is not None else -dlr * d / d_before
    if exp_avgs is not None and isinstance(beta1, Tensor):
        step = torch.where(beta1 == 0, step * d / d_before, step)
    _adam_step(params, exp_avgs if exp_avgs is not None else grads, exp_avg_sqs, d * eps, step, ws)


def _adam_step(params, exp_avgs, exp_avg_sqs, eps: Scalar, step: Scalar, ws: Workspace) -> None:
    """p ← p + step·m/(√v + ε), a range of tensors at a time (see :meth:`Workspace.spans`)."""
    for r in ws.spans(params):
        denom = ws.apply("sqrt", exp_avg_sqs[r])
        torch._foreach_add_(denom, operand(eps, denom))
        if isinstance(step, Tensor):  # a device number: into the denominator (addcdiv takes python values only)
            torch._foreach_div_(denom, operand(step, denom))
            torch._foreach_addcdiv_(params[r], exp_avgs[r], denom)
        else:
            torch._foreach_addcdiv_(params[r], exp_avgs[r], denom, value=step)


# -- D-Adaptation (dadaptation.DAdaptSGD / DAdaptAdam .step) -----------------------------------------------------


def dadapt_sgd_accumulate(grads, ss, *, dlr, like) -> tuple[Tensor, Tensor]:
    """One group's sums: returns (dlr·⟨g, s⟩ with s before the step, Σ‖s‖² after s ← s + dlr·g)."""
    numerator = dlr * total(grads, ss, like)
    axpy_(ss, grads, dlr)
    return numerator, sq_norms(ss, like).sum(-1) if ss else torch.zeros_like(like)


def dadapt_estimate(d, d_hat, growth_rate, live=True):
    """d ← max(d, min(d̂, d·growth_rate)) where the group's lr > 0 (both D-Adaptation rules)."""
    return gate(live, py_max(d, py_min(d_hat, d * growth_rate)), d)


def dadapt_sgd_apply(params, ss, x0s, *, ck, ws: Workspace = FRESH_WORKSPACE) -> None:
    """z = x0 − s; p ← (1 − ck)·p + ck·z (ck = 1 − momentum; the authors keep z, a function of x0 and s:
    with ck = 1, p = z)."""
    if not isinstance(ck, Tensor) and ck == 1:
        for p, x0, s in zip(params, x0s, ss):
            torch.sub(x0, s, out=p)
        return
    for r in ws.spans(params):
        torch._foreach_lerp_(params[r], ws.apply("sub", x0s[r], ss[r]), coef(ck, params[r]))


def dadapt_adam_accumulate(grads, exp_avgs, exp_avg_sqs, ss, *, dlr, beta1, beta2, eps, like, live=True,
                           ws: Workspace = FRESH_WORKSPACE):
    """One group's sums: returns (dlr·⟨g, s/(√v + ε)⟩ with s, v before the step, Σ|s| after it).

    m ← β1·m + dlr(1−β1)·g, v ← β2·v + (1−β2)·g², s ← √β2·s + dlr(1−√β2)·g; `live` as in Prodigy.
    """
    sqrt_beta2 = beta2 ** 0.5
    dot = torch.zeros_like(like)
    for r in ws.spans(grads):
        denom = ws.apply("sqrt", exp_avg_sqs[r])
        torch._foreach_add_(denom, operand(eps, denom))
        dot = dot + total(grads[r], ws.apply("div", ss[r], denom, slot=1), like)
    numerator = gate(live, dlr * dot, 0.0)
    scale_(exp_avgs, gate(live, beta1, 1.0))
    axpy_(exp_avgs, grads, gate(live, dlr * (1 - beta1), 0.0))
    ema_sq_(exp_avg_sqs, grads, gate(live, beta2, 1.0), gate(live, 1 - beta2, 0.0), ws)
    scale_(ss, gate(live, sqrt_beta2, 1.0))
    axpy_(ss, grads, gate(live, dlr * (1 - sqrt_beta2), 0.0))
    return numerator, l1(ss, like, ws)


def dadapt_adam_apply(params, exp_avgs, exp_avg_sqs, *, dlr, eps, weight_decay, decouple: bool, active,
                      ws: Workspace = FRESH_WORKSPACE) -> None:
    """p ← (1 − λ·dlr)·p (decoupled), then p ← p − m/(√v + ε) (dlr is inside m); inactive members stay
    (their ε is +∞ here, so m/(√v + ε) = 0)."""
    if decouple and nonzero(weight_decay):
        scale_(params, 1 - weight_decay * torch.where(active, dlr, 0.0))
    _adam_step(params, exp_avgs, exp_avg_sqs, gate(active, eps, math.inf), -1.0, ws)
