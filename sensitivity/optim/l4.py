"""L4: loss-based step-size adaptation (Rolinek & Martius 2018) over Adam or momentum directions."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim import Optimizer

from sensitivity import checks

from . import functional as F
from .members import load_state, member_count, member_dtype, member_group, member_values
from .registry import register

__all__ = ["L4"]

DIRECTIONS = ("adam", "momentum")


class L4(Optimizer):
    r"""L4 step-size adaptation: each step aims at a fixed fraction of the way to a loss target.

    .. math::
        \begin{aligned}
        &\textbf{input}: α \text{ (lr, fraction)}, γ, γ_0, τ, λ \text{ (weight decay)},
            β_1, β_2, ε \text{ (adam direction)}, f \text{ (closure)} \\
        &\textbf{initialize}: m_0 ← 0, \; v_0 ← 0 \\
        &\textbf{for } t = 1, 2, \ldots \textbf{ do} \\
        &\quad L_t ← f(θ_{t-1}), \quad g_t ← ∇f(θ_{t-1}) + λ θ_{t-1} \\
        &\quad L_{min} ← γ_0 L_1 \text{ if } t = 1 \text{ else } \min(L_{min}, L_t) \\
        &\quad m_t ← β_1 m_{t-1} + (1-β_1) g_t, \quad \hat g_t ← m_t/(1-β_1^t)
            \qquad \text{(gradient estimate)} \\
        &\quad \text{adam}: v_t ← β_2 v_{t-1} + (1-β_2) g_t^2, \;
            d_t ← \hat g_t / (\sqrt{v_t/(1-β_2^t)} + ε) \qquad \text{momentum}: d_t ← \hat g_t \\
        &\quad η_t ← α \, \frac{L_t - γ L_{min}}{\hat g_t \cdot d_t + 10^{-12}} \\
        &\quad θ_t ← θ_{t-1} - η_t d_t \\
        &\quad L_{min} ← (1 + 1/τ) L_{min} \\
        &\textbf{return } θ_t
        \end{aligned}

    This follows the authors' reference implementation (github.com/martius-lab/l4-optimizer,
    ``L4/L4.py``: ``L4General.apply_gradients``, ``AdamTransform``, ``MomentumTransform``): the
    gradient estimate is a bias-corrected moving average with time scale 10 (β_1 = 0.9), the Adam
    direction uses time scales 10 and 1000 (β = (0.9, 0.999)) with ε = 1e-4, L_min starts at
    γ_0 = 0.75 times the first loss, and the dot product runs over all parameters. Both estimators
    share the first-moment buffer m here, which is exact because they share β_1. With
    ``direction="momentum"`` (the reference's L4Mom) d_t = ĝ_t. L_t is the value the closure
    returns (weight decay enters only the gradient, as everywhere in this package).

    The step size η_t of the latest step is written to ``param_groups[i]["lr"]`` (0 before the
    first step) for logging; the fraction α lives in ``param_groups[i]["alpha"]``.
    γ, γ_0 and τ act on the single, global L_min and are read from the first param group.
    ``step`` requires the closure.

    **Fused arrays**: a param group may hold K members' tensors stacked on a leading member axis
    (``sensitivity.optim.members``), with the fraction ``lr`` a (K,) tensor and any other
    hyperparameter a number shared by all or a (K,) tensor. The closure then returns the
    members' K losses (a (K,) tensor; it may return losses computed before the step), L_min is
    one value per member (a (K,) float64 tensor), ĝ·d stops at the member axis, and η is one
    value per member: the same formulas, no host sync.

    Args:
        params: tensors or param-group dicts.
        lr: α, the fraction of the linearised step to the loss target (default 0.15).
        direction: "adam" or "momentum".
        betas: β_1 (gradient estimate / momentum), β_2 (adam only) (default (0.9, 0.999)).
        eps: ε of the Adam direction (default 1e-4).
        gamma: γ, the fraction of the minimal seen loss considered reachable (default 0.9).
        gamma0: γ_0, L_min at the first step as a fraction of its loss (default 0.75).
        tau: τ, time scale over which L_min is forgotten (default 1000).
        weight_decay: λ, coupled L2 (default 0).
    """

    _DIV_EPS = 1e-12  # the reference's `epsilon` in the step-size denominator

    def __init__(
        self,
        params,
        lr: float = 0.15,
        *,
        direction: str = "adam",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-4,
        gamma: float = 0.9,
        gamma0: float = 0.75,
        tau: float = 1000.0,
        weight_decay: float = 0.0,
    ):
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
        self.direction = direction
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, gamma=gamma, gamma0=gamma0, tau=tau, weight_decay=weight_decay)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        members = member_count(group) is not None
        if members and len(self.param_groups) > 1:
            raise ValueError("member axis: L4 over a fused array takes one param group")
        for hp in member_values(group):  # once, or once per member of a fused array
            checks.number("lr", hp["lr"] if "alpha" not in group else hp["alpha"], low=0)
            checks.pair("betas", hp["betas"])
            checks.number("eps", hp["eps"], low=0)
            checks.number("gamma", hp["gamma"], low=0, high=1)
            checks.number("gamma0", hp["gamma0"], low=0, high=1)
            checks.number("tau", hp["tau"], low=1e-12)
            checks.number("weight_decay", hp["weight_decay"], low=0)
        if "alpha" not in group:  # a new group: its "lr" is the fraction α
            if members:
                group["alpha"] = group["lr"].to(member_dtype(group["lr"].device))
                group["lr"] = torch.zeros_like(group["alpha"])  # no step taken yet
            else:
                group["alpha"] = checks.number("lr", group["lr"], low=0)
                group["lr"] = 0.0

    def load_state_dict(self, state_dict: dict) -> None:
        # the members' L_min is float64 like a solo run's python float: it keeps its dtype
        load_state(self, state_dict, super().load_state_dict, own=lambda key: key == "l4_min_loss")

    def _init_group(self, group: dict):
        params, grads, states = [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("L4 does not support sparse gradients")
            state = self.state[p]
            if "step" not in state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if self.direction == "adam":
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            params.append(p)
            grads.append(p.grad)
            states.append(state)
        return params, grads, states

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one step; `closure` (required) re-evaluates the model and returns the loss."""
        if closure is None:
            raise ValueError("L4 needs the loss: call step(closure) with a closure that returns it")
        with torch.enable_grad():
            loss = closure()
        first = self.param_groups[0]
        global_state = self.state[first["params"][0]]
        L = _loss_value(loss, first["lr"])
        if "l4_min_loss" not in global_state:
            global_state["l4_min_loss"] = first["gamma0"] * L
        else:  # min(L_min, L), as python's min treats a NaN loss
            global_state["l4_min_loss"] = F.where(L < global_state["l4_min_loss"], L, global_state["l4_min_loss"])
        min_loss = global_state["l4_min_loss"]
        members = isinstance(L, Tensor)

        work, inner = [], []
        for group in self.param_groups:
            params, grads, states = self._init_group(group)
            if not params:
                continue
            beta1, beta2 = group["betas"]
            g = F.coupled_l2(grads, params, group["weight_decay"])
            exp_avgs = [s["exp_avg"] for s in states]
            steps = [s["step"] for s in states]
            bias1 = [1 - beta1**t for t in steps]
            dot = F.member_dot if members else F.dot
            if self.direction == "adam":
                # d = c·u with u = m/(√v + ε·√bc2), c = √bc2/bc1; ĝ·d = (c/bc1)·(m·u).
                u, c = F.adam_scaled_direction(
                    g, exp_avgs, [s["exp_avg_sq"] for s in states],
                    steps=steps, beta1=beta1, beta2=beta2, eps=group["eps"],
                )
                inner.append(dot(exp_avgs, u, [ci / b1 for ci, b1 in zip(c, bias1)]))
            else:
                torch._foreach_lerp_(exp_avgs, g, F.per_tensor(1 - beta1, g))
                u, c = exp_avgs, [1 / b1 for b1 in bias1]
                inner.append(dot(exp_avgs, exp_avgs, [ci * ci for ci in c]))
            work.append((group, params, u, c, steps))

        if work:  # (K,) sums per member, or one number with one host sync
            denominator = torch.stack([x.to(member_dtype(x.device)) for x in inner]).sum(0)  # float64 (MPS: 32)
            denominator = (denominator if members else float(denominator)) + self._DIV_EPS
            numerator = L - first["gamma"] * min_loss
            for group, params, u, c, steps in work:
                eta = group["alpha"] * numerator / denominator
                for idx in F.by_step(steps).values():  # c depends on the step count only
                    F.axpy_(*F.pick([params, u], idx), -eta * c[idx[0]])
                group["lr"] = eta
        global_state["l4_min_loss"] = min_loss * (1 + 1 / first["tau"])
        return loss


def _loss_value(loss, lr):
    """The loss as L4 reads it: a python float (one host sync), or for a member-axis group (its lr
    a (K,) tensor) the members' (K,) losses in float64 on the device."""
    if isinstance(lr, Tensor):
        loss = torch.as_tensor(loss)
        if loss.shape != lr.shape:
            raise ValueError(f"L4 over {len(lr)} members: the closure must return their {len(lr)} losses, "
                             f"got shape {tuple(loss.shape)}")
        return loss.detach().to(device=lr.device, dtype=lr.dtype)
    return float(loss.detach()) if isinstance(loss, Tensor) else float(loss)


def _adam_args(*, lr, betas, eps, gamma, gamma0, tau, weight_decay) -> dict:
    return dict(lr=lr, direction="adam", betas=tuple(betas), eps=eps, gamma=gamma, gamma0=gamma0, tau=tau,
                weight_decay=weight_decay)


def _sgdn_args(*, lr, momentum, gamma, gamma0, tau, weight_decay) -> dict:
    # the reference's L4Mom: the momentum average is the direction (β_2 and ε are unused)
    return dict(lr=lr, direction="momentum", betas=(momentum, 0.999), eps=1e-4, gamma=gamma, gamma0=gamma0, tau=tau,
                weight_decay=weight_decay)


def _factory(args):
    def build(params, **hp):
        kw = args(**hp)
        return L4(params, kw.pop("lr"), **kw)

    def members(params, hyperparameters):
        """The member-axis form (`sensitivity.optim.members`): one group over the stacked tensors."""
        kws = [args(**hp) for hp in hyperparameters]
        direction = kws[0]["direction"]
        return L4([member_group(params, [{k: v for k, v in kw.items() if k != "direction"} for kw in kws])],
                  direction=direction)

    return build, members


# descriptions, papers and defaults: sensitivity/catalog.py
register("adam-l4", *_factory(_adam_args))
register("sgdn-l4", *_factory(_sgdn_args))
