"""CAM-HD's levels and how a param group's elements split into units and layers.

Levels (leaf first; n, n_i count elements of one param group):

* ``parameter``: one α per element (the only level with a per-element buffer, ``lr_parameter``).
* ``unit``: one α per dim-0 slice of a module's highest-rank tensor (output unit or conv filter);
  the module's other tensors with that dim-0 size share those units (bias element i ↔ unit i),
  any other tensor (0-d, other dim 0) is one unit. The paper's filter level for CNNs.
* ``layer``: one α per module (the name prefix before the last '.'; pass
  ``model.named_parameters()``). A plain tensor is a module by itself; when plain tensors look
  like a weight followed by its bias, ``unit`` and ``layer`` raise ValueError instead of
  silently splitting them.
* ``global``: one α per param group.

The layout is built from the solo shapes and names of the parameters. A fused array's member
axis adds a leading dimension K to every tensor and to every level's rates, so each member has
the units and layers its solo run has, with its own rates; ``lead`` below is that K (None for a
solo group). See :mod:`sensitivity.optim.cam_hd`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sensitivity import checks

__all__ = ["LEVELS", "Layout", "check_levels", "check_gammas", "build_layout", "layout_of", "looks_like_weight_and_bias",
           "rate_dtype", "over", "full_rates", "segment_sums"]

LEVELS = ("parameter", "unit", "layer", "global")  # leaf first


def check_levels(levels: Any) -> tuple[str, ...]:
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


def check_gammas(gammas: Any, levels: tuple[str, ...]) -> list[float]:
    if isinstance(gammas, str) or not isinstance(gammas, Sequence) or len(gammas) != len(levels):
        raise ValueError(f"gammas must hold one weight per level ({len(levels)} for {list(levels)}), got {gammas!r}")
    for i, g in enumerate(gammas):
        checks.number(f"gammas[{i}]", g, low=0)
    total = float(sum(gammas))
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"gammas must sum to 1 (they are combination weights), got {list(gammas)} (sum {total:g})")
    return [float(g) / total for g in gammas]


@dataclass(frozen=True)
class Layout:
    """How one param group's elements split into units and layers (of one member, for a fused array).

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


def _module_keys(count: int, names: list[str] | None) -> list[Any]:
    # A module is the name prefix before the last '.'; a plain tensor is a module of its own.
    if names is None:
        return [("tensor", j) for j in range(count)]
    return [name.rpartition(".")[0] for name in names]


def build_layout(shapes: list[torch.Size], names: list[str] | None, device: torch.device) -> Layout:
    """The layout of tensors with the given (solo) shapes and names."""
    modules: dict[Any, list[int]] = {}
    for j, key in enumerate(_module_keys(len(shapes), names)):
        modules.setdefault(key, []).append(j)
    m = len(shapes)
    numel = [math.prod(s) for s in shapes]
    module, start, view = [0] * m, [0] * m, [None] * m
    blocks, unit_module, unit_sizes, module_sizes, module_units = [], [], [], [], []
    for mi, members in enumerate(modules.values()):
        # Units are dim-0 slices of the module's highest-rank tensor (its weight); every tensor of the
        # module with the same dim-0 size shares them (bias element i <-> unit i; BatchNorm weight and
        # bias element i <-> channel i). Anything else (0-d, other dim-0 size) is one unit by itself.
        ref = max(members, key=lambda j: len(shapes[j]))
        units = shapes[ref][0] if len(shapes[ref]) >= 1 else 0
        shared = tuple(j for j in members if units > 0 and len(shapes[j]) >= 1 and shapes[j][0] == units)
        singles = tuple(j for j in members if j not in shared)
        first = len(unit_sizes)
        if shared:
            unit_sizes += [sum(numel[j] for j in shared) // units] * units
        for j in shared:
            start[j], view[j] = first, (units,) + (1,) * (len(shapes[j]) - 1)
        for j in singles:
            start[j] = len(unit_sizes)
            unit_sizes.append(numel[j])
        for j in members:
            module[j] = mi
        blocks.append((shared, units if shared else 0, singles))
        unit_module += [mi] * (len(unit_sizes) - first)
        module_units.append(len(unit_sizes) - first)
        module_sizes.append(sum(numel[j] for j in members))
    n = sum(module_sizes)

    def ratio(sizes: list[int], inverse: bool) -> Tensor:
        s = torch.tensor(sizes, dtype=torch.float64)
        if inverse:  # n / n_i; an empty group (n_i = 0) has no hypergradient, so its scale is moot
            return torch.where(s > 0, n / s.clamp(min=1), torch.zeros_like(s)).to(device)
        return (s / max(n, 1)).to(device)

    def longs(values: list[int]) -> Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    return Layout(
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


def looks_like_weight_and_bias(shapes: list[torch.Size]) -> int | None:
    """Index j where tensor j looks like the bias of tensor j-1 (module order: weight, then bias)."""
    for j in range(1, len(shapes)):
        w, b = shapes[j - 1], shapes[j]
        if len(w) >= 2 and len(b) == 1 and b[0] == w[0]:
            return j
    return None


def layout_of(shapes: list[torch.Size], names: list[str] | None, levels: Sequence[str], device: torch.device) -> Layout:
    """The layout, or ValueError when unnamed tensors look like a weight and its bias but the levels
    need module structure (rather than silently splitting them)."""
    if names is None and ("unit" in levels or "layer" in levels):
        j = looks_like_weight_and_bias(shapes)
        if j is not None:
            raise ValueError(
                f"params: levels 'unit' and 'layer' need module structure (tensor {j} looks like the bias of "
                f"tensor {j - 1}); pass model.named_parameters()"
            )
    return build_layout(shapes, names, device)


def rate_dtype(device: torch.device) -> torch.dtype:
    # Level rates are few: keep them in float64 like HD's python-float α (MPS has no float64).
    return torch.float32 if device.type == "mps" else torch.float64


def over(x: Any, like: Tensor) -> Any:
    """A member's value broadcast over its slice of `like`: a (K,) tensor viewed as (K, 1, …, 1)
    when `like` has more dimensions; numbers and 0-d tensors (a solo group) as they are."""
    if isinstance(x, Tensor) and x.dim() == 1 and like.dim() > 1:
        return x.view(-1, *([1] * (like.dim() - 1)))
    return x


def full_rates(lr: float | Tensor, size: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Rates of shape `size` (after the member axis, if any) all at the group's lr: (*B, *size)."""
    if isinstance(lr, Tensor):  # one lr per member
        return lr.to(dtype).view(-1, *([1] * len(size))).expand(len(lr), *size).clone()
    return torch.full(size, lr, dtype=dtype, device=device)


def segment_sums(x: Tensor, lengths: Tensor) -> Tensor:
    """Sums of consecutive runs of `lengths` entries along the last axis of x (per member)."""
    if x.dim() == 1:
        return torch.segment_reduce(x, "sum", lengths=lengths)
    return torch.segment_reduce(x, "sum", lengths=lengths.expand(x.shape[0], -1), axis=1)
