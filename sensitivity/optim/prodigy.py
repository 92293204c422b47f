"""Prodigy (Mishchenko & Defazio 2024): Adam whose step size d·lr is estimated online; prodigyopt 1.1.2's rule.

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

__all__ = ["Prodigy"]


class Prodigy(LRFreeOptimizer):
    r"""Prodigy: Adam with the step size d·lr, d estimated from how far the parameters have moved.

    .. math::
        \begin{aligned}
        &\textbf{input}: \text{lr} \text{ (multiplier)}, β_1, β_2, β_3 \text{ (default } \sqrt{β_2}),
            ε, λ \text{ (weight decay)}, d_0, c \text{ (d\_coef)}, γ \text{ (growth\_rate)}, θ_0, f \\
        &\textbf{initialize}: d ← d_0, \; d_{max} ← d_0, \; r ← 0, \; k ← 0; \text{ per tensor }
            x_0 ← θ_0, \; s ← 0, \; m ← 0, \; v ← 0 \\
        &\textbf{for } t = 1, 2, \ldots \textbf{ do} \\
        &\quad g ← ∇f(θ) \; (+\, λθ \text{ unless decouple}) \\
        &\quad b ← \sqrt{1-β_2^{k+1}}/(1-β_1^{k+1}) \text{ with use\_bias\_correction, else } 1;
            \quad η ← d \cdot \text{lr} \cdot b \\
        &\quad r ← β_3 r + (d/d_0)\, η \textstyle\sum ⟨g, x_0 - θ⟩ \\
        &\quad m ← β_1 m + d(1-β_1) g; \quad v ← β_2 v + d^2(1-β_2) g^2 \\
        &\quad s ← β_3 s + (d/d_0)\, η\, g \quad (\text{safeguard\_warmup}: (d/d_0)\, d\, g) \\
        &\quad \textbf{if } \textstyle\sum |s| = 0: \textbf{ skip the rest} \text{ (no gradient yet: nothing changes)} \\
        &\quad \hat d ← c \, r / \textstyle\sum |s|; \quad \textbf{if } d = d_0: d ← \max(d, \hat d); \quad
            d_{max} ← \max(d_{max}, \hat d); \quad d ← \min(d_{max}, γ d) \\
        &\quad θ ← θ - λ η θ \text{ (decouple)}; \quad θ ← θ - η\, m / (\sqrt v + d ε)
            \quad (β_1 = 0: η\, d\, g \text{ in place of } η\, m) \\
        &\quad k ← k + 1 \\
        &\textbf{return } θ
        \end{aligned}

    Sums run over every parameter of every group: d is one number for the whole model (per member
    of a fused array). As in prodigyopt, the betas, β_3, d_coef, growth_rate and decouple of the
    first group hold for all; λ, ε, d_0 and safeguard_warmup are per group; groups whose lr is 0 add
    nothing to d's sums but still take the step (decoupled decay included), and other groups must
    share one lr. The estimate and the step use d before its update, except ε's and β_1 = 0's d.

    Weight decay: ``decouple=True`` (the default) is AdamW-style, θ ← θ − λ·η·θ before the Adam
    step; ``decouple=False`` adds λθ to the gradient (written into ``p.grad``, as prodigyopt does),
    so it enters the moments and d's numerator. The step leaves d·g in ``p.grad`` (the moments are
    updated from it, m ← β_1 m + (1−β_1)(d g), v ← β_2 v + (1−β_2)(d g)², which saves a temporary).

    growth_rate bounds d's growth from the second move on: while d = d_0 the estimate jumps straight
    to d̂, as in prodigyopt.

    ``curve_metrics()``: ``lr`` is η = d·lr·b of the latest step (before any step: the first
    step's, d_0·lr·b), ``d`` the estimate after it. The running numbers d, d_max, r (``d_numerator``),
    k and the latest η (``dlr``) are group entries, as prodigyopt keeps them, but tensors on the device (0-dim; (K,)
    with a member axis). Per tensor the state holds x_0 (``p0``; a 0-dim zero for a tensor that
    started all zero, as prodigyopt stores it), ``s``, ``exp_avg`` (absent when β_1 = 0) and
    ``exp_avg_sq``. prodigyopt's ``slice_p`` and FSDP options are not offered (slice_p = 1).

    Args:
        params: tensors or param-group dicts.
        lr: multiplier of the estimated step size (default 1).
        betas: β_1, β_2 of Adam's moments (default (0.9, 0.999)).
        beta3: decay of d's sums (default None: √β_2).
        eps: ε, added to √v scaled by d (default 1e-8).
        weight_decay: λ (default 0).
        decouple: decoupled (AdamW-style) weight decay (default True).
        use_bias_correction: Adam's bias correction b in η (default False).
        safeguard_warmup: leave lr out of s, against overestimating d during a warm-up (default False).
        d0: initial estimate d_0 (default 1e-6).
        d_coef: c, multiplies the estimate d̂ (default 1).
        growth_rate: γ, the most d may grow in a step (default ∞; the first move off d_0 is not limited).
    """

    positive_lr = True

    def __init__(self, params, lr: float = 1.0, betas: tuple[float, float] = (0.9, 0.999), beta3: float | None = None,
                 eps: float = 1e-8, weight_decay: float = 0.0, decouple: bool = True,
                 use_bias_correction: bool = False, safeguard_warmup: bool = False, d0: float = 1e-6,
                 d_coef: float = 1.0, growth_rate: float = math.inf):
        defaults = dict(lr=lr, betas=tuple(betas), beta3=beta3, eps=eps, weight_decay=weight_decay, decouple=decouple,
                        use_bias_correction=use_bias_correction, safeguard_warmup=safeguard_warmup, d0=d0,
                        d_coef=d_coef, growth_rate=growth_rate)
        super().__init__(params, defaults)

    @staticmethod
    def check(hp) -> None:
        checks.number("lr", hp["lr"], low=0)
        checks.pair("betas", hp["betas"])
        checks.number("beta3", hp["beta3"], low=0, high=1, high_open=True, allow_none=True)
        checks.number("eps", hp["eps"], low=0, low_open=True)
        checks.number("weight_decay", hp["weight_decay"], low=0)
        for key in ("decouple", "use_bias_correction", "safeguard_warmup"):
            flag(key, hp[key])
        checks.number("d0", hp["d0"], low=0, low_open=True)
        checks.number("d_coef", hp["d_coef"], low=0, low_open=True)
        checks.number("growth_rate", hp["growth_rate"], low=1, finite=False)

    def _init_running(self, group: dict) -> None:
        for key, value in (("d", group["d0"]), ("d_max", group["d0"]), ("d_numerator", 0.0), ("k", 0.0)):
            group[key] = self._number(group, value)

    def _curve(self, group: dict) -> dict:
        return {"lr": group["dlr"] if "dlr" in group else self._step_size(group, group["lr"]), "d": group["d"]}

    def _init_state(self, state: dict, p: Tensor) -> None:
        beta1 = self.param_groups[0]["betas"][0]
        state["s"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        # an all-zero tensor keeps a 0-dim zero as its start, as prodigyopt does (one sync, first step only)
        state["p0"] = p.detach().clone() if p.any() else torch.zeros((), dtype=p.dtype, device=p.device)
        if isinstance(beta1, Tensor) or beta1 > 0:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _step(self) -> None:
        start = self._adam_start()
        if start is None:
            return
        first, members, live, dlr = start
        beta1, beta2 = first["betas"]
        beta3 = first["beta3"]
        if beta3 is None:
            beta3 = torch.sqrt(beta2) if isinstance(beta2, Tensor) else math.sqrt(beta2)
        d, decouple = first["d"], first["decouple"]

        numerator, denom = torch.zeros_like(d), torch.zeros_like(d)
        gathered = []
        for group in self.param_groups:
            params, grads, states = self._init_group(group)
            if not params:
                continue
            decay = group["weight_decay"]
            if not decouple and F.nonzero(decay):
                F.axpy_(grads, params, decay)  # coupled, into p.grad as prodigyopt does
            exp_avgs = [s["exp_avg"] for s in states] if "exp_avg" in states[0] else None
            exp_avg_sqs = [s["exp_avg_sq"] for s in states]
            if members or group["lr"] > 0:
                p0s = [s["p0"] if s["p0"].shape == p.shape else None for p, s in zip(params, states)]
                num, den = D.prodigy_accumulate(
                    params, grads, p0s, exp_avgs, exp_avg_sqs, [s["s"] for s in states], d=d, dlr=dlr,
                    d0=group["d0"], beta1=beta1, beta2=beta2, beta3=beta3,
                    safeguard_warmup=group["safeguard_warmup"], live=live, ws=self.workspace)
                numerator, denom = numerator + num, denom + den
            elif exp_avgs is None:
                F.scale_(grads, d)  # (β1 = 0 steps with d·g, which prodigy_accumulate leaves in grads)
            gathered.append((group, params, grads, states, exp_avgs, exp_avg_sqs))

        d_before = d
        d, d_max, d_numerator, active = D.prodigy_estimate(
            d, first["d_max"], first["d_numerator"], numerator, denom, d0=self.param_groups[-1]["d0"],
            d_coef=first["d_coef"], growth_rate=first["growth_rate"], beta3=beta3, live=live)
        for group, params, grads, states, exp_avgs, exp_avg_sqs in gathered:
            D.prodigy_apply(params, grads, exp_avgs, exp_avg_sqs, d=d, d_before=d_before, dlr=dlr, eps=group["eps"],
                            weight_decay=group["weight_decay"], decouple=decouple, active=active,
                            beta1=beta1, ws=self.workspace)
        k = first["k"] + active.to(first["k"].dtype)
        for group in self.param_groups:
            group.update(d=d, d_max=d_max, d_numerator=d_numerator, k=k, dlr=dlr)


def _resolve_beta3(hyperparameters: list[dict]) -> list[dict]:
    """Members that mix beta3=None with numbers: None is √β_2 (what Prodigy uses for it)."""
    if all(hp["beta3"] is None for hp in hyperparameters):
        return hyperparameters
    return [{**hp, "beta3": math.sqrt(hp["betas"][1]) if hp["beta3"] is None else hp["beta3"]}
            for hp in hyperparameters]


# description, paper and defaults: sensitivity/catalog.py
register_rule("prodigy", Prodigy, prepare=_resolve_beta3)
