"""The members' optimizers: the solo optimizer classes, one independent state per member.

Two arrangements, both running the solo update code unchanged (one copy of every formula):

- **grouped**: one optimizer whose param group j holds member j's parameter views and
  hyperparameters. Used where the optimizer treats its param groups independently (each group
  has its own lr, hyperparameters and per-parameter state, and nothing in a step combines
  groups): torch's SGD, Nesterov SGD, Adam and RAdam, and the HD family (one α and one
  hypergradient per group). One ``step`` serves every member.
- **separate**: one optimizer per member. Used for CAM-HD (its global level combines all the
  groups of one optimizer), L4 (its step size uses the loss and state shared by the groups) and
  AdaBound (pytorch-optimizer keeps each group's base lr in a list by group position, which
  dropping a diverged member would shift).
"""

from __future__ import annotations

import torch

from sensitivity import train

__all__ = ["GROUPED_BASELINES", "groups_independent", "MemberOptimizers"]

GROUPED_BASELINES = ("sgd", "sgdn", "adam", "radam")


def groups_independent(name: str) -> bool:
    """Whether optimizer `name` updates each param group from that group's numbers only."""
    from sensitivity.optim import available

    info = available()[name]
    return name in GROUPED_BASELINES or (info.is_hd and "-cam-" not in name and not info.needs_closure)


def _group(cfg: dict, named: list) -> dict:
    hp = train._optimizer_hyperparameters(cfg)
    return {"params": named, **{k: tuple(v) if isinstance(v, list) else v for k, v in hp.items()}}


class MemberOptimizers:
    """The optimizers of an array's running members (`members[j]` owns slice j of the fused tensors)."""

    def __init__(self, name: str, members: list, model):
        from sensitivity import optim

        self.name = name
        self.grouped = groups_independent(name)
        named = [model.member_parameters(j) for j in range(len(members))]
        for m, pairs in zip(members, named):
            m.params = [v for _, v in pairs]
        if self.grouped:
            self.shared = optim.create(name, [_group(m.cfg, pairs) for m, pairs in zip(members, named)])
            for m, group in zip(members, self.shared.param_groups):
                m.group = group
        else:
            self.shared = None
            for m, pairs in zip(members, named):
                m.opt = optim.create(name, pairs, **train._optimizer_hyperparameters(m.cfg))

    def lr_metrics(self, m) -> dict[str, float]:
        """The member's curve columns (lr and any optimizer-specific ones), as its solo run reports them."""
        if self.grouped:
            return {"lr": float(m.group["lr"])}
        return train._lr_metrics(m.opt)

    def decay(self, m, factor: float) -> None:
        for group in ([m.group] if self.grouped else m.opt.param_groups):
            group["lr"] *= factor

    def step(self, active: list, losses: torch.Tensor, on_error, skip: set[int]) -> set[int]:
        """One step of every running member but those in `skip`; returns the ones `on_error` halted."""
        if self.grouped:
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

    def drop(self, gone: list) -> None:
        """Forget the members in `gone` (their parameters leave the array)."""
        if not self.grouped:
            return
        ids = {id(m.group) for m in gone}
        self.shared.param_groups = [g for g in self.shared.param_groups if id(g) not in ids]
        for m in gone:
            for view in m.params:
                self.shared.state.pop(view, None)

    def state_dict(self, active: list) -> dict:
        if self.grouped:
            return {"shared": self.shared.state_dict()}
        return {"members": [m.opt.state_dict() for m in active]}

    def load_state_dict(self, state: dict, active: list) -> None:
        if self.grouped:
            self.shared.load_state_dict(state["shared"])
            for m, group in zip(active, self.shared.param_groups):
                m.group = group
        else:
            for m, s in zip(active, state["members"]):
                m.opt.load_state_dict(s)
