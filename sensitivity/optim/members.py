"""The member axis: one optimizer over K runs stacked on a leading axis, each run with its own numbers.

A fused array (``sensitivity.fused``) trains K trials as one model whose tensors are stacked
``(K, *solo_shape)``: member k's parameter is ``p[k]``. ``create_members(name, params,
hyperparameters)`` builds optimizer `name` over such tensors, member k with
``hyperparameters[k]``, and its ``step()`` moves every ``p[k]`` exactly as the solo optimizer
with member k's hyperparameters moves a tensor of the solo shape.

The contract an optimizer's members factory keeps (``registry.register(name, factory, members=...)``):

- **One param group** holds the stacked tensors. Its ``lr`` is a (K,) tensor (float64,
  :func:`member_dtype`); any other hyperparameter is a python value when every member has the
  same one, else a (K,) tensor (a tuple of them for a pair such as ``betas``). See
  :func:`member_group`.
- **No number crosses the member axis.** Elementwise work broadcasts member k's values over
  ``p[k]`` (``functional.per_tensor``); a sum over parameters (HD's hypergradient, Prodigy's d,
  DoG's distance) stops at the member axis (``functional.member_dot``) and is a (K,) tensor. A
  member whose numbers turn non-finite leaves the others bit for bit unchanged.
- **State** that differs per member is stored with the member axis first: tensors ``(K, ...)``
  and per-member scalars as (K,) tensors. Python numbers (a step count) are shared by all
  members. This holds in dicts and lists of state too, and for an optimizer-wide entry kept
  under a key that is not a parameter (CAM-HD's ``state["cam_hd"]``). So :func:`select` can
  slice any member set out of a state dict, and :func:`join` can stack 1-member state dicts
  back into one.
- ``param_groups[0]["lr"][k]`` is what member k's solo run reports as ``param_groups[0]["lr"]``,
  and multiplying it between steps (an lr decay) does what it does to the solo run.
- Optional hooks: ``curve_metrics()`` returning ``{column: (K,) tensor}`` (the solo optimizer
  returns floats); ``members_kept()``, called after :func:`keep` replaced the tensors (to drop
  caches keyed by tensor identity); ``train()``/``eval()`` as the solo optimizer has them.
- ``load_state_dict`` goes through :func:`load_state`, so per-member float64 state keeps its
  dtype and the group's values follow its tensors' device.
- Names: :func:`~sensitivity.optim.registry.create_members` takes (name, stacked tensor) pairs;
  an optimizer that wants names (CAM-HD) gets them as ``param_names``, named as the solo tensors
  are (a common prefix, such as a fused model's ``body.``, changes nothing).
- An optimizer that reads the loss (L4) gets the members' K losses from its closure.
- No host sync is needed per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["member_dtype", "member_count", "member_value", "member_group", "member_values", "keep", "select",
           "join", "lr_values", "load_state", "to_device"]

# Hyperparameters whose "no value" (None) means an unbounded side, as a number a tensor can hold.
_UNBOUNDED = {"lr_min": -math.inf, "lr_max": math.inf}


def member_dtype(device: torch.device) -> torch.dtype:
    """dtype of the members' α and per-member values: float64, like a solo run's python floats
    (float32 on MPS, which has no float64)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def member_count(group: dict) -> int | None:
    """K of a member-axis param group (its lr is a (K,) tensor), else None (a solo group)."""
    lr = group.get("lr")
    return len(lr) if isinstance(lr, Tensor) and lr.dim() == 1 else None


def member_value(key: str, values: Sequence[Any], device: torch.device) -> Any:
    """The group's value of `key` from the members' values: as it is when all agree, else (K,) tensors.

    `lr` is always a (K,) tensor (it marks the group as a member-axis group). A pair (``betas``)
    becomes a tuple of values or (K,) tensors. None in ``lr_min``/``lr_max`` is an unbounded side.
    Booleans and strings must agree between members (they change the algorithm, not a number).
    """
    values = list(values)
    first = values[0]
    if key != "lr" and all(_same(v, first) for v in values):
        return tuple(first) if isinstance(first, list) else first
    if isinstance(first, (list, tuple)):
        return tuple(member_value(key, [v[i] for v in values], device) for i in range(len(first)))
    if key in _UNBOUNDED:
        values = [_UNBOUNDED[key] if v is None else v for v in values]
    if any(isinstance(v, (bool, str)) or v is None for v in values):
        raise ValueError(f"{key}: members of one array must share it, got {values!r}")
    return torch.tensor([float(v) for v in values], dtype=member_dtype(device), device=device)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b or (a is None and b is None)


def member_group(params: Sequence[Tensor], hyperparameters: Sequence[dict]) -> dict:
    """One param group over the stacked `params` for members with `hyperparameters` (defaults filled)."""
    params = list(params)
    if not params:
        raise ValueError("params is empty: the optimizer got no parameters")
    k = len(hyperparameters)
    for p in params:
        if p.dim() == 0 or p.shape[0] != k:
            raise ValueError(f"member axis: every tensor needs a leading dimension of {k} (one per member), "
                             f"got shape {tuple(p.shape)}")
    keys = list(hyperparameters[0])
    if any(list(hp) != keys for hp in hyperparameters):
        raise ValueError("member axis: members must give the same hyperparameter names")
    device = params[0].device
    return {"params": params, **{key: member_value(key, [hp[key] for hp in hyperparameters], device)
                                 for key in keys}}


def member_values(group: dict) -> list[dict]:
    """A group's hyperparameters as python values, one dict per member (one dict for a solo group)."""
    k = member_count(group)
    if k is None:
        return [{key: v for key, v in group.items() if key != "params"}]

    def pick(value, j):
        if isinstance(value, Tensor) and value.dim() == 1:
            return value[j].item()
        if isinstance(value, tuple):
            return tuple(pick(v, j) for v in value)
        return value

    out = [{key: pick(v, j) for key, v in group.items() if key != "params"} for j in range(k)]
    for hp in out:
        for key, unbounded in _UNBOUNDED.items():
            if hp.get(key) == unbounded:
                hp[key] = None
    return out


def lr_values(opt: torch.optim.Optimizer) -> list[float]:
    """Each member's lr (its solo run's ``param_groups[0]["lr"]``), read with one host sync."""
    return opt.param_groups[0]["lr"].tolist()


def to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(to_device(v, device) for v in value)
    return value


def load_state(opt: torch.optim.Optimizer, state_dict: dict, load: Callable[[dict], None],
               own: Callable[[str], bool] = lambda key: False) -> None:
    """``load(state_dict)`` (the base class's ``load_state_dict``), then what a member-axis group needs.

    The state tensors under the keys `own` picks (the members' per-member numbers, float64 like a
    solo run's python floats) keep their saved dtype, which the base class would cast to the
    parameter's; every member group's values move to its tensors' device.
    """
    saved = {pid: {k: v for k, v in s.items() if isinstance(v, Tensor) and own(k)}
             for pid, s in state_dict["state"].items() if isinstance(s, dict)}
    load(state_dict)
    ids = [pid for g in state_dict["param_groups"] for pid in g["params"]]
    for pid, p in zip(ids, (p for g in opt.param_groups for p in g["params"])):
        for key, value in saved.get(pid, {}).items():
            opt.state[p][key] = value.to(device=p.device)
    for group in opt.param_groups:
        if member_count(group) is not None and group["params"]:
            device = group["params"][0].device
            for key, value in list(group.items()):
                if key != "params":
                    group[key] = to_device(value, device)


def _index(value: Any, idx: Tensor) -> Any:
    if isinstance(value, Tensor) and value.dim() > 0:
        return value.index_select(0, idx.to(value.device))
    if isinstance(value, tuple):
        return tuple(_index(v, idx) for v in value)
    if isinstance(value, dict):
        return {k: _index(v, idx) for k, v in value.items()}
    if isinstance(value, list):
        return [_index(v, idx) for v in value]
    return value


def keep(opt: torch.optim.Optimizer, index: Sequence[int], params: Sequence[Tensor]) -> None:
    """Keep the members at `index` (in that order): `params` are the new stacked tensors (already sliced).

    Every per-member value of the group and every per-member state tensor (optimizer-wide
    entries included) is sliced along the member axis; the optimizer's ``members_kept()`` hook (if any) drops what it keyed by the old
    tensors.
    """
    group = opt.param_groups[0]
    idx = torch.as_tensor(list(index), dtype=torch.long)
    for key, value in list(group.items()):
        if key != "params":
            group[key] = _index(value, idx)
    params = list(params)
    for old, new in zip(group["params"], params):
        state = opt.state.pop(old, None)
        if state is not None:
            opt.state[new] = {k: _index(v, idx) for k, v in state.items()}
    group["params"] = params
    for key in [key for key in opt.state if not isinstance(key, Tensor)]:  # optimizer-wide entries
        opt.state[key] = _index(opt.state[key], idx)
    hook = getattr(opt, "members_kept", None)
    if hook is not None:
        hook()


def select(state_dict: dict, index: Sequence[int]) -> dict:
    """The state dict of the members at `index` (a member-axis optimizer's ``state_dict()``)."""
    idx = torch.as_tensor(list(index), dtype=torch.long)
    groups = [{k: (v if k == "params" else _index(v, idx)) for k, v in g.items()} for g in state_dict["param_groups"]]
    state = {pid: {k: _index(v, idx) for k, v in s.items()} for pid, s in state_dict["state"].items()}
    return {"state": state, "param_groups": groups}


def _cat(values: list, what: str) -> Any:
    first = values[0]
    if isinstance(first, Tensor) and first.dim() > 0:
        return torch.cat([v.to(first.device) for v in values])
    if isinstance(first, tuple):
        return tuple(_cat([v[i] for v in values], what) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _cat([v[k] for v in values], f"{what}.{k}") for k in first}
    if isinstance(first, list) and all(isinstance(v, list) and len(v) == len(first) for v in values):
        return [_cat([v[i] for v in values], f"{what}[{i}]") for i in range(len(first))]
    if any(not _equal(v, first) for v in values[1:]):
        raise ValueError(f"join: {what} differs between the members ({values[0]!r} vs another); they cannot "
                         "share one optimizer step")
    return first


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape and bool(torch.equal(a.cpu(), b.cpu()))
    return _same(a, b)


def join(state_dicts: Sequence[dict]) -> dict:
    """Stack the state dicts of member sets (each from :func:`select`) into one, in order.

    Shared values (python numbers such as a step count) must be equal in all of them.
    """
    first = state_dicts[0]
    groups = []
    for j, g in enumerate(first["param_groups"]):
        groups.append({k: (v if k == "params" else _cat([sd["param_groups"][j][k] for sd in state_dicts],
                                                         f"param_groups[{j}].{k}"))
                       for k, v in g.items()})
    pids = list(first["state"])
    if any(list(sd["state"]) != pids for sd in state_dicts):
        raise ValueError("join: the members' optimizer states hold different parameters")
    state = {pid: {k: _cat([sd["state"][pid][k] for sd in state_dicts], f"state[{pid}].{k}")
                   for k in first["state"][pid]} for pid in pids}
    return {"state": state, "param_groups": groups}
