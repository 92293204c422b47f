"""Hypergradient descent (HD): a base optimizer whose learning rate is learned online.

``<op>-hd-<lop>`` for op, lop ∈ {sgd, sgdn, adam}; ``<op>-hd`` is ``<op>-hd-sgd`` (Baydin et al.).
The math lives in :mod:`sensitivity.optim.functional`; this module gathers tensors and state.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torch.optim import Optimizer

from sensitivity import checks

from . import functional as F
from .members import load_state, member_count as _member_count, member_dtype, member_group, member_values as _member_values
from .registry import register

__all__ = ["HypergradientOptimizer", "OPS", "LOPS", "NAMES"]

OPS = ("sgd", "sgdn", "adam")
LOPS = F.LOPS


class HypergradientOptimizer(Optimizer):
    r"""Base optimizer ``op`` whose learning rate α is learned by the lr-optimizer ``lop``.

    .. math::
        \begin{aligned}
        &\textbf{input}: α_0 \text{ (lr)}, β \text{ (beta)}, θ_0, f, λ \text{ (weight decay)},
            \text{op} ∈ \{sgd, sgdn, adam\}, \text{lop} ∈ \{sgd, sgdn, adam\} \\
        &\textbf{initialize}: α ← α_0, \; b ← 0, \; m_h ← 0, \; v_h ← 0, \; k ← 0 \\
        &\textbf{for } t = 1, 2, \ldots \textbf{ do} \\
        &\quad g_t ← ∇f(θ_{t-1}) + λ θ_{t-1}                                   \\
        &\quad \textbf{if } t ≥ 2: \; D_t ← -\textstyle\sum_{params} g_t \cdot d_{t-1}
            \qquad (= ∂f(θ_{t-1})/∂α) \\
        &\quad\quad \text{lop sgd}: \; α ← α - β D_t \\
        &\quad\quad \text{lop sgdn}: \; b ← μ_h b + D_t; \; α ← α - β (D_t + μ_h b) \\
        &\quad\quad \text{lop adam}: \; k ← k+1; \; m_h ← β_{1h} m_h + (1-β_{1h}) D_t;
            \; v_h ← β_{2h} v_h + (1-β_{2h}) D_t^2 \\
        &\quad\quad\quad α ← α - β \, \frac{m_h/(1-β_{1h}^k)}{\sqrt{v_h/(1-β_{2h}^k)} + ε_h} \\
        &\quad\quad α ← \mathrm{clamp}(α, α_{min}, α_{max}) \quad \text{(only when given)} \\
        &\quad \text{op sgd}: \; d_t ← g_t \\
        &\quad \text{op sgdn}: \; u_t ← μ u_{t-1} + g_t; \; d_t ← g_t + μ u_t \\
        &\quad \text{op adam}: \; m_t ← β_1 m_{t-1} + (1-β_1) g_t; \;
            v_t ← β_2 v_{t-1} + (1-β_2) g_t^2; \;
            d_t ← \frac{m_t/(1-β_1^t)}{\sqrt{v_t/(1-β_2^t)} + ε} \\
        &\quad θ_t ← θ_{t-1} - α \, d_t \\
        &\textbf{return } θ_t
        \end{aligned}

    One α per param group, kept in ``param_groups[i]["lr"]`` as a python float and updated once
    per step, before any parameter of the step moves (all groups' D_t are read with one host
    sync). With β = 0 this is torch.optim.SGD, SGD(nesterov=True) or Adam to round-off.
    Sources: Baydin et al. 2018 (lop sgd) and Mittal 2019, Algorithms 1 and 2 (lop sgdn, adam).

    **Fused arrays** (``sensitivity.fused``): a param group may hold K members' tensors stacked
    on a leading member axis, with ``lr`` a (K,) float64 tensor (each member's α) and any other
    hyperparameter either a number shared by all or a (K,) tensor (betas: a pair of them). The
    same formulas then run once for all members (see ``functional``'s member axis): D_t is one
    value per member, α stays on the device and the step needs no host sync. ``lop=None`` is
    the base optimizer alone, α constant: the fused arrays' sgd, sgdn and adam.

    Args:
        params: tensors or param-group dicts.
        lr: α_0, the initial learning rate (default 1e-3).
        beta: β, the hypergradient learning rate (default 1e-3).
        op, lop: base optimizer and lr-optimizer, each "sgd", "sgdn" or "adam" (lop also None:
            no hypergradient, the base optimizer alone).
        momentum: μ of the sgdn base optimizer (default 0.9).
        betas, eps: Adam base optimizer coefficients (default (0.9, 0.999), 1e-8).
        weight_decay: λ, coupled L2 added to the gradient before the hypergradient (default 0).
        lop_momentum: μ_h of the sgdn lr-optimizer (default 0.9).
        lop_betas, lop_eps: β_{1h}, β_{2h}, ε_h of the Adam lr-optimizer (default (0.9, 0.999), 1e-8).
        lr_min, lr_max: optional clamps on α (default None: α may go anywhere, negative included).

    State: per parameter ``step``, ``prev_direction`` (d_{t−1}; for op adam it is stored as
    u = m/(√v + ε·√(1−β_2^t)) with ``prev_direction_scale`` c so that d = c·u), ``momentum_buffer``
    (sgdn) and ``exp_avg``/``exp_avg_sq`` (adam); the lr-optimizer state of a group
    (``lop_momentum_buffer`` or ``lop_step``/``lop_exp_avg``/``lop_exp_avg_sq``) sits in the state of
    the group's first parameter.

    Memory traffic: without weight decay, ops sgd and sgdn keep d_{t−1} in the gradient tensor
    itself when autograd allocated a fresh one (``zero_grad(set_to_none=True)``, the default), so
    HD adds one read of g and d_{t−1} per step and no copy; like torch's foreach SGD, op sgdn then
    leaves the Nesterov direction in ``p.grad``. When gradients are reused in place
    (``set_to_none=False``) this is detected and d_{t−1} is copied instead; a switch to in-place
    reuse mid-run is detected too (RuntimeWarning; that step's D omits the lost tensors).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        beta: float = 1e-3,
        *,
        op: str = "sgd",
        lop: str = "sgd",
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        lop_momentum: float = 0.9,
        lop_betas: tuple[float, float] = (0.9, 0.999),
        lop_eps: float = 1e-8,
        lr_min: float | None = None,
        lr_max: float | None = None,
    ):
        if op not in OPS:
            raise ValueError(f"op must be one of {', '.join(OPS)}, got {op!r}")
        if lop is not None and lop not in LOPS:
            raise ValueError(f"lop must be one of {', '.join(LOPS)} or None, got {lop!r}")
        defaults = dict(
            lr=lr, beta=beta, momentum=momentum, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
            lop_momentum=lop_momentum, lop_betas=tuple(lop_betas), lop_eps=lop_eps, lr_min=lr_min, lr_max=lr_max,
        )
        self.op, self.lop = op, lop
        # id(param) -> the grad tensor seen at the last step (ops sgd/sgdn without weight decay).
        # Params live as long as the optimizer, so their ids are stable. Not state: identities.
        # In steady state this holds no extra memory: the object is d_{t−1} (borrowed) or p.grad.
        self._last_grads: dict[int, Tensor] = {}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        members = _member_count(group)
        for hp in _member_values(group):  # once, or once per member of a fused array
            checks.number("lr", hp["lr"], low=0)
            checks.number("beta", hp["beta"], low=0)
            if self.lop is None:  # torch's SGD: any momentum >= 0
                checks.number("momentum", hp["momentum"], low=0)
            else:
                checks.number("momentum", hp["momentum"], low=0, high=1, high_open=True)
            checks.pair("betas", hp["betas"])
            checks.number("eps", hp["eps"], low=0)
            checks.number("weight_decay", hp["weight_decay"], low=0)
            checks.number("lop_momentum", hp["lop_momentum"], low=0, high=1, high_open=True)
            checks.pair("lop_betas", hp["lop_betas"])
            checks.number("lop_eps", hp["lop_eps"], low=0)
            lo, hi = hp["lr_min"], hp["lr_max"]
            for key, v in (("lr_min", lo), ("lr_max", hi)):
                checks.number(key, v, finite=False, allow_none=True)
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"lr_min must be <= lr_max, got lr_min={lo!r} > lr_max={hi!r}")
        if members is None:
            group["lr"] = checks.number("lr", group["lr"], low=0)
        else:  # α of each member, kept in float64 like a solo run's python float
            group["lr"] = group["lr"].to(member_dtype(group["lr"].device))
            for key in ("lr_min", "lr_max"):
                if isinstance(group[key], Tensor):
                    group[key] = group[key].to(device=group["lr"].device, dtype=group["lr"].dtype)
        for p in group["params"]:
            if p.is_complex():
                raise ValueError("complex parameters are not supported")

    def load_state_dict(self, state_dict: dict) -> None:
        # α's own state (the lr-optimizer's, Adam's direction scale) is not a parameter's: it keeps
        # its dtype (float64 for a fused array's members).
        load_state(self, state_dict, super().load_state_dict,
                   own=lambda key: key.startswith("lop_") or key == "prev_direction_scale")
        self._last_grads.clear()  # grad identities from before the load are meaningless

    def members_kept(self) -> None:
        """Members were dropped (`members.keep`): the stacked tensors and their gradients are new."""
        self._last_grads.clear()

    # -- gathering ---------------------------------------------------------------------------
    def _init_group(self, group: dict):
        """Params with a grad, their grads and states, and each one's usable d_{t−1} (or None)."""
        params, grads, states, prevs = [], [], [], []
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                # p does not move this step, so d_t is 0 for it: a stale d_{t−1} must not enter the next D.
                if p in self.state:
                    self.state[p].pop("prev_direction", None)
                continue
            if grad.is_sparse:
                raise RuntimeError("HypergradientOptimizer does not support sparse gradients")
            state = self.state[p]
            F.init_base_state(state, p, self.op)
            prev = state.get("prev_direction")
            if prev is grad:
                # d_{t−1} was the borrowed grad, which has since been zeroed and reaccumulated in
                # place (gradients started being reused mid-run): it is lost, so this tensor adds
                # nothing to this step's D. _update_sgd copies from now on.
                warnings.warn("previous gradient was modified in place; copying gradients from now on", RuntimeWarning)
                del state["prev_direction"]
                prev = None
            params.append(p)
            grads.append(grad)
            states.append(state)
            prevs.append(prev)
        return params, grads, states, prevs

    def _hypergradient(self, g: list[Tensor], states: list[dict], prevs: list[Tensor | None],
                       members: bool) -> Tensor | None:
        """D = −Σ g·d_{t−1} over the tensors that have d_{t−1}, or None: a 0-dim tensor, or with
        `members` a (K,) tensor, one D per member (sums stop at the member axis)."""
        pairs = [i for i, prev in enumerate(prevs) if prev is not None]
        if not pairs:
            return None
        gs = [g[i] for i in pairs] if len(pairs) < len(g) else g
        ds = [prevs[i] for i in pairs]
        dot = F.member_dot if members else F.dot
        if self.op != "adam":
            return -dot(gs, ds)
        scales = [states[i]["prev_direction_scale"] for i in pairs]  # Adam keeps d = c·u
        if len({states[i]["step"] for i in pairs}) == 1:  # c depends on t only
            return dot(gs, ds) * (-scales[0])
        return -dot(gs, ds, scales)

    # -- step --------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """Perform one step; `closure` (optional) re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        gathered, hypergrads = [], []
        for group in self.param_groups:
            params, grads, states, prevs = self._init_group(group)
            g = F.coupled_l2(grads, params, group["weight_decay"])
            members = isinstance(group["lr"], Tensor)
            D = self._hypergradient(g, states, prevs, members) if self.lop is not None else None
            if D is not None and not members:
                hypergrads.append(D)
            del prevs  # d_{t−1} is not needed any more; let its memory be reused
            gathered.append((group, params, g, states, D, g is not grads))

        # One host sync for every solo group's D, before any parameter moves (a fused array's
        # members keep α and D on the device: no sync).
        values = iter(F.read_floats(hypergrads))
        for group, params, g, states, D, owned in gathered:
            if D is not None:
                D = D.to(group["lr"].dtype) if isinstance(group["lr"], Tensor) else next(values)
                lop_state = self.state[group["params"][0]]
                alpha = F.lr_step(
                    self.lop, group["lr"], D, lop_state, beta=group["beta"],
                    lop_momentum=group["lop_momentum"], lop_betas=group["lop_betas"], lop_eps=group["lop_eps"],
                )
                group["lr"] = _clamp(alpha, group["lr_min"], group["lr_max"])
            if params:
                if self.op == "adam":
                    self._update_adam(group, params, g, states)
                else:
                    self._update_sgd(group, params, g, states, owned)
        return loss

    def _update_adam(self, group: dict, params: list[Tensor], g: list[Tensor], states: list[dict]) -> None:
        for state in states:
            state["step"] += 1
            state.pop("prev_direction", None)  # free d_{t−1} before sqrt allocates d_t
        beta1, beta2 = group["betas"]
        steps = [s["step"] for s in states]
        u, c = F.adam_scaled_direction(
            g, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
            steps=steps, beta1=beta1, beta2=beta2, eps=group["eps"],
        )
        alpha = group["lr"]
        if len(set(steps)) == 1:  # c depends on t only
            F.axpy_(params, u, -alpha * c[0])
        else:  # parameters skipped some steps (grad None), so their bias corrections differ
            for idx in F.by_step(steps).values():
                F.axpy_(*F.pick([params, u], idx), -alpha * c[idx[0]])
        if self.lop is None:
            return  # no hypergradient: d_t is not kept
        for state, ui, ci in zip(states, u, c):
            state["prev_direction"] = ui
            state["prev_direction_scale"] = ci

    def _update_sgd(self, group: dict, params: list[Tensor], g: list[Tensor], states: list[dict], owned: bool) -> None:
        """op sgd / sgdn. `owned`: g was allocated by this step (coupled L2), not p.grad itself.

        d_t is written into g when g may be overwritten: allocated by coupled L2, or a fresh
        autograd grad that zero_grad(set_to_none=True) drops anyway (torch's foreach SGD also
        writes the Nesterov direction into the grad). When grads are reused in place, d_t goes
        into an owned buffer instead (the old d_{t−1}, already used for D).
        """
        if self.lop is None:  # no hypergradient: d_t is not kept
            for state in states:
                state["step"] += 1
            if self.op == "sgdn":
                g = F.sgdn_direction(g, [s["momentum_buffer"] for s in states], momentum=group["momentum"])
            F.axpy_(params, g, -group["lr"])
            return
        d = list(g)
        copy_dst, copy_src = [], []
        last_grads = self._last_grads
        for i, (p, state) in enumerate(zip(params, states)):
            state["step"] += 1
            if owned:
                last_grads.pop(id(p), None)
                continue
            gi = g[i]
            last = last_grads.get(id(p))
            last_grads[id(p)] = gi
            if last is not None and last is not gi:  # autograd allocated this grad: keep it
                continue
            # First sight of this grad (copy to be safe), or the same grad object as last step.
            prev = state.get("prev_direction")
            if prev is None or prev is last or prev.shape != gi.shape or prev.dtype != gi.dtype or prev.device != gi.device:
                prev = torch.empty_like(gi, memory_format=torch.preserve_format)
            copy_dst.append(prev)
            copy_src.append(gi)
            d[i] = prev
        if copy_dst:
            torch._foreach_copy_(copy_dst, copy_src)
        if self.op == "sgdn":
            bufs = [s["momentum_buffer"] for s in states]
            torch._foreach_mul_(bufs, F.per_tensor(group["momentum"], bufs))
            torch._foreach_add_(bufs, g)
            F.axpy_(d, bufs, group["momentum"])  # d = g + μ·buf
        F.axpy_(params, d, -group["lr"])
        for state, di in zip(states, d):
            state["prev_direction"] = di


def _clamp(alpha, lo, hi):
    """α clamped to [lr_min, lr_max] where given (a NaN α stays NaN, as in a solo run)."""
    if isinstance(alpha, Tensor):  # bounds: numbers or (K,) tensors; clamp keeps a NaN α NaN
        if lo is not None:
            alpha = torch.clamp(alpha, min=lo)
        if hi is not None:
            alpha = torch.clamp(alpha, max=hi)
        return alpha
    if lo is not None:
        alpha = max(alpha, lo)
    if hi is not None:
        alpha = min(alpha, hi)
    return alpha


# -- registry -------------------------------------------------------------------------------
# descriptions, papers and defaults of the names below: sensitivity/catalog.py


def _factory(op: str, lop: str | None):
    def build(params, **hp):
        return HypergradientOptimizer(params, op=op, lop=lop, **hp)

    build.__name__ = f"{op}_hd_{lop}"
    return build


def members_factory(op: str, lop: str | None):
    """The member-axis form (`sensitivity.optim.members`): one group over the stacked tensors;
    ``lop=None`` is the base optimizer alone (the fused form of sgd, sgdn and adam)."""
    def build(params, hyperparameters):
        return HypergradientOptimizer([member_group(params, hyperparameters)], op=op, lop=lop)

    build.__name__ = f"{op}_hd_{lop}_members"
    return build


NAMES: dict[str, tuple[str, str]] = {}  # registered name -> (op, lop)
for _op in OPS:
    for _lop in LOPS:
        for _name in ([f"{_op}-hd"] if _lop == "sgd" else []) + [f"{_op}-hd-{_lop}"]:  # the catalog's order
            register(_name, _factory(_op, _lop), members=members_factory(_op, _lop))
            NAMES[_name] = (_op, _lop)
