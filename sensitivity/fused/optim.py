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

__all__ = ["GROUPED_BASELINES", "arrangement", "MemberOptimizers"]

GROUPED_BASELINES = ("radam",)


def arrangement(name: str) -> str:
    """"axis", "grouped" or "separate" (see the module docstring)."""
    from sensitivity.optim import available

    if available()[name].members is not None:
        return "axis"
    return "grouped" if name in GROUPED_BASELINES else "separate"


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
            self.shared = optim.create_members(name, params, hps)
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
            # the closure returns the step's (K,) losses, already computed (L4 reads them; others ignore them)
            self.shared.step(lambda: losses)  # a failure here fails the array: run_array then runs the members alone
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
            from sensitivity.optim import members

            members.keep(self.shared, keep, [p for _, p in model.named_parameters()])
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

