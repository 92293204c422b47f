"""What the optimizers that keep Adam's two moments per parameter share (RAdam, AdaBound): the
checks of lr, betas, eps and weight decay, gathering with torch's per-parameter step count, loading,
and a step that runs the subclass's functional update once per step count, for a solo run and for
the members of a fused array alike (``sensitivity.optim.members``)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim import Optimizer

from sensitivity import checks

from . import functional as F
from .members import load_state, member_count, member_dtype, member_values

__all__ = ["AdamMoments"]


class AdamMoments(Optimizer):
    """Base class: a subclass gives :meth:`_update_` (its functional step) and may check more
    hyperparameters in :meth:`_check`.

    State: per parameter ``step`` (a python int: the steps in which the parameter had a gradient),
    ``exp_avg`` and ``exp_avg_sq``.
    """

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for hp in member_values(group):  # once, or once per member of a fused array
            checks.number("lr", hp["lr"], low=0)
            checks.pair("betas", hp["betas"])
            checks.number("eps", hp["eps"], low=0)
            checks.number("weight_decay", hp["weight_decay"], low=0)
            self._check(hp)
        if member_count(group) is None:
            group["lr"] = checks.number("lr", group["lr"], low=0)
        else:
            group["lr"] = group["lr"].to(member_dtype(group["lr"].device))
        for p in group["params"]:
            if p.is_complex():
                raise ValueError("complex parameters are not supported")

    def _check(self, hp: dict) -> None:
        """Check a member's (or the solo group's) own hyperparameters."""

    def load_state_dict(self, state_dict: dict) -> None:
        load_state(self, state_dict, super().load_state_dict)  # (a member group's values follow its tensors)

    def _init_group(self, group: dict):
        """Params with a grad, their grads and moments, and each one's step after the increment."""
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            state = self.state[p]
            if "step" not in state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        return params, grads, exp_avgs, exp_avg_sqs, steps

    def _update_(self, group: dict, params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                 exp_avg_sqs: list[Tensor], step: int) -> None:
        """One step of the tensors of `group` that are all at step count `step`, in place."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one step; `closure` (optional) re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps = self._init_group(group)
            for t, idx in F.by_step(steps).items():  # one entry unless some parameters skipped steps
                self._update_(group, *F.pick([params, grads, exp_avgs, exp_avg_sqs], idx), step=t)
        return loss
