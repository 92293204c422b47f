"""CAM-HD: combined adaptive multi-level hypergradient descent (``<op>-cam-hd``, op ∈ sgd, sgdn, adam).

Learning rates at several levels (parameter, unit, layer, global) each learn by hypergradient
descent, and their convex combination is the step size (paper 002, Section 2.3 and Algorithm 1).
The base directions and the HD conventions are those of :mod:`sensitivity.optim.hd`. The flow:
levels and grouping in :mod:`~sensitivity.optim.cam_levels`, the update math in
:mod:`~sensitivity.optim.cam_update`, the optimizer (state, gathering, the step) here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.optim import Optimizer

from sensitivity import checks

from . import cam_state as S
from . import cam_update as U
from . import functional as F
from .cam_levels import LEVELS, check_levels, layout_of, rate_dtype
from .members import load_state, member_count, member_dtype, member_values
from .registry import register

__all__ = ["CamHD", "LEVELS", "OPS"]

OPS = ("sgd", "sgdn", "adam")
_STATE_KEY = "cam_hd"  # optimizer-wide state (γ, step, level rates), kept in `state` under a string key


class CamHD(Optimizer):
    r"""Combined adaptive multi-level hypergradient descent over the base optimizer ``op``.

    .. math::
        \begin{aligned}
        &\textbf{input}: α_0 \text{ (lr)}, β \text{ (beta)}, δ \text{ (delta)}, γ_{ℓ,0} \text{ (gammas)},
            λ \text{ (weight decay)}, r \text{ (decay\_rate)}, α_∞ \text{ (alpha\_inf, default } α_0),
            \text{levels } ℓ ⊆ \{parameter, unit, layer, global\} \\
        &\textbf{initialize}: α_ℓ(i) ← α_0 \text{ for every group } i \text{ of every level};
            \; τ(t) = e^{-r t} \; (τ ≡ 1 \text{ without decay}) \\
        &\textbf{for } t = 1, 2, \ldots \textbf{ do} \\
        &\quad g_t ← ∇f(θ_{t-1}) + λ θ_{t-1} \\
        &\quad \textbf{if } t ≥ 2: \; D_p ← -g_{t,p} \, d_{t-1,p} \text{ for every element } p \\
        &\quad\quad G_ℓ ← τ(t) \textstyle\sum_p D_p \, α_ℓ(p)
            \qquad (= ∂f(θ_{t-1})/∂γ_ℓ, \text{ with the old } α) \\
        &\quad\quad α_ℓ(i) ← α_ℓ(i) - β \, γ_ℓ \, τ(t) \, \tfrac{n}{n_i} \textstyle\sum_{p ∈ i} D_p
            \qquad (n_i \text{ elements of the } n \text{ in the param group}) \\
        &\quad\quad γ_ℓ ← \max(γ_ℓ - δ \, G_ℓ, 0); \; γ ← γ / \textstyle\sum_ℓ γ_ℓ \\
        &\quad α^*_p ← \textstyle\sum_ℓ γ_ℓ \, α_ℓ(p); \; κ_p ← τ(t) α^*_p + (1 - τ(t)) α_∞ \\
        &\quad d_t ← \text{direction of op (sgd: } g_t; \text{ sgdn: } g_t + μ u_t; \text{ adam: }
            \hat m_t / (\sqrt{\hat v_t} + ε)) \\
        &\quad θ_t ← θ_{t-1} - κ ⊙ d_t \\
        &\textbf{return } θ_t
        \end{aligned}

    The hyper-updates follow the chain rule through the combination: θ_{t−1} = θ_{t−2} − κ⊙d_{t−1}
    with κ = τ·Σ_ℓ γ_ℓ α_ℓ + (1 − τ)·α_∞, so ∂f/∂α_ℓ(i) = τ·γ_ℓ·Σ_{p∈i} D_p and ∂f/∂γ_ℓ = τ·Σ_p D_p·α_ℓ(p).
    The hypergradients of step t are scaled by τ(t), as the paper (Section 2.4) and our spec write it.
    Strictly, D_t differentiates through κ_{t−1}, whose factor is τ(t−1); the two differ by e^{−r}
    (0.998 at the paper's r = 0.002), and we keep the published form so results compare with it.
    All α and γ are updated once per step, before any parameter moves, and the step then uses the
    updated values (Algorithm 1 combines the new α with the previous γ; with δ = 0 the two agree).
    β is scaled by n/n_i (the paper's β_p = n_p β, β_l = n_l β, β_g = β, read so that the global
    level alone is exactly HD).

    Levels (``levels``, leaf first: ``parameter``, ``unit``, ``layer``, ``global``; n, n_i count
    elements of one param group) are described in :mod:`~sensitivity.optim.cam_levels`; ``global``
    alone (γ = 1, δ = 0) is ``<op>-hd`` step for step.

    γ are shared by all param groups. They are clamped at 0 before renormalising to sum 1 (a
    projection that keeps α* a convex combination); if the update is not finite or every γ clamps
    to 0, γ keep their previous values.

    **Fused arrays** (``sensitivity.optim.members``): one param group of K members' stacked tensors,
    named as the solo tensors are, ``lr`` and any per-member value (K,) tensors. Each member has its
    solo run's units and layers (built from the solo shapes and names); every level's rates get a
    leading member axis (``unit`` (K, U), ``layer`` (K, M), ``global`` (K,)), γ is (K, levels) and δ
    may be (K,) (both in ``state["cam_hd"]``); every sum stops at the member axis. The same formulas
    run once for all members, with no host sync; a change of ``lr`` between steps (a member's
    decay) is seen through the tensor's version counter.

    ``param_groups[i]["lr"]`` holds the group's element-mean effective rate κ of the last step
    (exactly τ·Σ_ℓ γ_ℓ·mean(α_ℓ) + (1−τ)·α_∞). When a scheduler or the user changes it between
    steps, every level rate of that group and α_∞ are multiplied by new/old, so step decay works.
    ``gammas``, ``level_lrs()`` and ``curve_metrics()`` expose the state for logging; ``state_dict``
    holds everything needed to resume exactly.

    State: per parameter ``step``, ``prev_direction`` (d_{t−1}; for adam u with
    ``prev_direction_scale`` c, d = c·u, as in ``<op>-hd``; it is overwritten by g·d_{t−1} during
    the step, so the per-element products need no new memory), ``momentum_buffer`` or
    ``exp_avg``/``exp_avg_sq``, and ``lr_parameter`` for the parameter level. The optimizer-wide
    entry ``state["cam_hd"]`` holds ``levels``, ``gammas``, ``step`` and per param group ``lr``
    (the last value written to the group), ``unit``/``layer``/``global`` rate tensors (float64)
    and ``parameter_mean``.

    Args:
        params: tensors, param-group dicts or ``model.named_parameters()`` pairs.
        lr: α_0 (default 1e-3). beta: β (default 1e-3; the registry uses 1e-8 for adam).
        op: base optimizer "sgd", "sgdn" or "adam" (required).
        levels: ordered subset of ("parameter", "unit", "layer", "global") (default unit, global).
        gammas: initial γ, one per level, non-negative, summing to 1 (default (0.2, 0.8)); for a
            member-axis group also one such sequence per member.
        delta: δ, the learning rate of γ (0 freezes them; default 0.03); per member a (K,) tensor.
        decay_rate: r of τ(t) = exp(−r t), or None for no decay (default None).
        alpha_inf: α_∞ of the decay (default None: the group's initial lr).
        momentum: μ of sgdn (0.9). betas, eps: Adam's (0.9, 0.999), 1e-8. weight_decay: coupled L2 λ (0).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        beta: float = 1e-3,
        *,
        op: str,
        levels: Sequence[str] = ("unit", "global"),
        gammas: Sequence[float] = (0.2, 0.8),
        delta: float = 0.03,
        decay_rate: float | None = None,
        alpha_inf: float | None = None,
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        if op not in OPS:
            raise ValueError(f"op must be one of {', '.join(OPS)}, got {op!r}")
        self.op = op
        self.levels = check_levels(levels)
        self._initial_gammas = S.check_initial_gammas(gammas, self.levels)
        for d in delta.tolist() if isinstance(delta, Tensor) else [delta]:
            checks.number("delta", d, low=0)
        self._delta = delta if isinstance(delta, Tensor) else float(delta)  # (K,): into state["cam_hd"]
        self._layouts = []
        self._lr_seen: tuple[Tensor, int] | None = None  # a member group's lr as last written (see step)
        defaults = dict(
            lr=lr, beta=beta, momentum=momentum, betas=betas, eps=eps, weight_decay=weight_decay,
            decay_rate=decay_rate, alpha_inf=alpha_inf,
        )
        super().__init__(params, defaults)

    # -- construction --------------------------------------------------------------------------
    def add_param_group(self, param_group: dict) -> None:
        for key in ("levels", "gammas", "delta"):
            if key in param_group:
                raise ValueError(f"{key} is shared by all param groups; pass it to the optimizer, not to a group")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        lead = member_count(group)
        if lead is not None and len(self.param_groups) > 1:
            raise ValueError("member axis: CAM-HD over a fused array takes one param group")
        for hp in member_values(group):  # once, or once per member of a fused array
            checks.number("lr", hp["lr"], low=0)
            checks.number("beta", hp["beta"], low=0)
            checks.number("momentum", hp["momentum"], low=0, high=1, high_open=True)
            checks.pair("betas", hp["betas"])
            checks.number("eps", hp["eps"], low=0)
            checks.number("weight_decay", hp["weight_decay"], low=0)
            checks.number("decay_rate", hp["decay_rate"], low=0, allow_none=True)
            checks.number("alpha_inf", hp["alpha_inf"], low=0, allow_none=True)
        if lead is None:
            group["lr"] = checks.number("lr", group["lr"], low=0)
            group["betas"] = checks.pair("betas", group["betas"])
            group["alpha_inf"] = group["lr"] if group["alpha_inf"] is None else float(group["alpha_inf"])
        else:
            group["lr"] = group["lr"].to(member_dtype(group["lr"].device))
            if group["alpha_inf"] is None:
                group["alpha_inf"] = group["lr"].clone()

        params: list[Tensor] = group["params"]
        if any(p.is_complex() for p in params):
            raise ValueError("params: complex parameters are not supported")
        device = params[0].device
        if any(p.device != device for p in params):
            raise ValueError("params: all tensors of a param group must be on one device")
        layout = layout_of([p.shape if lead is None else p.shape[1:] for p in params],  # a member's (solo) shapes
                           group.get("param_names"), self.levels, device)
        self._layouts.append(layout)

        cam = self.state[_STATE_KEY]
        if not cam:
            cam.update(levels=list(self.levels), gammas=S.initial_gammas(self._initial_gammas, lead, device), step=0,
                       groups=[])
            if isinstance(self._delta, Tensor):  # per member: sliced with the members' other state
                cam["delta"] = self._delta.to(device=device, dtype=rate_dtype(device))
        cam["groups"].append(S.initial_rates(self.levels, layout, group["lr"], params, self.state, lead))

    @property
    def _cam(self) -> dict:
        return self.state[_STATE_KEY]

    def _members(self) -> bool:
        return isinstance(self._cam["gammas"], Tensor)

    @property
    def delta(self) -> float | Tensor:
        """δ, the learning rate of γ (per member a (K,) tensor)."""
        return self._cam.get("delta", self._delta)

    # -- public read-outs ----------------------------------------------------------------------
    @property
    def gammas(self) -> tuple[float, ...] | Tensor:
        """Current combination weights γ, in ``levels`` order (a member-axis group: (K, levels))."""
        gammas = self._cam["gammas"]
        return gammas.clone() if isinstance(gammas, Tensor) else tuple(gammas)

    def level_lrs(self) -> dict[str, float | Tensor]:
        """Level -> its rate averaged over all elements (all param groups; per member (K,)), for logging.

        A pending change of ``param_groups[i]["lr"]`` is applied first, so the values match it.
        """
        self._apply_lr_changes()
        means = [U.level_means(lay, self.levels, rates) for lay, rates in zip(self._layouts, self._cam["groups"])]
        if self._members():
            return dict(zip(self.levels, means[0]))
        sizes = [lay.n for lay in self._layouts]
        total = max(sum(sizes), 1)
        flat = F.read_floats([v for m in means for v in m])
        L = len(self.levels)
        return {level: sum(n * flat[i * L + k] for i, n in enumerate(sizes)) / total
                for k, level in enumerate(self.levels)}

    def curve_metrics(self) -> dict[str, float | Tensor]:
        """``lr`` (element-mean effective rate), ``lr_<level>`` and ``gamma_<level>`` for each level
        (floats; for a member-axis group (K,) tensors)."""
        levels = self.level_lrs()
        if self._members():
            out = {"lr": self.param_groups[0]["lr"]}
            gammas = self._cam["gammas"].unbind(-1)
        else:
            sizes = [lay.n for lay in self._layouts]
            out = {"lr": sum(n * g["lr"] for n, g in zip(sizes, self.param_groups)) / max(sum(sizes), 1)}
            gammas = self.gammas
        out.update({f"lr_{level}": value for level, value in levels.items()})
        out.update({f"gamma_{level}": g for level, g in zip(self.levels, gammas)})
        return out

    # -- state -----------------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict) -> None:
        cam = state_dict["state"].get(_STATE_KEY)
        if not cam or list(cam["levels"]) != list(self.levels) or len(cam["groups"]) != len(self.param_groups):
            saved = list(cam["levels"]) if cam else None
            raise ValueError(f"state_dict: not a CAM-HD state with levels {list(self.levels)} (saved levels: {saved})")
        delta = self._cam.get("delta")  # the members' own δ, unless the state brings theirs
        # Adam's direction scales of a member-axis group are float64 like a solo run's python floats
        load_state(self, state_dict, super().load_state_dict, own=lambda key: key == "prev_direction_scale")
        self.state[_STATE_KEY] = S.own_loaded(self.state[_STATE_KEY], self.param_groups)
        if delta is not None:
            self._cam.setdefault("delta", delta)
        self._lr_seen = None

    def _apply_lr_changes(self) -> None:
        """Scale a group's level rates and α_∞ by new/old when its ``lr`` was changed from outside."""
        for group, rates in zip(self.param_groups, self._cam["groups"]):
            def per_element(group=group):
                return [self.state[p]["lr_parameter"] for p in group["params"]] if "parameter" in self.levels else []

            if not isinstance(group["lr"], Tensor):
                S.rescale(group, rates, per_element)
            elif self._lr_seen is None or self._lr_seen[0] is not group["lr"] or self._lr_seen[1] != group["lr"]._version:
                S.rescale_members(group, rates, per_element())  # not the lr tensor this optimizer wrote, untouched since
                self._lr_seen = (group["lr"], group["lr"]._version)

    def members_kept(self) -> None:
        """Members were dropped (`members.keep`): the group's lr is a new tensor."""
        self._lr_seen = None

    # -- step --------------------------------------------------------------------------------
    def _init_group(self, group: dict) -> tuple[list[int], list[Tensor], list[Tensor], list[dict]]:
        idx, params, grads, states = [], [], [], []
        for j, p in enumerate(group["params"]):
            state = self.state[p]
            if p.grad is None:
                # θ did not move this step, so it adds nothing to the next hypergradient.
                state.pop("prev_direction", None)
                state.pop("prev_direction_scale", None)
                continue
            if p.grad.is_sparse:
                raise RuntimeError("CAM-HD does not support sparse gradients")
            F.init_base_state(state, p, self.op)
            idx.append(j)
            params.append(p)
            grads.append(p.grad)
            states.append(state)
        return idx, params, grads, states

    def _hyper_update(self, i: int, group: dict, t: int, gammas: list, idx: list[int], g: list[Tensor],
                      states: list[dict]) -> list[Tensor] | None:
        """Update group i's level rates in place; return its ∂f/∂γ_ℓ contributions (or None)."""
        pairs = [k for k, s in enumerate(states) if "prev_direction" in s]
        if t < 2 or not pairs or (U.is_zero(group["beta"]) and U.is_zero(self.delta)):
            return None
        lay, rates = self._layouts[i], self._cam["groups"][i]
        lead = member_count(group)
        gs = [g[k] for k in pairs]
        ds = [states[k]["prev_direction"] for k in pairs]
        cs = [states[k].get("prev_direction_scale", 1.0) for k in pairs]
        uniform = len({states[k]["step"] for k in pairs}) == 1  # c depends on the step count only
        has_param = "parameter" in self.levels
        alphas = [states[k]["lr_parameter"] for k in pairs] if has_param else []
        # Per-unit and per-element sums need g·u per element. d_{t−1} is not needed after this step's
        # hypergradient (the new direction replaces it), so the product overwrites it: no allocation.
        # Layer and global sums alone are plain dot products.
        prods = None
        if has_param or "unit" in self.levels:
            prods = ds
            torch._foreach_mul_(prods, gs)
        dtype = rate_dtype(g[0].device)
        sums = U.level_sums(lay, self.levels, [idx[k] for k in pairs], gs, ds, cs, uniform, prods, lead, dtype)
        return U.hyper_step(lay, self.levels, rates, gammas, sums, prods=prods, alphas=alphas, cs=cs, uniform=uniform,
                            beta=group["beta"], tau=U.tau(group["decay_rate"], t),  # τ(t), as the paper (§2.4) writes it
                            with_gamma=not U.is_zero(self.delta), lead=lead, dtype=dtype)

    def _move(self, i: int, group: dict, t: int, gammas: list, idx: list[int], params: list[Tensor],
              u: list[Tensor], c: list[F.Scalar], states: list[dict]) -> None:
        """θ ← θ − κ ⊙ d with κ = τ(t)·Σ_ℓ γ_ℓ α_ℓ + (1 − τ(t))·α_∞ and d = c·u."""
        lay, rates = self._layouts[i], self._cam["groups"][i]
        tau = U.tau(group["decay_rate"], t)
        lead, device = member_count(group), params[0].device
        k = U.kappa(lay, self.levels, rates, gammas, tau, group["alpha_inf"], lead, device, rate_dtype(device))
        weights = dict(zip(self.levels, gammas))
        if "parameter" in weights and not U.is_zero(weights["parameter"]):
            F.addcmul_(params, [s["lr_parameter"] for s in states], u, [-tau * weights["parameter"] * ci for ci in c])
        F.addcmul_(params, U.rate_views(lay, self.levels, idx, params, k, lead), u, [-ci for ci in c])

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one step; `closure` (optional) re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._apply_lr_changes()
        cam = self._cam
        t = cam["step"] + 1
        members = self._members()
        gammas = list(cam["gammas"].unbind(-1)) if members else list(cam["gammas"])

        # 1. Hypergradients and level rates of every group, before any parameter moves.
        work, readouts, grad_gammas = [], [], []
        for i, group in enumerate(self.param_groups):
            idx, params, grads, states = self._init_group(group)
            g = F.coupled_l2(grads, params, group["weight_decay"]) if params else []
            grad_gamma = self._hyper_update(i, group, t, gammas, idx, g, states) if params else None
            if grad_gamma is not None:
                grad_gammas.append(grad_gamma)
            readouts.append(U.level_means(self._layouts[i], self.levels, cam["groups"][i]))
            work.append((idx, params, grads, g, states))

        # 2. γ and the groups' lr: one host sync for a solo optimizer (level means of every group
        #    and ∂f/∂γ), none for a member-axis group (its values stay (K,) tensors on the device).
        L = len(self.levels)
        if not members:
            values = F.read_floats([v for values in (*readouts, *grad_gammas) for v in values])
            readouts = [values[i * L:(i + 1) * L] for i in range(len(readouts))]
            first = len(readouts) * L  # the ∂f/∂γ of each group follow the level means
            grad_gammas = [values[first + k * L:first + (k + 1) * L] for k in range(len(grad_gammas))]
        if grad_gammas:  # γ are shared by all groups: their ∂f/∂γ add up
            gammas = U.project_gammas(gammas, [sum(gr[level] for gr in grad_gammas) for level in range(L)], self.delta)
            cam["gammas"] = torch.stack(gammas, -1) if members else gammas
        for i, group in enumerate(self.param_groups):
            lr = U.decayed(sum(gamma * m for gamma, m in zip(gammas, readouts[i])), U.tau(group["decay_rate"], t),
                           group["alpha_inf"])
            group["lr"] = lr
            cam["groups"][i]["lr"] = lr.clone() if members else lr
            if members:
                self._lr_seen = (lr, lr._version)

        # 3. Directions and the parameter update with the new rates.
        for i, (group, (idx, params, grads, g, states)) in enumerate(zip(self.param_groups, work)):
            if params:
                u, c = U.directions(self.op, group, grads, g, states)
                self._move(i, group, t, gammas, idx, params, u, c, states)
        cam["step"] = t
        return loss


# -- registry -------------------------------------------------------------------------------
# descriptions, papers and defaults of the names below: sensitivity/catalog.py


def _factory(op: str):
    def build(params, **hp):
        return CamHD(params, op=op, **hp)

    def members(params, hyperparameters):
        """The member-axis form (`sensitivity.optim.members`) over the stacked tensors, or over
        (solo name, stacked tensor) pairs: each member's units and layers are its solo run's."""
        group, optimizer_wide = S.split_members(params, hyperparameters)
        return CamHD([group], op=op, **optimizer_wide)

    build.__name__, members.__name__ = f"{op}_cam_hd", f"{op}_cam_hd_members"
    return build, members


for _op in OPS:
    register(f"{_op}-cam-hd", *_factory(_op))
