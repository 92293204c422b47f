"""Name -> optimizer registry behind :func:`create` and :func:`available`.

Each module that defines optimizers registers them at import time with :func:`register`;
``sensitivity/optim/__init__.py`` imports those modules, so ``available()`` is complete once the
package is imported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from sensitivity import catalog

__all__ = ["OptimizerInfo", "register", "available", "create", "create_members", "normalize_params"]


@dataclass(frozen=True)
class OptimizerInfo(catalog.OptimizerSpec):
    """A catalog entry (name, description, paper, hyperparameters and defaults, flags) and its factory."""

    factory: Callable[..., torch.optim.Optimizer] = field(default=None, repr=False, compare=False)
    # members(params, hyperparameters) -> the optimizer over stacked (K, ...) tensors (sensitivity.optim.members)
    members: Callable[..., torch.optim.Optimizer] | None = field(default=None, repr=False, compare=False)


_REGISTRY: dict[str, OptimizerInfo] = {}


def register(name: str, factory: Callable[..., torch.optim.Optimizer],
             members: Callable[..., torch.optim.Optimizer] | None = None) -> OptimizerInfo:
    """Add `name`, described by its entry in `sensitivity.catalog` (the torch-free commands read the
    catalog, so it is the one place that says what an optimizer is); `factory(params, **hyperparameters)`
    must build it. `members(params, hyperparameters)`, where the optimizer has a member-axis form,
    builds it over stacked tensors, member k with ``hyperparameters[k]`` (every key filled in; see
    `sensitivity.optim.members`)."""
    if name in _REGISTRY:
        raise ValueError(f"optimizer name {name!r} is already registered")
    spec = catalog.OPTIMIZERS.get(name)
    if spec is None:
        raise ValueError(f"optimizer {name!r} has no entry in sensitivity/catalog.py; describe it there first")
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(catalog.OptimizerSpec)}
    info = OptimizerInfo(**fields, factory=factory, members=members)
    _REGISTRY[name] = info
    return info


def available() -> dict[str, OptimizerInfo]:
    """Every registered name (registration order) with its hyperparameters and defaults."""
    return dict(_REGISTRY)


def _is_named_pair(item: Any) -> bool:
    return isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], torch.Tensor)


def normalize_params(params: Any, *, keep_names: bool) -> list:
    """Materialise `params` (tensors, param-group dicts or (name, tensor) pairs) as a list.

    Names are kept only when `keep_names`; otherwise (name, tensor) pairs become plain tensors,
    both at top level and inside param-group dicts.
    """
    if isinstance(params, torch.Tensor):
        raise ValueError("params must be an iterable of tensors, param-group dicts or (name, tensor) pairs, got a Tensor")
    if isinstance(params, Mapping):
        params = [params]
    items = list(params)
    if not items:
        raise ValueError("params is empty: the optimizer got no parameters")

    def strip(seq: Iterable) -> list:
        seq = [seq] if isinstance(seq, torch.Tensor) else list(seq)
        if keep_names:
            return seq
        return [x[1] if _is_named_pair(x) else x for x in seq]

    if all(isinstance(x, Mapping) for x in items):
        groups = []
        for g in items:
            if "params" not in g:
                raise ValueError("every param-group dict needs a 'params' key")
            groups.append({**g, "params": strip(g["params"])})
        return groups
    if any(isinstance(x, Mapping) for x in items):
        raise ValueError("params mixes param-group dicts with tensors; pass one kind")
    for x in items:
        if not (isinstance(x, torch.Tensor) or _is_named_pair(x)):
            raise ValueError(f"params must hold tensors, param-group dicts or (name, tensor) pairs, got {type(x).__name__}")
    return strip(items)


def create(name: str, params: Any, **hyperparameters: Any) -> torch.optim.Optimizer:
    """Build optimizer `name` over `params` with `hyperparameters` (others keep their defaults).

    `params` may be an iterable of tensors, of param-group dicts, or ``model.named_parameters()``.
    """
    info = _REGISTRY.get(name)
    if info is None:
        raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(sorted(_REGISTRY))}")
    hyperparameters = catalog.check(name, hyperparameters)
    kwargs = {**info.hyperparameters, **hyperparameters}
    return info.factory(normalize_params(params, keep_names=info.wants_names), **kwargs)


def create_members(name: str, params: Any, hyperparameters: list[dict]) -> torch.optim.Optimizer:
    """Optimizer `name` over stacked tensors `params` (leading member axis K), member k with
    ``hyperparameters[k]`` (keyword arguments of :func:`create`; defaults filled in here).

    `params` may be tensors or (name, tensor) pairs such as a fused model's
    ``named_parameters()``; names are kept for an optimizer that wants them (CAM-HD's units and
    layers) and dropped for the others, as in :func:`create`. Each member's values pass the same
    checks as in :func:`create`. ValueError for a name without a member-axis form.
    """
    info = _REGISTRY.get(name)
    if info is None:
        raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(sorted(_REGISTRY))}")
    if info.members is None:
        raise ValueError(f"{name}: no member-axis form (fused arrays run it member by member)")
    if not hyperparameters:
        raise ValueError("create_members: no members")
    hps = [{**info.hyperparameters, **catalog.check(name, hp)} for hp in hyperparameters]
    params = normalize_params(params, keep_names=info.wants_names)
    if any(isinstance(p, Mapping) for p in params):
        raise ValueError("create_members: params must be the stacked tensors (or (name, tensor) pairs), "
                         "not param-group dicts: the member axis is one param group")
    return info.members(params, hps)
