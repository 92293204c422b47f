"""The members' optimizers: every member its own α, hyperparameters and state, one copy of every formula.

Two arrangements:

- **member axis** (every optimizer that registers a member-axis form, `sensitivity.optim.members`):
  one optimizer whose single param group holds the fused (K, …) tensors themselves, with α and
  every hyperparameter that differs between members as a (K,) tensor. Its functional core
  broadcasts each member's values over that member's slice and stops every sum at the member
  axis, so one foreach step updates all members at once, with no host sync.
- **separate**: one solo optimizer per member, over views of its slices of the fused tensors
  (for an optimizer without a member-axis form).

Members are addressed by their position among the running members (`j`); :meth:`keep` drops
the others after the fused model dropped them.
"""

from __future__ import annotations

import torch

from sensitivity.optim import members as member_axis

__all__ = ["arrangement", "MemberOptimizers"]


def arrangement(name: str) -> str:
    """"axis" or "separate" (see the module docstring)."""
    from sensitivity.optim import available

    return "axis" if available()[name].members is not None else "separate"


def _floats(metrics: dict) -> list[dict[str, float]]:
    """{column: (K,) tensor} -> one {column: float} per member, with one host sync."""
    keys = list(metrics)
    values = torch.stack([metrics[k].to(torch.float64) for k in keys]).T.tolist()
    return [dict(zip(keys, row)) for row in values]


class MemberOptimizers:
    """The optimizers of an array's running members (member j owns slice j of the fused tensors)."""

    def __init__(self, name: str, hyperparameters: list[dict], model):
        from sensitivity import optim

        self.name = name
        self.mode = arrangement(name)
        self.shared = None
        self.opts: list[torch.optim.Optimizer] = []
        self.views: list[list[torch.Tensor]] = []
        self.model = model
        if self.mode == "axis":
            self.shared = optim.create_members(name, [p for _, p in model.named_parameters()], hyperparameters)
            return
        named = [model.member_parameters(j) for j in range(len(hyperparameters))]
        self.views = [[v for _, v in pairs] for pairs in named]
        self.opts = [optim.create(name, pairs, **hp) for pairs, hp in zip(named, hyperparameters)]
        self.attach()

    def attach(self) -> None:
        """Separate optimizers: point each member's parameter and gradient views at its slices.

        The fused gradients are allocated once and zeroed before each backward, which accumulates
        into them in place, so the members' gradient views stay valid from step to step.
        """
        if self.mode == "axis":
            return
        fused = [p for _, p in self.model.named_parameters()]
        for p in fused:
            p.grad = torch.zeros_like(p)
        for j, views in enumerate(self.views):
            for view, p in zip(views, fused):
                view.data = p.data[j]
                view.grad = p.grad[j]

    @property
    def fresh_grads(self) -> bool:
        """Whether the step may take new gradient tensors (the member axis) rather than the views' ones."""
        return self.mode == "axis"

    def lr_metrics(self) -> list[dict[str, float]]:
        """Each member's curve columns (lr and any optimizer-specific ones), as its solo run reports them."""
        if self.mode == "axis":
            hook = getattr(self.shared, "curve_metrics", None)
            metrics = hook() if hook is not None else {"lr": self.shared.param_groups[0]["lr"]}
            return _floats(metrics)
        from sensitivity.train import curve_metrics

        return [curve_metrics(opt) for opt in self.opts]

    def decay(self, j: int, factor: float) -> None:
        if self.mode == "axis":
            self.shared.param_groups[0]["lr"][j] *= factor
            return
        for group in self.opts[j].param_groups:
            group["lr"] *= factor

    def step(self, losses: torch.Tensor, on_error, skip: set[int]) -> set[int]:
        """One step of every running member but those in `skip`; returns the ones `on_error` halted."""
        if self.shared is not None:
            # the closure returns the step's (K,) losses, already computed (L4 reads them; others ignore them)
            self.shared.step(lambda: losses)  # a failure here fails the array: its members then run alone
            return set()
        halted = set()
        for j, opt in enumerate(self.opts):
            if j in skip:
                continue
            try:
                opt.step(lambda loss=losses[j]: loss)
            except Exception:
                if not on_error(j):
                    raise
                halted.add(j)
        return halted

    def keep(self, index: list[int]) -> None:
        """Keep the members at `index`, after the fused model kept them (its tensors are new)."""
        if self.mode == "axis":
            member_axis.keep(self.shared, index, [p for _, p in self.model.named_parameters()])
            return
        self.opts = [self.opts[j] for j in index]
        self.views = [self.views[j] for j in index]
        self.attach()

    def member_state(self, j: int) -> dict:
        """Member j's optimizer state: a 1-member slice of the member axis, or its own optimizer's."""
        if self.mode == "axis":
            return member_axis.select(self.shared.state_dict(), [j])
        return self.opts[j].state_dict()

    def load(self, states: list[dict]) -> None:
        """Load the members' states (from :meth:`member_state`, in member order)."""
        if self.mode == "axis":
            self.shared.load_state_dict(member_axis.join(states))
            return
        for opt, state in zip(self.opts, states):
            opt.load_state_dict(state)

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The optimizer objects (one for the member axis, one per member otherwise)."""
        return [self.shared] if self.shared is not None else list(self.opts)
