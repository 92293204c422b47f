"""What the learning-rate-free optimizers share: their running numbers as tensors, checks, curves, registration.

Prodigy, D-Adaptation, Schedule-Free and DoG each keep a few running numbers (d and its sums, the
averaging weights, DoG's distance and gradient sum). :class:`LRFreeOptimizer` keeps them in the
param group, as the authors do, but as tensors on the parameters' device: 0-dim for a solo
optimizer, (K,) for a member-axis group (``sensitivity.optim.members``), so a step needs no host
sync and `members.select`/`join`/`keep` slice them with the group's other per-member values.
``param_groups[i]["lr"]`` stays the rule's multiplier (a python float solo, a (K,) tensor of the
members'), so an lr decay multiplies it as in the authors' code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from sensitivity import checks

from . import d_adapt_functional as D
from . import lr_free_functional as F
from .members import to_device
from .members import member_count, member_dtype, member_group, member_values
from .registry import register

__all__ = ["LRFreeOptimizer", "flag", "count", "register_rule"]


def flag(key: str, value: Any) -> bool:
    """`value` if it is a bool, else a one-line ValueError naming `key`."""
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be True or False, got {value!r}")
    return value


def count(key: str, value: Any) -> Any:
    """`value` if it is a whole number >= 0 (a member's count arrives as a float such as 10.0)."""
    if checks.is_number(value) and float(value).is_integer() and value >= 0:
        return value
    raise ValueError(f"{key} must be an integer >= 0, got {value!r}")


class LRFreeOptimizer(Optimizer):
    """Base of the learning-rate-free rules: group-level running numbers as tensors, per-member checks, curves.

    A subclass defines ``check(hp)`` (the ranges of one run's hyperparameters, as python values),
    ``_init_running(group)`` (adds the running numbers with :meth:`_number`), ``_init_state(state, p)``
    (a param's state on its first step) and ``_curve(group)`` (the curve columns of a group, as
    tensors or numbers).
    """

    # The authors' constructors refuse an lr <= 0 (Prodigy, D-Adaptation, DoG); a param group may still set 0.
    positive_lr = False

    def __init__(self, params, defaults: dict):
        if self.positive_lr:
            checks.number("lr", defaults["lr"], low=0, low_open=True)
        self.workspace = F.Workspace()  # memory for the temporaries of a step (kept on CPU; not state)
        super().__init__(params, defaults)

    @staticmethod
    def check(hp: Mapping[str, Any]) -> None:  # pragma: no cover - every rule overrides it
        raise NotImplementedError

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for hp in member_values(group):  # once, or once per member of a fused array
            self.check(hp)
        if member_count(group) is None:
            group["lr"] = float(group["lr"])
        else:
            group["lr"] = group["lr"].to(member_dtype(group["lr"].device))
        for p in group["params"]:
            if p.is_complex():
                raise ValueError("complex parameters are not supported")
        self._init_running(group)

    def _init_running(self, group: dict) -> None:
        pass

    @torch.no_grad()
    def step(self, closure=None):
        """One step; `closure` (optional) re-evaluates the model and returns the loss."""
        self._check_step()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._step()
        return loss

    def _check_step(self) -> None:
        """Raise before the closure runs when the optimizer cannot step (Schedule-Free in eval mode)."""

    def _step(self) -> None:  # pragma: no cover - every rule overrides it
        raise NotImplementedError

    def _init_state(self, state: dict, p: Tensor) -> None:
        pass

    def _init_group(self, group: dict) -> tuple[list[Tensor], list[Tensor], list[dict]]:
        """The group's params that have a gradient, their gradients and states; a state is created on the
        param's first step (``_init_state``)."""
        params, grads, states = [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            state = self.state[p]
            if not state:
                self._init_state(state, p)
            params.append(p)
            grads.append(p.grad)
            states.append(state)
        return params, grads, states

    @staticmethod
    def _number(group: dict, value: float | Tensor) -> Tensor:
        """A running number of `group` starting at `value` (a number, or the members' (K,) values): 0-dim
        solo, (K,) for a member-axis group."""
        device = group["params"][0].device
        k = member_count(group)
        dtype = member_dtype(device)
        if isinstance(value, Tensor):
            return value.to(device=device, dtype=dtype).clone()
        return torch.full(() if k is None else (k,), float(value), dtype=dtype, device=device)

    @staticmethod
    def _members(group: dict) -> bool:
        return member_count(group) is not None

    def _shared_lr(self):
        """(lr, live) of a rule whose groups share one lr (Prodigy, D-Adaptation): the members' (K,) lr and
        lr > 0 per member; solo, the groups' largest lr and whether it is > 0. Solo groups may differ only by
        an lr of 0 (RuntimeError otherwise, as in the authors' code)."""
        first = self.param_groups[0]
        if self._members(first):
            return first["lr"], first["lr"] > 0
        lr = max(g["lr"] for g in self.param_groups)
        if any(g["lr"] not in (lr, 0.0) for g in self.param_groups):
            raise RuntimeError(f"{type(self).__name__}: param groups may only differ in lr by setting it to 0")
        return lr, lr > 0

    def _step_size(self, group: dict, lr) -> Tensor:
        """η = d·lr·b of the coming step (Prodigy, D-Adapt Adam)."""
        return D.d_step_size(group["d"], lr, group["k"], *group["betas"], group["use_bias_correction"])

    def _adam_start(self):
        """(first group, member axis?, live, η) of a Prodigy or D-Adapt Adam step; None when no group's lr
        is > 0, where the authors return before the step (nothing adds to d's sums)."""
        first = self.param_groups[0]
        lr, live = self._shared_lr()
        if live is False:
            return None
        return first, self._members(first), live, self._step_size(first, lr)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # the running numbers (and a fused group's values): to the group's device
            device = group["params"][0].device
            for key, value in list(group.items()):
                if key != "params":
                    group[key] = to_device(value, device)

    def _curve(self, group: dict) -> dict[str, Any]:  # pragma: no cover - every rule overrides it
        raise NotImplementedError

    def curve_metrics(self) -> dict[str, Any]:
        """The curve columns (see the class docstring): floats solo (read with one host sync), (K,) tensors
        for a member-axis group. Several param groups report their mean."""
        rows = [self._curve(g) for g in self.param_groups]
        out = {key: sum(row[key] for row in rows) / len(rows) for key in rows[0]}
        first = self.param_groups[0]
        device = first["params"][0].device
        shape = (member_count(first),) if self._members(first) else ()
        values = [torch.as_tensor(v, dtype=member_dtype(device), device=device).expand(shape) for v in out.values()]
        if shape:
            return {key: v.clone() for key, v in zip(out, values)}
        return dict(zip(out, torch.stack(values).tolist()))


def register_rule(name: str, cls: type[LRFreeOptimizer],
                  prepare: Callable[[list[dict]], list[dict]] | None = None) -> None:
    """Register `name` as ``cls(params, **hyperparameters)`` with its member-axis form: one group
    over the stacked tensors, member k with ``hyperparameters[k]`` (after `prepare`, which may resolve a
    value such as Prodigy's ``beta3=None`` that members do not share)."""

    def solo(params, **hp):
        return cls(params, **hp)

    def members(params: Sequence[Tensor], hyperparameters: list[dict]):
        hps = prepare(hyperparameters) if prepare is not None else hyperparameters
        if cls.positive_lr:  # each member as its solo run's constructor checks it
            for hp in hps:
                checks.number("lr", hp["lr"], low=0, low_open=True)
        return cls([member_group(params, hps)])

    solo.__name__ = name.replace("-", "_")
    members.__name__ = f"{solo.__name__}_members"
    register(name, solo, members=members)
