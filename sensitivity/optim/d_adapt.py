"""D-Adaptation (Defazio & Mishchenko 2023): SGD and Adam with the step size d·lr estimated online; dadaptation 3.2.

The math lives in :mod:`sensitivity.optim.lr_free_functional`; this module gathers tensors and state.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sensitivity import checks

from . import d_adapt_functional as D
from . import lr_free_functional as F
from .lr_free import LRFreeOptimizer, flag, register_rule

__all__ = ["DAdaptSGD", "DAdaptAdam"]


class DAdaptSGD(LRFreeOptimizer):
    r"""D-Adaptation SGD: dual averaging with the step size d·lr/‖g_0‖, d a lower bound on the distance to a solution.

    .. math::
        \begin{aligned}
        &\textbf{input}: \text{lr} \text{ (multiplier)}, μ \text{ (momentum)}, λ \text{ (weight decay)},
            d_0, γ \text{ (growth\_rate)}, θ_0, f \\
        &\textbf{initialize}: d ← d_0, \; r ← 0; \text{ per tensor } x_0 ← θ_0, \; s ← 0 \\
        &\textbf{for } k = 0, 1, \ldots \textbf{ do} \\
        &\quad \textbf{if } k = 0: \; G ← \|∇f(θ_0)\| \quad \text{(without the weight decay)} \\
        &\quad g ← ∇f(θ) + λθ; \quad η ← d \cdot \text{lr} / G \\
        &\quad r ← r + η \textstyle\sum ⟨g, s⟩; \quad s ← s + η g \\
        &\quad \textbf{if } \textstyle\sum \|s\|^2 = 0: \textbf{ skip the rest} \\
        &\quad \hat d ← 2 r / \sqrt{\textstyle\sum \|s\|^2}; \quad d ← \max(d, \min(\hat d, γ d)) \\
        &\quad z ← x_0 - s; \quad θ ← (1 - c)\, θ + c\, z, \quad c = 1 - μ \\
        &\textbf{return } θ
        \end{aligned}

    With μ = 0 this is SGD with step η on the running sum s. As in dadaptation, λ and μ of the
    first group hold for all groups (the authors read them once), a group whose lr is 0 adds
    nothing to d's sums, and groups must otherwise share one lr. Weight decay is coupled L2 added
    to the gradient (written into ``p.grad``, as dadaptation does), after ‖g_0‖ is taken: the
    authors' ‖g_0‖ line computes ``grad + λθ`` without keeping it, so G is the plain gradient's norm.

    ``curve_metrics()``: ``lr`` is η = d·lr/‖g_0‖ of the latest step (NaN before the first, which
    needs g_0), ``d`` the estimate after it. Group entries: d, r (``numerator_weighted``), ‖g_0‖
    (``g0_norm``), the latest η (``dlr``), tensors on the device (0-dim; (K,) with a member axis), and the step count
    ``k`` (a python int). Per tensor: ``s`` and ``x0``; z = x_0 − s is formed in the step instead of
    being kept. Differences from dadaptation, in corner cases only: an all-zero first
    gradient (‖g_0‖ = 0) makes the step non-finite instead of raising ZeroDivisionError; a step
    with Σ‖s‖² = 0 (s = 0: only an lr of 0 from the start, or exactly zero gradients) keeps d and
    r as dadaptation does but still counts in k and sets θ ← (1 − c)θ + c·x_0 (θ = x_0 then, unless
    moved before), where dadaptation returns.

    Args:
        params: tensors or param-group dicts.
        lr: multiplier of the estimated step size (default 1).
        momentum: μ, the primal averaging weight (default 0).
        weight_decay: λ (default 0).
        d0: initial estimate d_0 (default 1e-6).
        growth_rate: γ, the most d may grow in a step (default ∞).
    """

    positive_lr = True

    def __init__(self, params, lr: float = 1.0, momentum: float = 0.0, weight_decay: float = 0.0, d0: float = 1e-6,
                 growth_rate: float = math.inf):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, d0=d0, growth_rate=growth_rate, k=0)
        super().__init__(params, defaults)

    @staticmethod
    def check(hp) -> None:
        checks.number("lr", hp["lr"], low=0)
        checks.number("momentum", hp["momentum"], low=0, high=1, high_open=True)
        checks.number("weight_decay", hp["weight_decay"], low=0)
        checks.number("d0", hp["d0"], low=0, low_open=True)
        checks.number("growth_rate", hp["growth_rate"], low=1, finite=False)

    def _init_running(self, group: dict) -> None:
        group["d"] = self._number(group, group["d0"])
        group["numerator_weighted"] = self._number(group, 0.0)

    def _curve(self, group: dict) -> dict:
        return {"lr": group.get("dlr", math.nan), "d": group["d"]}

    @staticmethod
    def _init_state(state: dict, p: Tensor) -> None:
        state["x0"] = p.detach().clone()
        state["s"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _step(self) -> None:
        first = self.param_groups[0]
        members = self._members(first)
        lr, live = self._shared_lr()
        decay, k, d = first["weight_decay"], first["k"], first["d"]
        gathered = [(g, *self._init_group(g)) for g in self.param_groups]
        if k == 0:  # ‖g_0‖ over the groups with lr > 0, before weight decay
            g_sq = torch.zeros_like(d)
            for group, params, grads, states in gathered:
                if grads and (members or group["lr"] > 0):
                    g_sq = g_sq + F.sq_norms(grads, d).sum(-1)
            g0_norm = torch.sqrt(g_sq)
        else:
            g0_norm = first["g0_norm"]
        dlr = d * lr / g0_norm

        numerator, sk_sq = first["numerator_weighted"], torch.zeros_like(d)
        for group, params, grads, states in gathered:
            if not params:
                continue
            if F.nonzero(decay):
                F.axpy_(grads, params, decay)  # coupled, into p.grad as dadaptation does
            if members or group["lr"] > 0:
                num, sq = D.dadapt_sgd_accumulate(grads, [s["s"] for s in states], dlr=dlr, like=d)
                numerator, sk_sq = numerator + num, sk_sq + sq
        active = sk_sq != 0
        d = torch.where(active, D.dadapt_estimate(d, 2 * numerator / torch.sqrt(sk_sq), first["growth_rate"], live), d)
        numerator = torch.where(active, numerator, first["numerator_weighted"])
        for group, params, grads, states in gathered:
            if params:  # (also when Σ‖s‖² = 0: see the class docstring)
                D.dadapt_sgd_apply(params, [s["s"] for s in states], [s["x0"] for s in states],
                                   ck=1 - first["momentum"], ws=self.workspace)
        for group in self.param_groups:
            group.update(d=d, numerator_weighted=numerator, g0_norm=g0_norm, dlr=dlr, k=k + 1)


class DAdaptAdam(LRFreeOptimizer):
    r"""D-Adaptation Adam: Adam with the step size d·lr, d estimated from the weighted gradient sums.

    .. math::
        \begin{aligned}
        &\textbf{input}: \text{lr} \text{ (multiplier)}, β_1, β_2, ε, λ \text{ (weight decay)}, d_0,
            γ \text{ (growth\_rate)}, θ_0, f \\
        &\textbf{initialize}: d ← d_0, \; r ← 0, \; k ← 0; \text{ per tensor } s ← 0, \; m ← 0, \; v ← 0 \\
        &\textbf{for } t = 1, 2, \ldots \textbf{ do} \\
        &\quad g ← ∇f(θ) \; (+\, λθ \text{ unless decouple}) \\
        &\quad b ← \sqrt{1-β_2^{k+1}}/(1-β_1^{k+1}) \text{ with use\_bias\_correction, else } 1;
            \quad η ← d \cdot \text{lr} \cdot b \\
        &\quad a ← η \textstyle\sum ⟨g, s/(\sqrt v + ε)⟩ \\
        &\quad m ← β_1 m + η(1-β_1) g; \quad v ← β_2 v + (1-β_2) g^2; \quad
            s ← \sqrt{β_2}\, s + η(1-\sqrt{β_2})\, g \\
        &\quad r ← \sqrt{β_2}\, r + (1-\sqrt{β_2})\, a \\
        &\quad \textbf{if } \textstyle\sum |s| = 0: \textbf{ skip the rest} \text{ (no gradient yet: nothing changes)} \\
        &\quad \hat d ← r / ((1-\sqrt{β_2}) \textstyle\sum |s|); \quad d ← \max(d, \min(\hat d, γ d)) \\
        &\quad θ ← θ - λ η θ \text{ (decouple)}; \quad θ ← θ - m / (\sqrt v + ε); \quad k ← k + 1 \\
        &\textbf{return } θ
        \end{aligned}

    η sits inside m (each gradient enters m with the step size of its step). As in dadaptation,
    the betas, decouple and growth_rate of the first group hold for all; λ and ε are per group;
    a group whose lr is 0 adds nothing to d's sums but still steps, and groups must otherwise share
    one lr. Weight decay: ``decouple=False`` (the default) adds λθ to the gradient (written into
    ``p.grad``, as dadaptation does); ``decouple=True`` is AdamW-style, θ ← θ − λ·η·θ.

    ``curve_metrics()``: ``lr`` is η = d·lr·b of the latest step (before any step: the first
    step's), ``d`` the estimate after it. Group entries d, r (``numerator_weighted``), k and the latest
    η (``dlr``) are tensors on the device (0-dim; (K,) with a member axis); per tensor the state holds ``s``,
    ``exp_avg``, ``exp_avg_sq``. dadaptation's ``layer_scale`` is not offered (it is 1).

    Args:
        params: tensors or param-group dicts.
        lr: multiplier of the estimated step size (default 1).
        betas: β_1, β_2 (default (0.9, 0.999)).
        eps: ε (default 1e-8).
        weight_decay: λ (default 0).
        decouple: decoupled (AdamW-style) weight decay (default False).
        use_bias_correction: Adam's bias correction b in η (default False).
        d0: initial estimate d_0 (default 1e-6).
        growth_rate: γ, the most d may grow in a step (default ∞).
    """

    positive_lr = True

    def __init__(self, params, lr: float = 1.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decouple: bool = False, use_bias_correction: bool = False,
                 d0: float = 1e-6, growth_rate: float = math.inf):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, decouple=decouple,
                        use_bias_correction=use_bias_correction, d0=d0, growth_rate=growth_rate)
        super().__init__(params, defaults)

    @staticmethod
    def check(hp) -> None:
        checks.number("lr", hp["lr"], low=0)
        checks.pair("betas", hp["betas"])
        checks.number("eps", hp["eps"], low=0, low_open=True)
        checks.number("weight_decay", hp["weight_decay"], low=0)
        flag("decouple", hp["decouple"])
        flag("use_bias_correction", hp["use_bias_correction"])
        checks.number("d0", hp["d0"], low=0, low_open=True)
        checks.number("growth_rate", hp["growth_rate"], low=1, finite=False)

    def _init_running(self, group: dict) -> None:
        for key, value in (("d", group["d0"]), ("numerator_weighted", 0.0), ("k", 0.0)):
            group[key] = self._number(group, value)

    def _curve(self, group: dict) -> dict:
        return {"lr": group["dlr"] if "dlr" in group else self._step_size(group, group["lr"]), "d": group["d"]}

    @staticmethod
    def _init_state(state: dict, p: Tensor) -> None:
        for key in ("exp_avg", "exp_avg_sq", "s"):
            state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _step(self) -> None:
        start = self._adam_start()
        if start is None:
            return
        first, members, live, dlr = start
        beta1, beta2 = first["betas"]
        d, decouple = first["d"], first["decouple"]
        sqrt_beta2 = beta2 ** 0.5

        acc, sk_l1 = torch.zeros_like(d), torch.zeros_like(d)
        gathered = []
        for group in self.param_groups:
            params, grads, states = self._init_group(group)
            if not params:
                continue
            if not decouple and F.nonzero(group["weight_decay"]):
                F.axpy_(grads, params, group["weight_decay"])  # coupled, into p.grad as dadaptation does
            exp_avgs, exp_avg_sqs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
            if members or group["lr"] > 0:
                num, l1 = D.dadapt_adam_accumulate(grads, exp_avgs, exp_avg_sqs, [s["s"] for s in states], dlr=dlr,
                                                   beta1=beta1, beta2=beta2, eps=group["eps"], like=d, live=live,
                                                   ws=self.workspace)
                acc, sk_l1 = acc + num, sk_l1 + l1
            gathered.append((group, params, exp_avgs, exp_avg_sqs))

        numerator = sqrt_beta2 * first["numerator_weighted"] + (1 - sqrt_beta2) * acc
        active = (sk_l1 != 0) & live
        d_hat = numerator / ((1 - sqrt_beta2) * sk_l1)
        d = torch.where(active, D.dadapt_estimate(d, d_hat, first["growth_rate"]), d)
        numerator = torch.where(active, numerator, first["numerator_weighted"])
        for group, params, exp_avgs, exp_avg_sqs in gathered:
            D.dadapt_adam_apply(params, exp_avgs, exp_avg_sqs, dlr=dlr, eps=group["eps"],
                                weight_decay=group["weight_decay"], decouple=decouple, active=active,
                                ws=self.workspace)
        k = first["k"] + active.to(first["k"].dtype)
        for group in self.param_groups:
            group.update(d=d, numerator_weighted=numerator, k=k, dlr=dlr)


# descriptions, papers and defaults: sensitivity/catalog.py
register_rule("d-adapt-sgd", DAdaptSGD)
register_rule("d-adapt-adam", DAdaptAdam)
