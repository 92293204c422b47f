"""The members' optimizers: every member its own α, hyperparameters and state, one copy of every formula.

Three arrangements:

- **member axis** (sgd, sgdn, adam and the nine HD optimizers): one
  :class:`~sensitivity.optim.hd.HypergradientOptimizer` whose single param group holds the fused
  (K, …) tensors themselves, with α and every hyperparameter that differs between members as a
  (K,) tensor (float64, like a solo run's python floats). Its functional core
  (``sensitivity.optim.functional``) broadcasts each member's values over that member's slice
  and stops every sum (the hypergradient D) at the member axis, so one foreach step updates all
  members at once, with no host sync. The constant-step baselines run as its base optimizer
  without the lr-optimizer (``lop=None``): torch's SGD, Nesterov SGD and Adam formulas, which
  the HD family already holds (their solo runs keep torch's classes; the tests hold the two
  equal to 1e-8 in float64).
- **grouped** (RAdam): one optimizer whose param group j holds member j's parameter views and
  hyperparameters; torch's RAdam treats param groups independently, so one ``step`` serves
  every member.
- **separate**: one optimizer per member, over its views. Used for CAM-HD (its global level
  combines all the groups of one optimizer), L4 (its step size uses the loss and state shared
  by the groups) and AdaBound (pytorch-optimizer keeps each group's base lr in a list by group
  position, which dropping a diverged member would shift).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sensitivity import train
from sensitivity.optim.hd import member_dtype

__all__ = ["GROUPED_BASELINES", "MEMBER_AXIS_BASES", "arrangement", "member_axis_optimizer", "MemberOptimizers"]

GROUPED_BASELINES = ("radam",)
MEMBER_AXIS_BASES = ("sgd", "sgdn", "adam")  # and "<op>-hd[-<lop>]" for op, lop among them


def _op_lop(name: str) -> tuple[str, str | None] | None:
    """(op, lop) of a name the member axis serves, else None."""
    from sensitivity.optim.hd import NAMES

    return (name, None) if name in MEMBER_AXIS_BASES else NAMES.get(name)


def arrangement(name: str) -> str:
    """"axis", "grouped" or "separate" (see the module docstring)."""
    if _op_lop(name) is not None:
        return "axis"
    return "grouped" if name in GROUPED_BASELINES else "separate"


def _member_value(key: str, values: list, device: torch.device):
    """The group's value of `key`: shared by every member as it is, else one per member ((K,) float64)."""
    if key != "lr" and all(v == values[0] for v in values):
        return tuple(values[0]) if isinstance(values[0], list) else values[0]
    if isinstance(values[0], (list, tuple)):  # betas: a pair of (K,) tensors
        return tuple(_member_value(key, [v[i] for v in values], device) for i in range(len(values[0])))
    if key in ("lr_min", "lr_max"):  # None: no bound for that member
        values = [(-math.inf if key == "lr_min" else math.inf) if v is None else v for v in values]
    return torch.tensor(values, dtype=member_dtype(torch.device(device)), device=device)


def member_axis_optimizer(name: str, params: list[Tensor], hyperparameters: list[dict]):
    """Optimizer `name` over fused tensors `params` (leading member axis K), member k with
    ``hyperparameters[k]`` (keyword arguments of ``optim.create``; defaults filled in here)."""
    from sensitivity import catalog
    from sensitivity.optim import available
    from sensitivity.optim.hd import HypergradientOptimizer

    op, lop = _op_lop(name)
    defaults = available()[name].hyperparameters
    hps = [{**defaults, **catalog.check(name, hp)} for hp in hyperparameters]
    if lop is None:  # the solo run builds torch's optimizer: each member must pass torch's own checks
        from sensitivity.optim import create

        for hp in {repr(sorted(hp.items())): hp for hp in hps}.values():
            create(name, [torch.zeros(1)], **hp)
    device = params[0].device
    group = {"params": list(params), **{k: _member_value(k, [hp[k] for hp in hps], device) for k in hps[0]}}
    return HypergradientOptimizer([group], op=op, lop=lop)


def _slice(value, idx: Tensor):
    if isinstance(value, Tensor) and value.dim() > 0:
        return value.index_select(0, idx.to(value.device))
    if isinstance(value, tuple):
        return tuple(_slice(v, idx) for v in value)
    return value


def _group(cfg: dict, named: list) -> dict:
    hp = train._optimizer_hyperparameters(cfg)
    return {"params": named, **{k: tuple(v) if isinstance(v, list) else v for k, v in hp.items()}}


class MemberOptimizers:
    """The optimizers of an array's running members (`members[j]` owns slice j of the fused tensors)."""

    def __init__(self, name: str, members: list, model):
        from sensitivity import optim

        self.name = name
        self.mode = arrangement(name)
        self.grouped = self.mode == "grouped"
        self.shared = None
        if self.mode == "axis":
            params = [p for _, p in model.named_parameters()]
            hps = [train._optimizer_hyperparameters(m.cfg) for m in members]
            self.shared = member_axis_optimizer(name, params, hps)
            self._positions(members)
            return
        named = [model.member_parameters(j) for j in range(len(members))]
        for m, pairs in zip(members, named):
            m.params = [v for _, v in pairs]
        if self.grouped:
            self.shared = optim.create(name, [_group(m.cfg, pairs) for m, pairs in zip(members, named)])
            for m, group in zip(members, self.shared.param_groups):
                m.group = group
        else:
            for m, pairs in zip(members, named):
                m.opt = optim.create(name, pairs, **train._optimizer_hyperparameters(m.cfg))

    def _positions(self, members: list) -> None:
        self.position = {id(m): j for j, m in enumerate(members)}

    def lr_metrics(self, m) -> dict[str, float]:
        """The member's curve columns (lr and any optimizer-specific ones), as its solo run reports them."""
        if self.mode == "axis":
            return {"lr": float(self.shared.param_groups[0]["lr"][self.position[id(m)]])}
        if self.grouped:
            return {"lr": float(m.group["lr"])}
        return train._lr_metrics(m.opt)

    def decay(self, m, factor: float) -> None:
        if self.mode == "axis":
            self.shared.param_groups[0]["lr"][self.position[id(m)]] *= factor
            return
        for group in ([m.group] if self.grouped else m.opt.param_groups):
            group["lr"] *= factor

    def step(self, active: list, losses: torch.Tensor, on_error, skip: set[int]) -> set[int]:
        """One step of every running member but those in `skip`; returns the ones `on_error` halted."""
        if self.shared is not None:
            self.shared.step()  # a failure here fails the array: run_array then runs the members alone
            return set()
        halted = set()
        for j, m in enumerate(active):
            if j in skip:
                continue
            try:
                m.opt.step(lambda loss=losses[j]: loss)
            except Exception:
                if not on_error(j):
                    raise
                halted.add(j)
        return halted

    def drop(self, active: list, keep: list[int], model) -> None:
        """Keep the members at `keep` of `active`, after ``model.keep(keep)`` replaced the fused tensors."""
        if self.mode == "axis":
            opt = self.shared
            group = opt.param_groups[0]
            new = [p for _, p in model.named_parameters()]
            idx = torch.as_tensor(keep, dtype=torch.long, device=new[0].device)
            for key, value in list(group.items()):
                if key != "params":
                    group[key] = _slice(value, idx)
            for old, p in zip(group["params"], new):
                state = opt.state.pop(old, None)
                if state is not None:
                    opt.state[p] = {k: _slice(v, idx) for k, v in state.items()}
            group["params"] = new
            opt._last_grads.clear()  # the fused gradients are new tensors
            self._positions([active[j] for j in keep])
        elif self.grouped:
            gone = [m for j, m in enumerate(active) if j not in set(keep)]
            ids = {id(m.group) for m in gone}
            self.shared.param_groups = [g for g in self.shared.param_groups if id(g) not in ids]
            for m in gone:
                for view in m.params:
                    self.shared.state.pop(view, None)

    def state_dict(self, active: list) -> dict:
        if self.shared is not None:
            return {"shared": self.shared.state_dict()}
        return {"members": [m.opt.state_dict() for m in active]}

    def load_state_dict(self, state: dict, active: list) -> None:
        if self.shared is not None:
            self.shared.load_state_dict(state["shared"])
            if self.mode != "axis":  # (the member axis's values follow its tensors' device on load)
                for m, group in zip(active, self.shared.param_groups):
                    m.group = group
        else:
            for m, s in zip(active, state["members"]):
                m.opt.load_state_dict(s)

