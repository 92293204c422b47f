"""The members' optimizer: every member its own α, hyperparameters and state, one copy of every formula.

Every optimizer of `sensitivity optimizers` has a member-axis form (`sensitivity.optim.members`):
one optimizer whose single param group holds the fused (K, …) tensors themselves, with α and
every hyperparameter that differs between members as a (K,) tensor. Its functional core
broadcasts each member's values over that member's slice and stops every sum (HD's
hypergradient, CAM-HD's per-unit and per-layer sums, Prodigy's d, DoG's distance) at the member
axis, so one foreach step updates all members at once, with no host sync. (An optimizer
registered without a member-axis form never fuses: `plan.fusable`.)

Members are addressed by their position among the running members (`j`); :meth:`keep` drops
the others after the fused model dropped them.
"""

from __future__ import annotations

import torch

from sensitivity.optim import members as member_axis

__all__ = ["MemberOptimizers"]


def _floats(metrics: dict) -> list[dict[str, float]]:
    """{column: (K,) tensor} -> one {column: float} per member, with one host sync."""
    keys = list(metrics)
    values = torch.stack([metrics[k].to(torch.float64) for k in keys]).T.tolist()
    return [dict(zip(keys, row)) for row in values]


class MemberOptimizers:
    """The optimizer of an array's running members (member j owns slice j of the fused tensors)."""

    def __init__(self, name: str, hyperparameters: list[dict], model):
        from sensitivity import optim

        self.name, self.model = name, model
        # (name, tensor) pairs: CAM-HD groups units and layers by the solo names; the rest ignore them
        self.shared = optim.create_members(name, list(model.named_parameters()), hyperparameters)

    def lr_metrics(self) -> list[dict[str, float]]:
        """Each member's curve columns (lr and any optimizer-specific ones), as its solo run reports them."""
        hook = getattr(self.shared, "curve_metrics", None)
        return _floats(hook() if hook is not None else {"lr": self.shared.param_groups[0]["lr"]})

    def decay(self, j: int, factor: float) -> None:
        self.shared.param_groups[0]["lr"][j] *= factor

    def step(self, losses: torch.Tensor) -> None:
        """One step of every member; the closure returns the step's (K,) losses, already computed
        (L4 reads them; the others ignore them). A failure fails the array: its members then run alone."""
        self.shared.step(lambda: losses)

    def keep(self, index: list[int]) -> None:
        """Keep the members at `index`, after the fused model kept them (its tensors are new)."""
        member_axis.keep(self.shared, index, [p for _, p in self.model.named_parameters()])

    def member_state(self, j: int) -> dict:
        """Member j's optimizer state: a 1-member slice of the member axis."""
        return member_axis.select(self.shared.state_dict(), [j])

    def load(self, states: list[dict]) -> None:
        """Load the members' states (from :meth:`member_state`, in member order)."""
        self.shared.load_state_dict(member_axis.join(states))

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.shared]
