"""CAM-HD: combined adaptive multi-level hypergradient descent (``<op>-cam-hd``, op ∈ sgd, sgdn, adam).

Learning rates at several levels (parameter, unit, layer, global) each learn by hypergradient
descent, and their convex combination is the step size (paper 002, Section 2.3 and Algorithm 1).
The base directions and the HD conventions are those of :mod:`sensitivity.optim.hd`; the update
math comes from :mod:`sensitivity.optim.functional`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from sensitivity import checks

from . import functional as F
from .registry import register

__all__ = ["CamHD", "LEVELS", "OPS"]

LEVELS = ("parameter", "unit", "layer", "global")  # leaf first
OPS = ("sgd", "sgdn", "adam")
_STATE_KEY = "cam_hd"  # optimizer-wide state (γ, step, level rates), kept in `state` under a string key


def _check_levels(levels: Any) -> tuple[str, ...]:
    if isinstance(levels, str) or not isinstance(levels, Sequence) or not levels:
        raise ValueError(f"levels must be a non-empty list of level names from {', '.join(LEVELS)}, got {levels!r}")
    for level in levels:
        if level not in LEVELS:
            raise ValueError(f"levels: unknown level {level!r}; valid levels (leaf first): {', '.join(LEVELS)}")
    ranks = [LEVELS.index(level) for level in levels]
    if any(a >= b for a, b in zip(ranks, ranks[1:])):
        raise ValueError(
            f"levels must be ordered leaf first ({', '.join(LEVELS)}) without repeats, got {list(levels)}"
        )
    return tuple(levels)


def _check_gammas(gammas: Any, levels: tuple[str, ...]) -> list[float]:
    if isinstance(gammas, str) or not isinstance(gammas, Sequence) or len(gammas) != len(levels):
        raise ValueError(f"gammas must hold one weight per level ({len(levels)} for {list(levels)}), got {gammas!r}")
    for i, g in enumerate(gammas):
        checks.number(f"gammas[{i}]", g, low=0)
    total = float(sum(gammas))
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"gammas must sum to 1 (they are combination weights), got {list(gammas)} (sum {total:g})")
    return [float(g) / total for g in gammas]


@dataclass(frozen=True)
class _Layout:
    """How one param group's elements split into units and layers.

    Units are numbered module by module (a module's shared dim-0 block first, then its single-unit
    tensors), so every module owns a contiguous run of units and all sums are deterministic
    concatenations and segment sums, with no scatter-adds.
    """

    n: int  # elements in the group
    module: tuple[int, ...]  # per param: its layer (module) index
    unit_start: tuple[int, ...]  # per param: index of its first unit
    unit_view: tuple[tuple[int, ...] | None, ...]  # per param: shape broadcasting its units on it; None = 1 unit
    blocks: tuple[tuple[tuple[int, ...], int, tuple[int, ...]], ...]  # per module: (shared params, units, singles)
    module_order: tuple[int, ...]  # params sorted by module (stable)
    module_params: Tensor  # per module: number of params (long)
    module_units: Tensor  # per module: number of units (long)
    unit_module: Tensor  # per unit: its module (long)
    unit_scale: Tensor  # per unit: n / n_unit (float64)
    module_scale: Tensor  # per module: n / n_module (float64)
    unit_weight: Tensor  # per unit: n_unit / n, for element-weighted means (float64)
    module_weight: Tensor  # per module: n_module / n

    @property
    def num_units(self) -> int:
        return self.unit_module.numel()

    @property
    def num_modules(self) -> int:
        return self.module_scale.numel()


def _module_keys(params: list[Tensor], names: list[str] | None) -> list[Any]:
    # A module is the name prefix before the last '.'; a plain tensor is a module of its own.
    if names is None:
        return [("tensor", j) for j in range(len(params))]
    return [name.rpartition(".")[0] for name in names]


def _build_layout(params: list[Tensor], names: list[str] | None, device: torch.device) -> _Layout:
    modules: dict[Any, list[int]] = {}
    for j, key in enumerate(_module_keys(params, names)):
        modules.setdefault(key, []).append(j)
    m = len(params)
    module, start, view = [0] * m, [0] * m, [None] * m
    blocks, unit_module, unit_sizes, module_sizes, module_units = [], [], [], [], []
    for mi, members in enumerate(modules.values()):
        # Units are dim-0 slices of the module's highest-rank tensor (its weight); every tensor of the
        # module with the same dim-0 size shares them (bias element i <-> unit i; BatchNorm weight and
        # bias element i <-> channel i). Anything else (0-d, other dim-0 size) is one unit by itself.
        ref = max(members, key=lambda j: params[j].dim())
        units = params[ref].shape[0] if params[ref].dim() >= 1 else 0
        shared = tuple(j for j in members if units > 0 and params[j].dim() >= 1 and params[j].shape[0] == units)
        singles = tuple(j for j in members if j not in shared)
        first = len(unit_sizes)
        if shared:
            unit_sizes += [sum(params[j].numel() for j in shared) // units] * units
        for j in shared:
            start[j], view[j] = first, (units,) + (1,) * (params[j].dim() - 1)
        for j in singles:
            start[j] = len(unit_sizes)
            unit_sizes.append(params[j].numel())
        for j in members:
            module[j] = mi
        blocks.append((shared, units if shared else 0, singles))
        unit_module += [mi] * (len(unit_sizes) - first)
        module_units.append(len(unit_sizes) - first)
        module_sizes.append(sum(params[j].numel() for j in members))
    n = sum(module_sizes)

    def ratio(sizes: list[int], inverse: bool) -> Tensor:
        s = torch.tensor(sizes, dtype=torch.float64)
        if inverse:  # n / n_i; an empty group (n_i = 0) has no hypergradient, so its scale is moot
            return torch.where(s > 0, n / s.clamp(min=1), torch.zeros_like(s)).to(device)
        return (s / max(n, 1)).to(device)

    def longs(values: list[int]) -> Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    return _Layout(
        n=n,
        module=tuple(module),
        unit_start=tuple(start),
        unit_view=tuple(view),
        blocks=tuple(blocks),
        module_order=tuple(sorted(range(m), key=lambda j: module[j])),
        module_params=longs([len(members) for members in modules.values()]),
        module_units=longs(module_units),
        unit_module=longs(unit_module),
        unit_scale=ratio(unit_sizes, True),
        module_scale=ratio(module_sizes, True),
        unit_weight=ratio(unit_sizes, False),
        module_weight=ratio(module_sizes, False),
    )


def _looks_like_weight_and_bias(params: list[Tensor]) -> int | None:
    """Index j where params[j] looks like the bias of params[j-1] (module order: weight, then bias)."""
    for j in range(1, len(params)):
        w, b = params[j - 1], params[j]
        if w.dim() >= 2 and b.dim() == 1 and b.shape[0] == w.shape[0]:
            return j
    return None


def _rate_dtype(device: torch.device) -> torch.dtype:
    # Level rates are few: keep them in float64 like HD's python-float α (MPS has no float64).
    return torch.float32 if device.type == "mps" else torch.float64


class CamHD(Optimizer):
    r"""Combined adaptive multi-level hypergradient descent over the base optimizer ``op``.

    .. math::
        \begin{aligned}
        &\textbf{input}: α_0 \text{ (lr)}, β \text{ (beta)}, δ \text{ (delta)}, γ_{ℓ,0} \text{ (gammas)},
            λ \text{ (weight decay)}, r \text{ (decay\_rate)}, α_∞ \text{ (alpha\_inf, default } α_0),
            \text{levels } ℓ ⊆ \{parameter, unit, layer, global\} \\
        &\textbf{initialize}: α_ℓ(i) ← α_0 \text{ for every group } i \text{ of every level};
            \; τ(t) = e^{-r t} \; (τ ≡ 1 \text{ without decay}) \\
        &\textbf{for } t = 1, 2, \ldots \textbf{ do} \\
        &\quad g_t ← ∇f(θ_{t-1}) + λ θ_{t-1} \\
        &\quad \textbf{if } t ≥ 2: \; D_p ← -g_{t,p} \, d_{t-1,p} \text{ for every element } p \\
        &\quad\quad G_ℓ ← τ(t) \textstyle\sum_p D_p \, α_ℓ(p)
            \qquad (= ∂f(θ_{t-1})/∂γ_ℓ, \text{ with the old } α) \\
        &\quad\quad α_ℓ(i) ← α_ℓ(i) - β \, γ_ℓ \, τ(t) \, \tfrac{n}{n_i} \textstyle\sum_{p ∈ i} D_p
            \qquad (n_i \text{ elements of the } n \text{ in the param group}) \\
        &\quad\quad γ_ℓ ← \max(γ_ℓ - δ \, G_ℓ, 0); \; γ ← γ / \textstyle\sum_ℓ γ_ℓ \\
        &\quad α^*_p ← \textstyle\sum_ℓ γ_ℓ \, α_ℓ(p); \; κ_p ← τ(t) α^*_p + (1 - τ(t)) α_∞ \\
        &\quad d_t ← \text{direction of op (sgd: } g_t; \text{ sgdn: } g_t + μ u_t; \text{ adam: }
            \hat m_t / (\sqrt{\hat v_t} + ε)) \\
        &\quad θ_t ← θ_{t-1} - κ ⊙ d_t \\
        &\textbf{return } θ_t
        \end{aligned}

    The hyper-updates follow the chain rule through the combination: θ_{t−1} = θ_{t−2} − κ⊙d_{t−1}
    with κ = τ·Σ_ℓ γ_ℓ α_ℓ + (1 − τ)·α_∞, so ∂f/∂α_ℓ(i) = τ·γ_ℓ·Σ_{p∈i} D_p and ∂f/∂γ_ℓ = τ·Σ_p D_p·α_ℓ(p).
    The hypergradients of step t are scaled by τ(t), as the paper (Section 2.4) and our spec write it.
    Strictly, D_t differentiates through κ_{t−1}, whose factor is τ(t−1); the two differ by e^{−r}
    (0.998 at the paper's r = 0.002), and we keep the published form so results compare with it.
    All α and γ are updated once per step, before any parameter moves, and the step then uses the
    updated values (Algorithm 1 combines the new α with the previous γ; with δ = 0 the two agree).
    β is scaled by n/n_i (the paper's β_p = n_p β, β_l = n_l β, β_g = β, read so that the global
    level alone is exactly HD).

    Levels (``levels``, leaf first; n, n_i count elements of one param group):

    * ``parameter``: one α per element (the only level with a per-element buffer, ``lr_parameter``).
    * ``unit``: one α per dim-0 slice of a module's highest-rank tensor (output unit or conv filter);
      the module's other tensors with that dim-0 size share those units (bias element i ↔ unit i),
      any other tensor (0-d, other dim 0) is one unit. The paper's filter level for CNNs.
    * ``layer``: one α per module (the name prefix before the last '.'; pass
      ``model.named_parameters()``). A plain tensor is a module by itself; when plain tensors look
      like a weight followed by its bias, ``unit`` and ``layer`` raise ValueError instead of
      silently splitting them.
    * ``global``: one α per param group; alone (γ = 1, δ = 0) it is ``<op>-hd`` step for step.

    γ are shared by all param groups. They are clamped at 0 before renormalising to sum 1 (a
    projection that keeps α* a convex combination); if the update is not finite or every γ clamps
    to 0, γ keep their previous values.

    ``param_groups[i]["lr"]`` holds the group's element-mean effective rate κ of the last step
    (exactly τ·Σ_ℓ γ_ℓ·mean(α_ℓ) + (1−τ)·α_∞). When a scheduler or the user changes it between
    steps, every level rate of that group and α_∞ are multiplied by new/old, so step decay works.
    ``gammas``, ``level_lrs()`` and ``curve_metrics()`` expose the state for logging; ``state_dict``
    holds everything needed to resume exactly.

    State: per parameter ``step``, ``prev_direction`` (d_{t−1}; for adam u with
    ``prev_direction_scale`` c, d = c·u, as in ``<op>-hd``; it is overwritten by g·d_{t−1} during
    the step, so the per-element products need no new memory), ``momentum_buffer`` or
    ``exp_avg``/``exp_avg_sq``, and ``lr_parameter`` for the parameter level. The optimizer-wide
    entry ``state["cam_hd"]`` holds ``levels``, ``gammas``, ``step`` and per param group ``lr``
    (the last value written to the group), ``unit``/``layer``/``global`` rate tensors (float64)
    and ``parameter_mean``.

    Args:
        params: tensors, param-group dicts or ``model.named_parameters()`` pairs.
        lr: α_0 (default 1e-3). beta: β (default 1e-3; the registry uses 1e-8 for adam).
        op: base optimizer "sgd", "sgdn" or "adam" (required).
        levels: ordered subset of ("parameter", "unit", "layer", "global") (default unit, global).
        gammas: initial γ, one per level, non-negative, summing to 1 (default (0.2, 0.8)).
        delta: δ, the learning rate of γ (0 freezes them; default 0.03).
        decay_rate: r of τ(t) = exp(−r t), or None for no decay (default None).
        alpha_inf: α_∞ of the decay (default None: the group's initial lr).
        momentum: μ of sgdn (0.9). betas, eps: Adam's (0.9, 0.999), 1e-8. weight_decay: coupled L2 λ (0).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        beta: float = 1e-3,
        *,
        op: str,
        levels: Sequence[str] = ("unit", "global"),
        gammas: Sequence[float] = (0.2, 0.8),
        delta: float = 0.03,
        decay_rate: float | None = None,
        alpha_inf: float | None = None,
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        if op not in OPS:
            raise ValueError(f"op must be one of {', '.join(OPS)}, got {op!r}")
        self.op = op
        self.levels = _check_levels(levels)
        self._initial_gammas = _check_gammas(gammas, self.levels)
        self.delta = checks.number("delta", delta, low=0)
        self._layouts: list[_Layout] = []
        defaults = dict(
            lr=lr, beta=beta, momentum=momentum, betas=betas, eps=eps, weight_decay=weight_decay,
            decay_rate=decay_rate, alpha_inf=alpha_inf,
        )
        super().__init__(params, defaults)

    # -- construction --------------------------------------------------------------------------
    def add_param_group(self, param_group: dict) -> None:
        for key in ("levels", "gammas", "delta"):
            if key in param_group:
                raise ValueError(f"{key} is shared by all param groups; pass it to the optimizer, not to a group")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group["lr"] = checks.number("lr", group["lr"], low=0)
        checks.number("beta", group["beta"], low=0)
        checks.number("momentum", group["momentum"], low=0, high=1, high_open=True)
        group["betas"] = checks.pair("betas", group["betas"])
        checks.number("eps", group["eps"], low=0)
        checks.number("weight_decay", group["weight_decay"], low=0)
        checks.number("decay_rate", group["decay_rate"], low=0, allow_none=True)
        if group["alpha_inf"] is None:
            group["alpha_inf"] = group["lr"]
        group["alpha_inf"] = checks.number("alpha_inf", group["alpha_inf"], low=0)

        params: list[Tensor] = group["params"]
        for p in params:
            if p.is_complex():
                raise ValueError("params: complex parameters are not supported")
        device = params[0].device
        if any(p.device != device for p in params):
            raise ValueError("params: all tensors of a param group must be on one device")
        names = group.get("param_names")
        if names is None and ("unit" in self.levels or "layer" in self.levels):
            j = _looks_like_weight_and_bias(params)
            if j is not None:
                raise ValueError(
                    f"params: levels 'unit' and 'layer' need module structure (tensor {j} looks like the bias of "
                    f"tensor {j - 1}); pass model.named_parameters()"
                )
        layout = _build_layout(params, names, device)
        self._layouts.append(layout)

        cam = self.state[_STATE_KEY]
        if not cam:
            cam.update(levels=list(self.levels), gammas=list(self._initial_gammas), step=0, groups=[])
        dtype = _rate_dtype(device)
        lr = group["lr"]
        rates: dict[str, Any] = {"lr": lr}
        if "parameter" in self.levels:
            rates["parameter_mean"] = torch.tensor(lr, dtype=dtype, device=device)
            for p in params:
                self.state[p]["lr_parameter"] = torch.full_like(p, lr, memory_format=torch.preserve_format)
        if "unit" in self.levels:
            rates["unit"] = torch.full((layout.num_units,), lr, dtype=dtype, device=device)
        if "layer" in self.levels:
            rates["layer"] = torch.full((layout.num_modules,), lr, dtype=dtype, device=device)
        if "global" in self.levels:
            rates["global"] = torch.tensor(lr, dtype=dtype, device=device)
        cam["groups"].append(rates)

    @property
    def _cam(self) -> dict:
        return self.state[_STATE_KEY]

    # -- public read-outs ----------------------------------------------------------------------
    @property
    def gammas(self) -> tuple[float, ...]:
        """Current combination weights γ, in ``levels`` order."""
        return tuple(self._cam["gammas"])

    def level_lrs(self) -> dict[str, float]:
        """Level -> its rate averaged over all elements (all param groups), for logging.

        A pending change of ``param_groups[i]["lr"]`` is applied first, so the values match it.
        """
        self._apply_lr_changes()
        sizes = [lay.n for lay in self._layouts]
        total = max(sum(sizes), 1)
        flat = _read([self._level_means(i) for i in range(len(self.param_groups))])
        L = len(self.levels)
        means = [flat[i * L:(i + 1) * L] for i in range(len(self.param_groups))]
        return {
            level: sum(n * m[k] for n, m in zip(sizes, means)) / total for k, level in enumerate(self.levels)
        }

    def curve_metrics(self) -> dict[str, float]:
        """``lr`` (element-mean effective rate), ``lr_<level>`` and ``gamma_<level>`` for each level."""
        levels = self.level_lrs()
        sizes = [lay.n for lay in self._layouts]
        lr = sum(n * g["lr"] for n, g in zip(sizes, self.param_groups)) / max(sum(sizes), 1)
        out = {"lr": lr}
        out.update({f"lr_{level}": value for level, value in levels.items()})
        out.update({f"gamma_{level}": g for level, g in zip(self.levels, self.gammas)})
        return out

    # -- state -----------------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict) -> None:
        cam = state_dict["state"].get(_STATE_KEY)
        if not cam or list(cam["levels"]) != list(self.levels) or len(cam["groups"]) != len(self.param_groups):
            saved = list(cam["levels"]) if cam else None
            raise ValueError(f"state_dict: not a CAM-HD state with levels {list(self.levels)} (saved levels: {saved})")
        super().load_state_dict(state_dict)
        # Own the loaded rates (they are updated in place) and put them on each group's device.
        loaded = self.state[_STATE_KEY]
        groups = []
        for rates, group in zip(loaded["groups"], self.param_groups):
            device = group["params"][0].device
            dtype = _rate_dtype(device)
            groups.append({
                k: v.detach().to(device=device, dtype=dtype, copy=True) if isinstance(v, Tensor) else v
                for k, v in rates.items()
            })
        self.state[_STATE_KEY] = {
            "levels": list(loaded["levels"]), "gammas": [float(g) for g in loaded["gammas"]],
            "step": int(loaded["step"]), "groups": groups,
        }

    def _apply_lr_changes(self) -> None:
        """Scale a group's level rates and α_∞ by new/old when its ``lr`` was changed from outside."""
        for group, rates in zip(self.param_groups, self._cam["groups"]):
            new, old = group["lr"], rates["lr"]
            if new == old or (new != new and old != old):  # unchanged (NaN after a divergence included)
                continue
            new = group["lr"] = checks.number("lr", new)
            tensors = [rates[k] for k in ("parameter_mean", "unit", "layer", "global") if k in rates]
            per_element = [self.state[p]["lr_parameter"] for p in group["params"]] if "parameter" in self.levels else []
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

    # -- step --------------------------------------------------------------------------------
    @staticmethod
    def _tau(group: dict, t: int) -> float:
        r = group["decay_rate"]
        return 1.0 if r is None else math.exp(-r * t)

    def _gather(self, group: dict) -> tuple[list[int], list[Tensor], list[Tensor], list[dict]]:
        idx, params, grads, states = [], [], [], []
        for j, p in enumerate(group["params"]):
            state = self.state[p]
            if p.grad is None:
                # θ did not move this step, so it adds nothing to the next hypergradient.
                state.pop("prev_direction", None)
                state.pop("prev_direction_scale", None)
                continue
            if p.grad.is_sparse:
                raise RuntimeError("CAM-HD does not support sparse gradients")
            F.init_base_state(state, p, self.op)
            idx.append(j)
            params.append(p)
            grads.append(p.grad)
            states.append(state)
        return idx, params, grads, states

    def _level_sums(
        self, lay: _Layout, idx: list[int], gs: list[Tensor], ds: list[Tensor], cs: list[float],
        prods: list[Tensor] | None, dtype: torch.dtype,
    ) -> dict[str, Tensor]:
        """Σ_{p∈i} D_p for every group i of the unit, layer and global levels (D_p = −c·g_p·u_p).

        `prods` holds g·u per element (required for the unit level), else dot products are used.
        """
        uniform = all(c == cs[0] for c in cs)
        sums: dict[str, Tensor] = {}
        device = gs[0].device
        if "unit" in self.levels:
            parts: dict[int, Tensor] = {}
            for k, j in enumerate(idx):
                view = lay.unit_view[j]
                if view is None:
                    x = prods[k].sum().reshape(1)
                else:  # a 1-d tensor (bias, norm scale) already is its per-unit sum
                    x = prods[k] if len(view) == 1 else prods[k].reshape(view[0], -1).sum(1)
                parts[j] = x if uniform else x * cs[k]
            pieces = []
            for shared, units, singles in lay.blocks:  # units in layout order: shared block, then singles
                if shared:
                    got = [parts[j] for j in shared if j in parts]
                    block = got[0] if got else torch.zeros(units, dtype=prods[0].dtype, device=device)
                    for x in got[1:]:
                        block = block + x
                    pieces.append(block)
                for j in singles:
                    pieces.append(parts[j] if j in parts else torch.zeros(1, dtype=prods[0].dtype, device=device))
            unit = torch.cat(pieces).to(dtype) * (-cs[0] if uniform else -1.0)
            sums["unit"] = unit
            if "layer" in self.levels:
                sums["layer"] = torch.segment_reduce(unit, "sum", lengths=lay.module_units)
            sums["global"] = unit.sum()
            return sums
        if prods is not None:
            totals = [x.sum() for x in prods]
        else:
            totals = [torch.dot(g.reshape(-1), d.reshape(-1)) for g, d in zip(gs, ds)]
        if not uniform:
            totals = [x * c for x, c in zip(totals, cs)]
        by_param = dict(zip(idx, totals))
        zero = torch.zeros((), dtype=totals[0].dtype, device=device)
        ordered = torch.stack([by_param.get(j, zero) for j in lay.module_order]).to(dtype)
        ordered = ordered * (-cs[0] if uniform else -1.0)
        if "layer" in self.levels:
            sums["layer"] = torch.segment_reduce(ordered, "sum", lengths=lay.module_params)
        sums["global"] = ordered.sum()
        return sums

    def _level_means(self, i: int) -> Tensor:
        """Element-weighted mean of every level's rates in group i (float64 vector, levels order)."""
        lay, rates = self._layouts[i], self._cam["groups"][i]
        means = []
        for level in self.levels:
            if level == "parameter":
                means.append(rates["parameter_mean"])
            elif level == "unit":
                means.append(torch.dot(lay.unit_weight.to(rates["unit"].dtype), rates["unit"]))
            elif level == "layer":
                means.append(torch.dot(lay.module_weight.to(rates["layer"].dtype), rates["layer"]))
            else:
                means.append(rates["global"])
        return torch.stack(means)

    def _hyper_update(
        self, i: int, group: dict, t: int, idx: list[int], params: list[Tensor], g: list[Tensor], states: list[dict],
    ) -> Tensor | None:
        """Update group i's level rates in place; return its ∂f/∂γ_ℓ contributions (or None)."""
        pairs = [k for k, s in enumerate(states) if "prev_direction" in s]
        if t < 2 or not pairs or (group["beta"] == 0 and self.delta == 0):
            return None
        lay, rates = self._layouts[i], self._cam["groups"][i]
        gammas = self._cam["gammas"]
        sel = [idx[k] for k in pairs]
        gs = [g[k] for k in pairs]
        ds = [states[k]["prev_direction"] for k in pairs]
        cs = [float(states[k].get("prev_direction_scale", 1.0)) for k in pairs]
        has_param = "parameter" in self.levels
        alphas = [states[k]["lr_parameter"] for k in pairs] if has_param else []
        # Per-unit and per-element sums need g·u per element. d_{t−1} is not needed after this step's
        # hypergradient (the new direction replaces it), so the product overwrites it: no allocation.
        # Layer and global sums alone are plain dot products.
        prods = None
        if has_param or "unit" in self.levels:
            prods = ds
            torch._foreach_mul_(prods, gs)
        dtype = _rate_dtype(params[0].device)
        sums = self._level_sums(lay, sel, gs, ds, cs, prods, dtype)
        tau = self._tau(group, t)  # τ(t), as the paper (§2.4) and the spec write it
        coef = group["beta"] * tau

        grad_gamma = None
        if self.delta != 0:
            parts = []
            for level in self.levels:
                if level == "parameter":  # Σ_p D_p α_p = −Σ c·(g·u)·α_p
                    uniform = all(c == cs[0] for c in cs)
                    dot = F.dot(prods, alphas) * cs[0] if uniform else F.dot(prods, alphas, cs)
                    parts.append(-dot.to(dtype))
                elif level == "global":
                    parts.append(rates["global"] * sums["global"])
                else:
                    parts.append(torch.dot(rates[level], sums[level]))
            grad_gamma = torch.stack(parts) * tau

        for level, gamma in zip(self.levels, gammas):
            if gamma == 0 or coef == 0:
                continue
            step = coef * gamma
            if level == "parameter":
                # α_p ← α_p − β γ τ n D_p = α_p + β γ τ n c (g·u)
                scale = step * lay.n
                if all(c == cs[0] for c in cs):
                    torch._foreach_add_(alphas, prods, alpha=scale * cs[0])
                else:
                    for a, x, c in zip(alphas, prods, cs):
                        a.add_(x, alpha=scale * c)
                rates["parameter_mean"].sub_(sums["global"], alpha=step)
            elif level == "unit":
                rates["unit"].sub_(sums["unit"] * lay.unit_scale, alpha=step)
            elif level == "layer":
                rates["layer"].sub_(sums["layer"] * lay.module_scale, alpha=step)
            else:
                rates["global"].sub_(sums["global"], alpha=step)
        return grad_gamma

    def _update_gammas(self, grad: list[float]) -> None:
        old = self._cam["gammas"]
        new = [gamma - self.delta * gr for gamma, gr in zip(old, grad)]
        if not all(math.isfinite(x) for x in new):
            return
        new = [max(x, 0.0) for x in new]
        total = sum(new)
        if total > 0 and math.isfinite(total):
            self._cam["gammas"] = [x / total for x in new]

    def _directions(
        self, group: dict, params: list[Tensor], grads: list[Tensor], g: list[Tensor], states: list[dict]
    ) -> tuple[list[Tensor], list[float]]:
        """Base direction d_t = c·u (c = 1 except for adam), stored as the next step's d_{t−1}."""
        for state in states:
            state["step"] += 1
        if self.op == "sgd":
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
        if self.op == "sgdn":
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

    def _move(
        self, i: int, group: dict, t: int, idx: list[int], params: list[Tensor], u: list[Tensor], c: list[float],
        states: list[dict],
    ) -> None:
        """θ ← θ − κ ⊙ d with κ = τ(t)·Σ_ℓ γ_ℓ α_ℓ + (1 − τ(t))·α_∞ and d = c·u."""
        lay, rates = self._layouts[i], self._cam["groups"][i]
        tau = self._tau(group, t)
        weights = dict(zip(self.levels, self._cam["gammas"]))
        coarse = None  # Σ of the non-parameter levels at the finest resolution present
        for level in ("unit", "layer", "global"):
            if level not in weights:
                continue
            value = rates[level] * weights[level]
            if coarse is None:
                coarse = value
            elif level == "layer":  # coarse is per unit
                coarse = coarse + value.index_select(0, lay.unit_module)
            else:
                coarse = coarse + value
        if coarse is None:
            coarse = torch.zeros((), dtype=_rate_dtype(params[0].device), device=params[0].device)
        kappa = coarse * tau + (1 - tau) * group["alpha_inf"] if tau != 1 else coarse
        if "parameter" in weights and weights["parameter"] != 0:
            alphas = [s["lr_parameter"] for s in states]
            torch._foreach_addcmul_(params, alphas, u, [-tau * weights["parameter"] * ci for ci in c])
        cast: dict[torch.dtype, Tensor] = {}
        per_unit = "unit" in weights
        per_module = not per_unit and "layer" in weights
        rates_per_param = []  # κ of each param, as a view that broadcasts over it
        for p, j in zip(params, idx):
            k = cast.get(p.dtype)
            if k is None:
                k = cast[p.dtype] = kappa.to(p.dtype)
            if per_unit:
                view, start = lay.unit_view[j], lay.unit_start[j]
                rates_per_param.append(k[start] if view is None else k[start:start + view[0]].view(view))
            else:
                rates_per_param.append(k[lay.module[j]] if per_module else k)
        torch._foreach_addcmul_(params, rates_per_param, u, [-ci for ci in c])

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one step; `closure` (optional) re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._apply_lr_changes()
        cam = self._cam
        t = cam["step"] + 1

        # 1. Hypergradients and level rates of every group, before any parameter moves.
        work, readouts, grad_gammas = [], [], []
        for i, group in enumerate(self.param_groups):
            idx, params, grads, states = self._gather(group)
            g = F.coupled_l2(grads, params, group["weight_decay"]) if params else []
            grad_gamma = self._hyper_update(i, group, t, idx, params, g, states) if params else None
            if grad_gamma is not None:
                grad_gammas.append(grad_gamma)
            readouts.append(self._level_means(i))
            work.append((idx, params, grads, g, states))

        # 2. One host sync: level means of every group and ∂f/∂γ; then γ and the groups' lr.
        L = len(self.levels)
        values = _read([*readouts, *grad_gammas])
        if grad_gammas:
            first = len(readouts) * L  # the ∂f/∂γ of each group follow the level means
            self._update_gammas([sum(values[first + k * L + level] for k in range(len(grad_gammas))) for level in range(L)])
        gammas = cam["gammas"]
        for i, group in enumerate(self.param_groups):
            tau = self._tau(group, t)
            mean = sum(gamma * m for gamma, m in zip(gammas, values[i * L:(i + 1) * L]))
            lr = tau * mean + (1 - tau) * group["alpha_inf"] if tau != 1 else mean
            group["lr"] = cam["groups"][i]["lr"] = lr

        # 3. Directions and the parameter update with the new rates.
        for i, (group, (idx, params, grads, g, states)) in enumerate(zip(self.param_groups, work)):
            if params:
                u, c = self._directions(group, params, grads, g, states)
                self._move(i, group, t, idx, params, u, c, states)
        cam["step"] = t
        return loss


def _read(values: list[Tensor]) -> list[float]:
    """Concatenate small tensors and read them with one host sync (one per device if they differ)."""
    if not values:
        return []
    if len({v.device for v in values}) > 1:
        values = [v.cpu() for v in values]
    return torch.cat([v.reshape(-1).to(torch.float64) for v in values]).tolist()


# -- registry -------------------------------------------------------------------------------
# descriptions, papers and defaults of the names below: sensitivity/catalog.py


def _factory(op: str):
    def build(params, **hp):
        return CamHD(params, op=op, **hp)

    build.__name__ = f"{op}_cam_hd"
    return build


for _op in OPS:
    register(f"{_op}-cam-hd", _factory(_op))
