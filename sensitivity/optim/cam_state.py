"""CAM-HD's rates over their life: created at α0, rescaled when ``lr`` is changed from outside
(a decay), owned again after a load; and the split of a fused array's hyperparameters between
the optimizer (levels, γ, δ) and its member-axis param group. See :mod:`sensitivity.optim.cam_hd`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from sensitivity import checks

from .cam_levels import Layout, check_gammas, full_rates, over, rate_dtype
from .members import member_group, member_value

__all__ = ["RATES", "check_initial_gammas", "initial_gammas", "own_loaded", "initial_rates", "rescale", "rescale_members", "own", "split_members"]

RATES = ("parameter_mean", "unit", "layer", "global")  # a group's level rates (per-element ones live in `state`)


def check_initial_gammas(gammas: Any, levels: tuple[str, ...]) -> list:
    """One weight per level (a list), or for a member-axis group one such list per member."""
    nested = not isinstance(gammas, str) and isinstance(gammas, Sequence) and len(gammas) > 0 \
        and isinstance(gammas[0], Sequence) and not isinstance(gammas[0], str)
    return [check_gammas(g, levels) for g in gammas] if nested else check_gammas(gammas, levels)


def initial_gammas(initial: list, lead: int | None, device: torch.device):
    """The initial γ: a list (solo, shared by the groups) or a (K, levels) tensor (one row per member)."""
    nested = isinstance(initial[0], list)
    if lead is None:
        if nested:
            raise ValueError("gammas: one sequence per member is for a member-axis group")
        return list(initial)
    rows = initial if nested else [initial] * lead
    if len(rows) != lead:
        raise ValueError(f"gammas: {len(rows)} members' gammas for {lead} members")
    return torch.tensor(rows, dtype=rate_dtype(device), device=device)


def initial_rates(levels, layout: Layout, lr: float | Tensor, params: list[Tensor], state: dict,
                  lead: int | None) -> dict[str, Any]:
    """Every level's rates of a new group at its lr (per member for a member group); the parameter
    level's per-element rates go into each parameter's `state`."""
    device = params[0].device
    dtype = rate_dtype(device)
    rates: dict[str, Any] = {"lr": lr.clone() if lead is not None else lr}
    if "parameter" in levels:
        rates["parameter_mean"] = full_rates(lr, (), dtype, device)
        for p in params:
            state[p]["lr_parameter"] = full_rates(lr, p.shape[1:], p.dtype, device) if lead is not None \
                else torch.full_like(p, lr, memory_format=torch.preserve_format)
    if "unit" in levels:
        rates["unit"] = full_rates(lr, (layout.num_units,), dtype, device)
    if "layer" in levels:
        rates["layer"] = full_rates(lr, (layout.num_modules,), dtype, device)
    if "global" in levels:
        rates["global"] = full_rates(lr, (), dtype, device)
    return rates


def rescale(group: dict, rates: dict, per_element: Callable[[], list[Tensor]]) -> None:
    """A solo group whose ``lr`` changed from outside: its level rates (per-element ones from
    `per_element()`) and α_∞ times new/old."""
    new, old = group["lr"], rates["lr"]
    if new == old or (new != new and old != old):  # unchanged (NaN after a divergence included)
        return
    new = group["lr"] = checks.number("lr", new)
    tensors = [rates[k] for k in RATES if k in rates]
    per_element = per_element()
    if old != 0:
        factor = new / old
        for t in tensors:
            t.mul_(factor)
        if per_element:
            torch._foreach_mul_(per_element, factor)
        group["alpha_inf"] *= factor
    else:  # nothing to scale: restart every rate at the new value
        for t in tensors + per_element:
            t.fill_(new)
        group["alpha_inf"] = new
    rates["lr"] = new


def rescale_members(group: dict, rates: dict, per_element: list[Tensor]) -> None:
    """The same per member of a member group, on the device (members whose lr is unchanged keep
    their rates bit for bit: they are multiplied by 1)."""
    new, old = group["lr"], rates["lr"]
    changed = (new != old) & ~(torch.isnan(new) & torch.isnan(old))
    factor = torch.where(changed & (old != 0), new / old, 1.0)
    restart = changed & (old == 0)

    def rescaled(t: Tensor) -> Tensor:
        return torch.where(over(restart, t), over(new, t).to(t.dtype), t * over(factor, t).to(t.dtype))

    for key in RATES:
        if key in rates:
            rates[key] = rescaled(rates[key])
    for t in per_element:
        t.copy_(rescaled(t))
    group["alpha_inf"] = torch.where(restart, new, group["alpha_inf"] * factor)
    rates["lr"] = new.clone()


def own(value, device: torch.device):
    """A loaded rate tensor as the optimizer's own float64 copy on `device` (other values as they are)."""
    if isinstance(value, Tensor):
        return value.detach().to(device=device, dtype=rate_dtype(device), copy=True)
    return value


def own_loaded(loaded: dict, param_groups: list[dict]) -> dict:
    """The loaded ``state["cam_hd"]`` with every rate (and a member group's γ and δ) the optimizer's
    own float64 copy on its group's device (they are updated in place)."""
    device = param_groups[0]["params"][0].device
    groups = [{k: own(v, group["params"][0].device) for k, v in rates.items()}
              for rates, group in zip(loaded["groups"], param_groups)]
    gammas = loaded["gammas"]
    out = {"levels": list(loaded["levels"]), "step": int(loaded["step"]), "groups": groups,
           "gammas": own(gammas, device) if isinstance(gammas, Tensor) else [float(g) for g in gammas]}
    if "delta" in loaded:
        out["delta"] = own(loaded["delta"], device)
    return out


def split_members(params: list, hyperparameters: list[dict]) -> tuple[dict, dict]:
    """A fused array's member-axis param group over `params` (stacked tensors, or (solo name,
    stacked tensor) pairs) and the optimizer's own arguments (levels, each member's γ, δ).

    Members share the levels. A member without decay (``decay_rate`` None) beside one with it gets
    r = 0 (τ = exp(−0·t) = 1 exactly); ``alpha_inf`` None is the member's own lr.
    """
    named = bool(params) and isinstance(params[0], tuple)
    tensors = [p for _, p in params] if named else list(params)
    levels = tuple(hyperparameters[0]["levels"])
    if any(tuple(hp["levels"]) != levels for hp in hyperparameters):
        raise ValueError("levels: members of one array must share them")
    optimizer_wide = ("levels", "gammas", "delta")
    per_member = [{k: v for k, v in hp.items() if k not in optimizer_wide} for hp in hyperparameters]
    mixed = len({hp["decay_rate"] is None for hp in per_member}) > 1
    for hp in per_member:
        if mixed and hp["decay_rate"] is None:
            hp["decay_rate"] = 0.0
        if hp["alpha_inf"] is None:
            hp["alpha_inf"] = hp["lr"]
    group = member_group(tensors, per_member)
    if named:  # (torch keeps the names as the group's param_names)
        group["params"] = list(params)
    delta = member_value("delta", [hp["delta"] for hp in hyperparameters], tensors[0].device)
    return group, {"levels": levels, "gammas": [hp["gammas"] for hp in hyperparameters], "delta": delta}
