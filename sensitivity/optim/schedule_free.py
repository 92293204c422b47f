"""Schedule-Free SGD and AdamW (Defazio et al. 2024): no lr schedule, averaging in its place; schedulefree 1.4.1.

The math lives in :mod:`sensitivity.optim.lr_free_functional`; this module gathers tensors and state.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sensitivity import checks

from . import lr_free_functional as F
from .lr_free import LRFreeOptimizer, count, register_rule

__all__ = ["SGDScheduleFree", "AdamWScheduleFree"]

_MATH = r"""
    .. math::
        \begin{aligned}
        &\textbf{input}: \text{lr}, β \text{ (%(beta)s)}, λ \text{ (weight decay)}, T_w \text{ (warmup\_steps)},
            r, p \text{ (weight\_lr\_power)}, θ_0 = y_0, f%(input)s \\
        &\textbf{initialize}: z ← y_0, \; \text{lr}_{max} ← -1, \; W ← 0%(init)s \\
        &\textbf{for } k = 0, 1, \ldots \textbf{ do} \\
        &\quad \text{lr}_k ← \text{lr} \cdot \min(1, (k+1)/T_w); \quad
            \text{lr}_{max} ← \max(\text{lr}_k, \text{lr}_{max}) \\
        &\quad w ← (k+1)^r \, \text{lr}_{max}^p; \quad W ← W + w; \quad c ← w/W \;(0 \text{ if } W = 0) \\
%(grad)s        &\quad y ← (1-c)\, y + c\, z + \text{lr}_k (β(1-c) - 1)\, g \\
        &\quad z ← z - \text{lr}_k\, g \\
        &\textbf{return } y \text{ (train mode) or } x = (y - (1-β) z)/β \text{ (eval mode)}
        \end{aligned}
"""

_MODES = """
    The parameters hold y, where gradients are taken, in train mode and the average x (which
    y = (1−β)·z + β·x interpolates) in eval mode: call ``.train()`` before training steps and
    ``.eval()`` before evaluating or saving the model, as with schedulefree. Both switch every
    group whose mode differs (p ← lerp(p, z, 1 − 1/β) to x, lerp(p, z, 1 − β) back to y) and set its
    ``train_mode``; a new optimizer starts in eval mode, and ``step()`` raises RuntimeError unless the
    first group is in train mode (schedulefree raises Exception there).

    ``curve_metrics()``: ``lr`` is the warmed-up lr_k of the latest step (before any step: the first
    step's). Group entries, as schedulefree keeps them: ``k`` (python int), ``lr_max``, ``weight_sum``,
    ``scheduled_lr`` (python numbers solo; (K,) tensors with a member axis, from the first step on), and
    ``train_mode``; per tensor the state holds ``z``%(state)s. ``foreach`` is not offered (always on).
"""


class _ScheduleFree(LRFreeOptimizer):
    """Schedule-Free's averaging, modes and curves; a subclass adds its gradient (``_gradients``) and β."""

    @staticmethod
    def _beta(group: dict):
        raise NotImplementedError  # pragma: no cover

    def _init_state(self, state: dict, p: Tensor) -> None:
        state["z"] = torch.clone(p, memory_format=torch.preserve_format).detach()

    def _weights(self, group: dict):
        return F.schedule_free_weights(group["k"], lr=group["lr"], warmup_steps=group["warmup_steps"], r=group["r"],
                                       weight_lr_power=group["weight_lr_power"], lr_max=group["lr_max"],
                                       weight_sum=group["weight_sum"])

    def _curve(self, group: dict) -> dict:
        return {"lr": group["scheduled_lr"] if group["k"] > 0 else self._weights(group)[0]}

    def _swap(self, to_train: bool) -> None:
        for group in self.param_groups:
            if group["train_mode"] != to_train:
                params = [p for p in group["params"] if "z" in self.state[p]]
                beta = self._beta(group)
                F.schedule_free_swap(params, [self.state[p]["z"] for p in params], 1 - beta if to_train else 1 - 1 / beta)
                group["train_mode"] = to_train

    @torch.no_grad()
    def eval(self) -> None:
        """Parameters to x, the average (for evaluating and saving)."""
        self._swap(False)

    @torch.no_grad()
    def train(self) -> None:
        """Parameters to y, where the gradients are taken (for training steps)."""
        self._swap(True)

    def _check_step(self) -> None:
        if not self.param_groups[0]["train_mode"]:
            raise RuntimeError(f"{type(self).__name__}: not in train mode when step() was called; call "
                               "optimizer.train() before training steps and optimizer.eval() before evaluating")

    def _step(self) -> None:
        for group in self.param_groups:
            lr, group["lr_max"], group["weight_sum"], ckp1 = self._weights(group)
            group["scheduled_lr"] = lr
            ys, grads, states = self._init_group(group)
            if ys:
                zs = [s["z"] for s in states]
                self._gradients(group, ys, grads, states)
                F.schedule_free_step(ys, zs, grads, lr=lr, beta=self._beta(group), ckp1=ckp1)
            group["k"] += 1

    def _gradients(self, group: dict, ys: list[Tensor], grads: list[Tensor], states: list[dict]) -> None:
        raise NotImplementedError  # pragma: no cover

    @staticmethod
    def _check_schedule(hp) -> None:
        checks.number("lr", hp["lr"], low=0)
        checks.number("weight_decay", hp["weight_decay"], low=0)
        count("warmup_steps", hp["warmup_steps"])
        checks.number("r", hp["r"], low=0)
        checks.number("weight_lr_power", hp["weight_lr_power"], low=0)


def _defaults(lr, weight_decay, warmup_steps, r, weight_lr_power, **rule) -> dict:
    return dict(lr=lr, **rule, weight_decay=weight_decay, warmup_steps=warmup_steps, r=r,
                weight_lr_power=weight_lr_power, k=0, train_mode=False, weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0)


class SGDScheduleFree(_ScheduleFree):
    __doc__ = (r"""Schedule-Free SGD: SGD steps on z, gradients at y, the parameters' average x returned.
""" + _MATH % {"beta": "momentum", "input": "", "init": "",
               "grad": r"        &\quad g ← ∇f(y) + λ y \\" + "\n"} + r"""
    Weight decay is coupled L2 at y, added to the gradient (written into ``p.grad``, as schedulefree
    does), so it also enters z.
""" + _MODES % {"state": ""} + r"""
    Args:
        params: tensors or param-group dicts.
        lr: the step size (default 1.0).
        momentum: β, the interpolation between z and x at which gradients are taken, in (0, 1) (default 0.9).
        weight_decay: λ (default 0).
        warmup_steps: T_w, steps of linear lr warm-up (default 0).
        r: power of the step count in the averaging weights (default 0).
        weight_lr_power: p, power of the largest lr so far in the averaging weights (default 2).
    """)

    def __init__(self, params, lr: float = 1.0, momentum: float = 0.9, weight_decay: float = 0.0, warmup_steps: int = 0,
                 r: float = 0.0, weight_lr_power: float = 2.0):
        super().__init__(params, _defaults(lr, weight_decay, warmup_steps, r, weight_lr_power, momentum=momentum))

    @staticmethod
    def check(hp) -> None:
        _ScheduleFree._check_schedule(hp)
        checks.number("momentum", hp["momentum"], low=0, high=1, low_open=True, high_open=True)

    @staticmethod
    def _beta(group: dict):
        return group["momentum"]

    def _gradients(self, group, ys, grads, states) -> None:
        decay = group["weight_decay"]
        if F.nonzero(decay):
            F.axpy_(grads, ys, decay)


class AdamWScheduleFree(_ScheduleFree):
    __doc__ = (r"""Schedule-Free AdamW: Schedule-Free averaging on the gradient divided by Adam's second moment.
""" + _MATH % {"beta": "betas[0]", "input": r", β_2, ε", "init": r", \; v ← 0",
               "grad": r"        &\quad v ← β_2 v + (1-β_2) ∇f(y)^2; \quad "
                       r"g ← ∇f(y) / (\sqrt{v/(1-β_2^{k+1})} + ε) + λ y \\" + "\n"} + r"""
    Weight decay is AdamW-style, λ·y added to the normalised gradient (both written into ``p.grad``,
    as schedulefree does), so it enters y and z scaled by lr_k but not the second moment.
""" + _MODES % {"state": " and ``exp_avg_sq``"} + r"""
    Args:
        params: tensors or param-group dicts.
        lr: the step size (default 0.0025).
        betas: β, the interpolation between z and x at which gradients are taken, in (0, 1), and β_2
            of the second moment, in [0, 1) (default (0.9, 0.999)).
        eps: ε (default 1e-8).
        weight_decay: λ (default 0).
        warmup_steps: T_w, steps of linear lr warm-up (default 0).
        r: power of the step count in the averaging weights (default 0).
        weight_lr_power: p, power of the largest lr so far in the averaging weights (default 2).
    """)

    def __init__(self, params, lr: float = 0.0025, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, warmup_steps: int = 0, r: float = 0.0, weight_lr_power: float = 2.0):
        super().__init__(params, _defaults(lr, weight_decay, warmup_steps, r, weight_lr_power, betas=tuple(betas),
                                           eps=eps))

    @staticmethod
    def check(hp) -> None:
        _ScheduleFree._check_schedule(hp)
        checks.pair("betas", hp["betas"])
        checks.number("betas[0]", hp["betas"][0], low=0, low_open=True, high=1, high_open=True)
        checks.number("eps", hp["eps"], low=0)

    @staticmethod
    def _beta(group: dict):
        return group["betas"][0]

    def _init_state(self, state: dict, p: Tensor) -> None:
        super()._init_state(state, p)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _gradients(self, group, ys, grads, states) -> None:
        F.schedule_free_adamw_grads_(grads, [s["exp_avg_sq"] for s in states], ys, k=group["k"],
                                     beta2=group["betas"][1], eps=group["eps"], weight_decay=group["weight_decay"],
                                     ws=self.workspace)


# descriptions, papers and defaults: sensitivity/catalog.py
register_rule("schedule-free-sgd", SGDScheduleFree)
register_rule("schedule-free-adamw", AdamWScheduleFree)
