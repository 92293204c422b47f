"""CAM-HD's update math over one param group: level hypergradients, level rates, γ and κ.

One copy of every formula serves a solo group and a fused array's members (see
:mod:`sensitivity.optim.cam_levels`): a per-member value is a python number (or 0-d tensor) in a
solo group and a (K,) tensor for K members; a level's rates are (U,), (M,) or 0-d solo and carry
a leading member axis for members. Every sum stops at the member axis. The per-level values
γ_ℓ, ∂f/∂γ_ℓ and mean(α_ℓ) are lists with one entry per level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from . import functional as F
from .cam_levels import Layout, over, segment_sums
from .functional import Scalar

__all__ = ["is_zero", "directions", "level_sums", "hyper_step", "project_gammas", "level_means", "tau", "decayed", "kappa",
           "rate_views"]


def is_zero(x: Scalar) -> bool:
    """Whether `x` is the number 0 (per-member values are never skipped: that would need a host sync)."""
    return not isinstance(x, Tensor) and x == 0


def _flat_sum(x: Tensor, lead: int | None) -> Tensor:
    return x.sum() if lead is None else x.reshape(lead, -1).sum(1)


def _flat_dot(x: Tensor, y: Tensor, lead: int | None) -> Tensor:
    if lead is None:
        return torch.dot(x.reshape(-1), y.reshape(-1))
    return torch.linalg.vecdot(x.reshape(lead, -1), y.reshape(lead, -1))


def _vdot(rates: Tensor, values: Tensor) -> Tensor:
    """Σ over the last axis of rates·values: a number (solo) or one per member."""
    return torch.dot(rates, values) if rates.dim() == 1 else torch.linalg.vecdot(rates, values)


def directions(op: str, group: dict, grads: list[Tensor], g: list[Tensor], states: list[dict]
               ) -> tuple[list[Tensor], list[Scalar]]:
    """Base direction d_t = c·u (c = 1 except for adam), stored as the next step's d_{t−1}."""
    for state in states:
        state["step"] += 1
    if op == "sgd":
        if g is not grads:  # coupled L2 allocated fresh tensors: keep them
            for state, gi in zip(states, g):
                state["prev_direction"] = gi
        else:  # the gradient belongs to autograd: copy it into our own buffer
            dst, src = [], []
            for state, gi in zip(states, g):
                prev = state.get("prev_direction")
                if prev is not None and prev.shape == gi.shape and prev.dtype == gi.dtype and prev is not gi:
                    dst.append(prev)
                    src.append(gi)
                else:
                    state["prev_direction"] = gi.clone(memory_format=torch.preserve_format)
            if dst:
                torch._foreach_copy_(dst, src)
        return g, [1.0] * len(g)
    if op == "sgdn":
        d = F.sgdn_direction(g, [s["momentum_buffer"] for s in states], momentum=group["momentum"])
        for state, di in zip(states, d):
            state["prev_direction"] = di
        return d, [1.0] * len(d)
    beta1, beta2 = group["betas"]
    u, c = F.adam_scaled_direction(
        g, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
        steps=[s["step"] for s in states], beta1=beta1, beta2=beta2, eps=group["eps"],
    )
    for state, ui, ci in zip(states, u, c):
        state["prev_direction"] = ui
        state["prev_direction_scale"] = ci
    return u, c


def level_sums(
    lay: Layout, levels: Sequence[str], idx: list[int], gs: list[Tensor], ds: list[Tensor], cs: list[Scalar],
    uniform: bool, prods: list[Tensor] | None, lead: int | None, dtype: torch.dtype,
) -> dict[str, Tensor]:
    """Σ_{p∈i} D_p for every group i of the unit, layer and global levels (D_p = −c·g_p·u_p).

    `prods` holds g·u per element (required for the unit level), else dot products are used.
    `uniform`: every c is the same (c depends on the step count only). Shapes: (*B, U), (*B, M), (*B).
    """
    sums: dict[str, Tensor] = {}
    device = gs[0].device
    lead_shape = () if lead is None else (lead,)
    sign = -cs[0] if uniform else -1.0
    if "unit" in levels:
        parts: dict[int, Tensor] = {}
        for k, j in enumerate(idx):
            view, x = lay.unit_view[j], prods[k]
            if view is None:  # one unit: the tensor's sum
                x = _flat_sum(x, lead).reshape(*lead_shape, 1)
            elif len(view) > 1:  # a 1-d tensor (bias, norm scale) already is its per-unit sum
                x = x.reshape(*lead_shape, view[0], -1).sum(-1)
            parts[j] = x if uniform else x * over(cs[k], x)
        pieces = []
        for shared, units, singles in lay.blocks:  # units in layout order: shared block, then singles
            if shared:
                got = [parts[j] for j in shared if j in parts]
                block = got[0] if got else torch.zeros(*lead_shape, units, dtype=prods[0].dtype, device=device)
                for x in got[1:]:
                    block = block + x
                pieces.append(block)
            for j in singles:
                pieces.append(parts[j] if j in parts else torch.zeros(*lead_shape, 1, dtype=prods[0].dtype,
                                                                      device=device))
        unit = torch.cat(pieces, -1).to(dtype)
        unit = unit * over(sign, unit)
        sums["unit"] = unit
        if "layer" in levels:
            sums["layer"] = segment_sums(unit, lay.module_units)
        sums["global"] = unit.sum(-1)
        return sums
    if prods is not None:
        totals = [_flat_sum(x, lead) for x in prods]
    else:
        totals = [_flat_dot(g, d, lead) for g, d in zip(gs, ds)]
    if not uniform:
        totals = [x * c for x, c in zip(totals, cs)]
    by_param = dict(zip(idx, totals))
    zero = torch.zeros(lead_shape, dtype=totals[0].dtype, device=device)
    ordered = torch.stack([by_param.get(j, zero) for j in lay.module_order], -1).to(dtype)
    ordered = ordered * over(sign, ordered)
    if "layer" in levels:
        sums["layer"] = segment_sums(ordered, lay.module_params)
    sums["global"] = ordered.sum(-1)
    return sums


def hyper_step(
    lay: Layout, levels: Sequence[str], rates: dict, gammas: Sequence[Scalar], sums: dict[str, Tensor], *,
    prods: list[Tensor] | None, alphas: list[Tensor], cs: list[Scalar], uniform: bool, beta: Scalar, tau: Scalar,
    with_gamma: bool, lead: int | None, dtype: torch.dtype,
) -> list[Tensor] | None:
    """Move the group's level rates in place by their hypergradients; return ∂f/∂γ_ℓ per level
    (computed with the rates before the move), or None without `with_gamma`.

    α_ℓ(i) ← α_ℓ(i) − β·γ_ℓ·τ·(n/n_i)·Σ_{p∈i} D_p and ∂f/∂γ_ℓ = τ·Σ_p D_p·α_ℓ(p). `alphas` are the
    parameter level's per-element rates, `prods` the products g·u of the tensors in `sums`.
    """
    grad_gamma = None
    if with_gamma:
        dot = F.dot if lead is None else F.member_dot
        grad_gamma = []
        for level in levels:
            if level == "parameter":  # Σ_p D_p α_p = −Σ c·(g·u)·α_p
                part = -(dot(prods, alphas) * cs[0] if uniform else dot(prods, alphas, cs)).to(dtype)
            elif level == "global":
                part = rates["global"] * sums["global"]
            else:
                part = _vdot(rates[level], sums[level])
            grad_gamma.append(part * tau)

    coef = beta * tau
    for level, gamma in zip(levels, gammas):
        if is_zero(gamma) or is_zero(coef):
            continue
        step = coef * gamma
        if level == "parameter":
            # α_p ← α_p − β γ τ n D_p = α_p + β γ τ n c (g·u)
            scale = step * lay.n
            if uniform:
                F.axpy_(alphas, prods, scale * cs[0])
            else:
                for a, x, c in zip(alphas, prods, cs):
                    F.axpy_([a], [x], scale * c)
            F.axpy_([rates["parameter_mean"]], [sums["global"]], -step)
        elif level == "unit":
            F.axpy_([rates["unit"]], [sums["unit"] * lay.unit_scale], -step)
        elif level == "layer":
            F.axpy_([rates["layer"]], [sums["layer"] * lay.module_scale], -step)
        else:
            F.axpy_([rates["global"]], [sums["global"]], -step)
    return grad_gamma


def _isfinite(x: Scalar):
    return torch.isfinite(x) if isinstance(x, Tensor) else math.isfinite(x)


def project_gammas(old: Sequence[Scalar], grad: Sequence[Scalar], delta: Scalar) -> list[Scalar]:
    """γ_ℓ ← max(γ_ℓ − δ·∂f/∂γ_ℓ, 0), renormalised to sum 1; γ keep their values where the step
    is not finite or every γ clamps to 0, and where δ = 0, as a solo run with δ = 0 does not project
    them at all (per member)."""
    new = [gamma - delta * g for gamma, g in zip(old, grad)]
    ok = _isfinite(new[0])
    for x in new[1:]:
        ok = ok & _isfinite(x)
    new = [torch.clamp(x, min=0.0) if isinstance(x, Tensor) else max(x, 0.0) for x in new]
    total = sum(new)
    ok = ok & (total > 0) & _isfinite(total)
    if isinstance(delta, Tensor):
        ok = ok & (delta != 0)
    if not isinstance(ok, Tensor):
        return [x / total for x in new] if ok else list(old)
    return [torch.where(ok, x / total, gamma) for x, gamma in zip(new, old)]


def level_means(lay: Layout, levels: Sequence[str], rates: dict) -> list[Tensor]:
    """Element-weighted mean of every level's rates (levels order), each 0-d or (K,)."""
    means = []
    for level in levels:
        if level == "parameter":
            means.append(rates["parameter_mean"])
        elif level == "unit":
            means.append(_vdot(rates["unit"], lay.unit_weight.to(rates["unit"].dtype)))
        elif level == "layer":
            means.append(_vdot(rates["layer"], lay.module_weight.to(rates["layer"].dtype)))
        else:
            means.append(rates["global"])
    return means


def tau(decay_rate: Scalar | None, t: int) -> Scalar:
    """τ(t) = exp(−r·t) (1 without decay; per member for a (K,) r)."""
    if isinstance(decay_rate, Tensor):
        return torch.exp(-decay_rate * t)
    return 1.0 if decay_rate is None else math.exp(-decay_rate * t)


def decayed(x, tau: Scalar, alpha_inf: Scalar):
    """τ·x + (1 − τ)·α_∞ (x itself without decay)."""
    if not isinstance(tau, Tensor) and tau == 1:
        return x
    return x * over(tau, x) + over((1 - tau) * alpha_inf, x) if isinstance(x, Tensor) else tau * x + (1 - tau) * alpha_inf


def kappa(lay: Layout, levels: Sequence[str], rates: dict, gammas: Sequence[Scalar], tau: Scalar, alpha_inf: Scalar,
          lead: int | None, device: torch.device, dtype: torch.dtype) -> Tensor:
    """κ of the unit, layer and global levels, at the finest of them present: (*B, U), (*B, M) or (*B)."""
    weights = dict(zip(levels, gammas))
    coarse = None
    for level in ("unit", "layer", "global"):
        if level not in weights:
            continue
        value = rates[level] * over(weights[level], rates[level])
        if coarse is None:
            coarse = value
        elif level == "layer":  # coarse is per unit
            coarse = coarse + value.index_select(-1, lay.unit_module)
        else:
            coarse = coarse + over(value, coarse)
    if coarse is None:
        coarse = torch.zeros(() if lead is None else (lead,), dtype=dtype, device=device)
    return decayed(coarse, tau, alpha_inf)


def rate_views(lay: Layout, levels: Sequence[str], idx: list[int], params: list[Tensor], k: Tensor,
               lead: int | None) -> list[Tensor]:
    """κ of each param as a view that broadcasts over it (per unit, per module or one per group)."""
    cast: dict[torch.dtype, Tensor] = {}
    per_unit = "unit" in levels
    per_module = not per_unit and "layer" in levels
    out = []
    for p, j in zip(params, idx):
        kp = cast.get(p.dtype)
        if kp is None:
            kp = cast[p.dtype] = k.to(p.dtype)
        if per_unit:
            view, start = lay.unit_view[j], lay.unit_start[j]
            r = kp[..., start] if view is None else kp[..., start:start + view[0]]
        else:
            view, r = None, kp[..., lay.module[j]] if per_module else kp
        if lead is not None:
            r = r.view(lead, *(view or (1,) * (p.dim() - 1)))
        elif view is not None:
            r = r.view(view)
        out.append(r)
    return out
