"""Pure update math of the learning-rate-free rules, over lists of tensors, with the member axis.

Prodigy (Mishchenko & Defazio 2024), D-Adaptation SGD and Adam (Defazio & Mishchenko 2023),
Schedule-Free SGD and AdamW (Defazio et al. 2024) and DoG/LDoG (Ivgi et al. 2023), each written
from its authors' package (prodigyopt 1.1.2, dadaptation 3.2, schedulefree 1.4.1, dog-optimizer
1.0.3) so that the same gradients give the same parameters; the classes in ``prodigy.py``,
``d_adapt.py``, ``schedule_free.py`` and ``dog.py`` gather the tensors and keep the state.

Conventions (those of :mod:`sensitivity.optim.functional`):

* Parallel lists of tensors, one entry per parameter; state tensors are updated in place.
* **Scalars.** A hyperparameter is a python number, or one value per member as a (K,) tensor for
  tensors whose leading dimension is the member axis. The rules' running numbers (d, its
  numerator and denominator, DoG's distance and gradient sum, the step counts of the
  D-Adaptation rules) are tensors even for a solo optimizer: 0-dim there, (K,) with a member
  axis. So a step never waits for the device, and a solo run is the K = 1 case of the same
  formulas, with no number of one member reaching another.
* Where the authors compare python floats (``max``, ``min``, ``==``, ``try: … except
  ZeroDivisionError``), :func:`py_max`, :func:`py_min` and :func:`safe_div` do the same
  elementwise, NaN cases included.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import functional as F
from .members import member_dtype

__all__ = [
    "Scalar", "coef", "scale_", "axpy_", "ema_sq_", "py_max", "py_min", "gate", "safe_div", "total", "l1",
    "sq_norms", "distances", "total_of_differences", "Workspace",
    "d_step_size", "prodigy_accumulate", "prodigy_estimate", "prodigy_apply",
    "dadapt_sgd_accumulate", "dadapt_estimate", "dadapt_sgd_apply", "dadapt_adam_accumulate", "dadapt_adam_apply",
    "schedule_free_weights", "schedule_free_step", "schedule_free_adamw_grads_", "schedule_free_swap",
    "dog_eta", "dog_apply",
]

Scalar = float | Tensor  # a python number, a 0-dim tensor (solo) or a (K,) tensor (one per member)


# -- scalars ---------------------------------------------------------------------------------------------------


def coef(value: Scalar, tensors: list[Tensor]):
    """`value` as foreach ops take it: a number as is; a 0-dim tensor once per tensor, in its dtype; a (K,)
    tensor as ``functional.per_tensor`` views, which broadcast member k's value over its slice."""
    if not isinstance(value, Tensor):
        return value
    if value.dim() > 0:
        return F.per_tensor(value, tensors)
    cast: dict[torch.dtype, Tensor] = {}
    for t in tensors:
        if t.dtype not in cast:
            cast[t.dtype] = value.to(t.dtype)
    return [cast[t.dtype] for t in tensors]


def _arg(value: Scalar, tensors: list[Tensor]):
    """`value` for the foreach ops that take one tensor as well as a list (mul_, div_, add_): a 0-dim tensor
    stays one tensor when the tensors share its dtype (one fused kernel on an accelerator)."""
    if isinstance(value, Tensor) and value.dim() == 0 and all(t.dtype == value.dtype for t in tensors):
        return value
    if isinstance(value, Tensor) and value.dim() == 0 and len({t.dtype for t in tensors}) == 1:
        return value.to(tensors[0].dtype)
    return coef(value, tensors)


def scale_(xs: list[Tensor], a: Scalar) -> None:
    """x ← a·x in place."""
    if xs:
        torch._foreach_mul_(xs, _arg(a, xs))


class Workspace:
    """Memory for a step's temporaries (differences, denominators), kept between steps on CPU.

    On CPU a fresh large tensor costs new pages (about one more pass over it) every step, so the
    tensors are taken in ranges of about a million elements (:meth:`spans`) and each range's
    temporaries are written into memory kept here. On an accelerator the caching allocator keeps
    freed memory, so there is one range and the temporaries are fresh foreach results (one fused
    kernel per op). `keep` forces either way (None: by the tensors' device). Not state: nothing in
    it outlives the op that fills it.
    """

    SPAN = 1 << 20  # elements

    def __init__(self, keep: bool | None = None) -> None:
        self.keep = keep
        self._flat: dict[tuple, Tensor] = {}

    def _keeps(self, tensors: list[Tensor]) -> bool:
        return self.keep if self.keep is not None else bool(tensors) and tensors[0].device.type == "cpu"

    def spans(self, tensors: list[Tensor]) -> list[slice]:
        """Ranges of `tensors` whose temporaries are made together."""
        if not self._keeps(tensors):
            return [slice(0, len(tensors))]
        out, start, size = [], 0, 0
        for i, t in enumerate(tensors):
            size += t.numel()
            if size >= self.SPAN:
                out.append(slice(start, i + 1))
                start, size = i + 1, 0
        if start < len(tensors):
            out.append(slice(start, len(tensors)))
        return out

    def _views(self, tensors: list[Tensor], slot: int) -> list[Tensor]:
        """Tensors shaped like `tensors` in kept memory (`slot`: which of an op's temporaries)."""
        need: dict[tuple, int] = {}
        for t in tensors:
            need[(t.dtype, t.device)] = need.get((t.dtype, t.device), 0) + t.numel()
        for (dtype, device), n in need.items():
            flat = self._flat.get((dtype, device, slot))
            if flat is None or flat.numel() < n:
                self._flat[(dtype, device, slot)] = torch.empty(n, dtype=dtype, device=device)
        out, offsets = [], {}
        for t in tensors:
            key = (t.dtype, t.device)
            start = offsets.get(key, 0)
            offsets[key] = start + t.numel()
            out.append(self._flat[(*key, slot)][start:start + t.numel()].view(t.shape))
        return out

    def apply(self, op: str, *args, slot: int = 0) -> list[Tensor]:
        """``torch.<op>`` (sub, mul, div, sqrt) of the lists as new tensors: per tensor into kept memory,
        or one ``torch._foreach_<op>``."""
        if not self._keeps(args[0]):
            return list(getattr(torch, f"_foreach_{op}")(*args))
        out = self._views(args[0], slot)
        fn = getattr(torch, op)
        for o, *xs in zip(out, *(a if isinstance(a, list) else [a] * len(out) for a in args)):
            fn(*xs, out=o)
        return out


_FRESH = Workspace()  # for callers that keep none (nothing outlives an op, so sharing it is safe)


def axpy_(ys: list[Tensor], xs: list[Tensor], a: Scalar) -> None:
    """y ← y + a·x in place (``y.add_(x, alpha=a)``)."""
    if not ys:
        return
    if isinstance(a, Tensor):
        torch._foreach_addcmul_(ys, xs, coef(a, xs))
    else:
        torch._foreach_add_(ys, xs, alpha=a)


def ema_sq_(vs: list[Tensor], grads: list[Tensor], beta: Scalar, c: Scalar, ws: Workspace = _FRESH) -> None:
    """v ← β·v + c·g² in place (``v.mul_(β).addcmul_(g, g, value=c)``; a per-member c needs c·g first)."""
    scale_(vs, beta)
    if isinstance(c, Tensor):
        for r in ws.spans(vs):
            torch._foreach_addcmul_(vs[r], ws.apply("mul", grads[r], coef(c, grads[r])), grads[r])
    elif vs:
        torch._foreach_addcmul_(vs, grads, grads, value=c)


def py_max(a: Scalar, b: Scalar) -> Scalar:
    """Python's ``max(a, b)``, elementwise on tensors: b where b > a, else a (so a NaN b is not taken)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return torch.where(torch.as_tensor(b > a), b, a)
    return max(a, b)


def py_min(a: Scalar, b: Scalar) -> Scalar:
    """Python's ``min(a, b)``, elementwise on tensors: b where b < a, else a."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return torch.where(torch.as_tensor(b < a), b, a)
    return min(a, b)


def gate(mask, new: Scalar, old: Scalar) -> Scalar:
    """`new` where `mask`, else `old`; `mask` is True (every member) or a bool tensor (python numbers then
    become tensors of the members' dtype, float64)."""
    if mask is True or mask is False:
        return new if mask else old
    if not isinstance(new, Tensor) and not isinstance(old, Tensor):
        new = torch.tensor(new, dtype=member_dtype(mask.device), device=mask.device)
    return torch.where(mask, new, old)


def safe_div(a: Scalar, b: Scalar) -> Scalar:
    """a / b, and 0 where b == 0 (the authors' ``except ZeroDivisionError: 0``)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return torch.where(torch.as_tensor(b == 0), 0.0, a / b)
    return a / b if b != 0 else 0


# -- reductions: 0-dim for a solo optimizer, (K,) (or (K, n) per tensor) with a member axis ---------------------


def _like(value: Tensor, like: Tensor) -> Tensor:
    return value.to(device=like.device, dtype=like.dtype)


def total(xs: list[Tensor], ys: list[Tensor], like: Tensor) -> Tensor:
    """Σ_i ⟨x_i, y_i⟩ in `like`'s dtype: 0-dim when `like` is, else per member."""
    if not xs:
        return torch.zeros_like(like)
    return _like(F.member_dot(xs, ys) if like.dim() else F.dot(xs, ys), like)


def _norms(xs: list[Tensor], like: Tensor, order: float) -> Tensor:
    """Each tensor's `order`-norm: (n,) solo, (K, n) with a member axis (n = len(xs))."""
    if like.dim() == 0:
        return torch.stack([_like(v, like) for v in torch._foreach_norm(xs, order)])
    return torch.stack([_like(torch.linalg.vector_norm(x.reshape(x.shape[0], -1), order, dim=1), like)
                        for x in xs], dim=1)


def l1(xs: list[Tensor], like: Tensor, ws: Workspace = _FRESH) -> Tensor:
    """Σ_i Σ|x_i| (``sum(x.abs().sum())``): foreach 1-norms, or on CPU |x| into kept memory and summed
    (CPU's 1-norm kernel is several times slower than the two passes)."""
    if not xs:
        return torch.zeros_like(like)
    if not ws._keeps(xs):
        return _norms(xs, like, 1).sum(-1)
    parts = [a.sum() if like.dim() == 0 else a.reshape(a.shape[0], -1).sum(1)
             for r in ws.spans(xs) for a in ws.apply("abs", xs[r])]
    return torch.stack([_like(part, like) for part in parts]).sum(0)


def sq_norms(xs: list[Tensor], like: Tensor) -> Tensor:
    """‖x_i‖² of each tensor: (n,) solo, (K, n) with a member axis."""
    return _norms(xs, like, 2).square()


def distances(xs: list[Tensor], x0s: list[Tensor], like: Tensor, ws: Workspace = _FRESH) -> Tensor:
    """‖x_i − x0_i‖ of each tensor: (n,) solo, (K, n) with a member axis."""
    return torch.cat([_norms(ws.apply("sub", xs[r], x0s[r]), like, 2) for r in ws.spans(xs)], dim=-1)


def total_of_differences(gs: list[Tensor], xs: list[Tensor], ys: list[Tensor], like: Tensor,
                         ws: Workspace = _FRESH) -> Tensor:
    """Σ_i ⟨g_i, x_i − y_i⟩ (the difference formed, not ⟨g, x⟩ − ⟨g, y⟩, which cancels)."""
    out = torch.zeros_like(like)
    for r in ws.spans(gs):
        out = out + total(gs[r], ws.apply("sub", xs[r], ys[r]), like)
    return out


# -- Prodigy (prodigyopt.Prodigy.step) --------------------------------------------------------------------------


def d_step_size(d: Tensor, lr, k: Tensor, beta1, beta2, bias_correction: bool) -> Tensor:
    """η = d·lr·b, b = √(1−β2^{k+1})/(1−β1^{k+1}) with Adam's bias correction, else 1 (Prodigy, D-Adapt Adam)."""
    b = (1 - beta2 ** (k + 1)) ** 0.5 / (1 - beta1 ** (k + 1)) if bias_correction else 1.0
    return d * lr * b


def prodigy_accumulate(params, grads, p0s, exp_avgs, exp_avg_sqs, ss, *, d, dlr, d0, beta1, beta2, beta3,
                       safeguard_warmup: bool, live=True, ws: Workspace = _FRESH) -> tuple[Tensor, Tensor]:
    """The first loop over one param group (its lr > 0; with a member axis, `live` marks the members whose is).

    Returns (Σ (d/d0)·dlr·⟨g, p0 − p⟩, Σ|s|) after the updates s ← β3·s + (d/d0)·dlr·g
    (``safeguard_warmup``: (d/d0)·d·g), m ← β1·m + d(1−β1)·g and v ← β2·v + d²(1−β2)·g², the last
    two as m ← β1·m + (1−β1)·(d·g), v ← β2·v + (1−β2)·(d·g)² with `grads` scaled by d in place
    (they hold coupled weight decay already; :func:`prodigy_apply` reads them so). A None in `p0s`
    is an all-zero start (the authors keep a scalar 0 there); ``exp_avgs`` is None when β1 = 0.
    """
    full = [i for i, p0 in enumerate(p0s) if p0 is not None]
    zero = [i for i, p0 in enumerate(p0s) if p0 is None]
    dot = total_of_differences([grads[i] for i in full], [p0s[i] for i in full], [params[i] for i in full], d, ws)
    if zero:  # p0 = 0: ⟨g, 0 − p⟩ = −⟨g, p⟩ exactly, without the difference
        dot = dot - total([grads[i] for i in zero], [params[i] for i in zero], d)
    numerator = gate(live, (d / d0) * dlr * dot, 0.0)
    scale_(ss, gate(live, beta3, 1.0))
    axpy_(ss, grads, gate(live, (d / d0) * (d if safeguard_warmup else dlr), 0.0))
    scale_(grads, d)
    if exp_avgs is not None:
        scale_(exp_avgs, gate(live, beta1, 1.0))
        axpy_(exp_avgs, grads, gate(live, 1 - beta1, 0.0))
    ema_sq_(exp_avg_sqs, grads, gate(live, beta2, 1.0), gate(live, 1 - beta2, 0.0), ws)
    return numerator, l1(ss, d, ws)


def prodigy_estimate(d, d_max, d_numerator, numerator, denom, *, d0, d_coef, growth_rate, beta3, live=True):
    """d from the step's sums: returns (d, d_max, d_numerator, active) after the step.

    numerator ← β3·numerator + Σ; d̂ = d_coef·numerator/Σ|s|; while d = d0, d ← max(d, d̂);
    d_max ← max(d_max, d̂); d ← min(d_max, d·growth_rate). A member whose Σ|s| = 0 (no gradient yet)
    or whose lr is 0 is not active: the authors return before the update, so nothing of it changes.
    """
    numerator = beta3 * d_numerator + numerator
    active = (denom != 0) & live
    d_hat = d_coef * numerator / denom
    new_d = torch.where(d == d0, py_max(d, d_hat), d)
    new_max = py_max(d_max, d_hat)
    new_d = py_min(new_max, new_d * growth_rate)
    return (torch.where(active, new_d, d), torch.where(active, new_max, d_max),
            torch.where(active, numerator, d_numerator), active)


def prodigy_apply(params, grads, exp_avgs, exp_avg_sqs, *, d, d_before, dlr, eps, weight_decay, decouple: bool,
                  active, ws: Workspace = _FRESH) -> None:
    """The step: p ← (1 − λ·dlr)·p (decoupled), then p ← p − dlr·m/(√v + d·ε) (β1 = 0: dlr·d·g), with d
    the updated estimate and dlr the step's d·lr·bias-correction; inactive members stay. `grads` are
    as :func:`prodigy_accumulate` left them, d_before·g."""
    dlr = torch.where(active, dlr, 0.0)
    if decouple and (isinstance(weight_decay, Tensor) or weight_decay != 0):
        scale_(params, 1 - weight_decay * dlr)
    step = -dlr if exp_avgs is not None else -dlr * d / d_before
    _adam_step(params, exp_avgs if exp_avgs is not None else grads, exp_avg_sqs, d * eps, step, ws)


def _adam_step(params, exp_avgs, exp_avg_sqs, eps: Scalar, step: Scalar, ws: Workspace) -> None:
    """p ← p + step·m/(√v + ε), a range of tensors at a time (see :meth:`Workspace.spans`)."""
    for r in ws.spans(params):
        denom = ws.apply("sqrt", exp_avg_sqs[r])
        torch._foreach_add_(denom, _arg(eps, denom))
        if isinstance(step, Tensor):  # a device number: into the denominator (addcdiv takes python values only)
            torch._foreach_div_(denom, _arg(step, denom))
            torch._foreach_addcdiv_(params[r], exp_avgs[r], denom)
        else:
            torch._foreach_addcdiv_(params[r], exp_avgs[r], denom, value=step)


# -- D-Adaptation (dadaptation.DAdaptSGD / DAdaptAdam .step) -----------------------------------------------------


def dadapt_sgd_accumulate(grads, ss, *, dlr, like) -> tuple[Tensor, Tensor]:
    """One group's sums: returns (dlr·⟨g, s⟩ with s before the step, Σ‖s‖² after s ← s + dlr·g)."""
    numerator = dlr * total(grads, ss, like)
    axpy_(ss, grads, dlr)
    return numerator, sq_norms(ss, like).sum(-1) if ss else torch.zeros_like(like)


def dadapt_estimate(d, d_hat, growth_rate, live=True):
    """d ← max(d, min(d̂, d·growth_rate)) where the group's lr > 0 (both D-Adaptation rules)."""
    return gate(live, py_max(d, py_min(d_hat, d * growth_rate)), d)


def dadapt_sgd_apply(params, ss, x0s, *, ck, ws: Workspace = _FRESH) -> None:
    """z = x0 − s; p ← (1 − ck)·p + ck·z (ck = 1 − momentum; the authors keep z, a function of x0 and s:
    with ck = 1, p = z)."""
    if not isinstance(ck, Tensor) and ck == 1:
        for p, x0, s in zip(params, x0s, ss):
            torch.sub(x0, s, out=p)
        return
    for r in ws.spans(params):
        torch._foreach_lerp_(params[r], ws.apply("sub", x0s[r], ss[r]), coef(ck, params[r]))


def dadapt_adam_accumulate(grads, exp_avgs, exp_avg_sqs, ss, *, dlr, beta1, beta2, eps, like, live=True,
                           ws: Workspace = _FRESH):
    """One group's sums: returns (dlr·⟨g, s/(√v + ε)⟩ with s, v before the step, Σ|s| after it).

    m ← β1·m + dlr(1−β1)·g, v ← β2·v + (1−β2)·g², s ← √β2·s + dlr(1−√β2)·g; `live` as in Prodigy.
    """
    sqrt_beta2 = beta2 ** 0.5
    dot = torch.zeros_like(like)
    for r in ws.spans(grads):
        denom = ws.apply("sqrt", exp_avg_sqs[r])
        torch._foreach_add_(denom, _arg(eps, denom))
        dot = dot + total(grads[r], ws.apply("div", ss[r], denom, slot=1), like)
    numerator = gate(live, dlr * dot, 0.0)
    scale_(exp_avgs, gate(live, beta1, 1.0))
    axpy_(exp_avgs, grads, gate(live, dlr * (1 - beta1), 0.0))
    ema_sq_(exp_avg_sqs, grads, gate(live, beta2, 1.0), gate(live, 1 - beta2, 0.0), ws)
    scale_(ss, gate(live, sqrt_beta2, 1.0))
    axpy_(ss, grads, gate(live, dlr * (1 - sqrt_beta2), 0.0))
    return numerator, l1(ss, like, ws)


def dadapt_adam_apply(params, exp_avgs, exp_avg_sqs, *, dlr, eps, weight_decay, decouple: bool, active,
                      ws: Workspace = _FRESH) -> None:
    """p ← (1 − λ·dlr)·p (decoupled), then p ← p − m/(√v + ε) (dlr is inside m); inactive members stay
    (their ε is +∞ here, so m/(√v + ε) = 0)."""
    if decouple and (isinstance(weight_decay, Tensor) or weight_decay != 0):
        scale_(params, 1 - weight_decay * torch.where(active, dlr, 0.0))
    _adam_step(params, exp_avgs, exp_avg_sqs, gate(active, eps, math.inf), -1.0, ws)


# -- Schedule-Free (schedulefree.SGDScheduleFree / AdamWScheduleFree .step, foreach branch) ---------------------


def schedule_free_weights(k: int, *, lr, warmup_steps, r, weight_lr_power, lr_max, weight_sum):
    """Step k+1's numbers: returns (scheduled lr, lr_max, weight_sum, c_{k+1}).

    lr_t = lr·min(1, (k+1)/warmup_steps); lr_max ← max(lr_t, lr_max); w = (k+1)^r·lr_max^weight_lr_power;
    weight_sum ← weight_sum + w; c_{k+1} = w/weight_sum (0 when weight_sum = 0).
    """
    if isinstance(warmup_steps, Tensor):
        sched = torch.where(k < warmup_steps, (k + 1) / warmup_steps, 1.0)
    else:
        sched = (k + 1) / warmup_steps if k < warmup_steps else 1.0
    lr = lr * sched
    lr_max = py_max(lr, lr_max)
    weight = ((k + 1) ** r) * (lr_max ** weight_lr_power)
    weight_sum = weight_sum + weight
    return lr, lr_max, weight_sum, safe_div(weight, weight_sum)


def schedule_free_step(ys, zs, grads, *, lr, beta, ckp1) -> None:
    """y ← lerp(y, z, c); y ← y + lr(β(1−c) − 1)·g; z ← z − lr·g (β: SGD's momentum, AdamW's β1).

    `grads` are the step's gradients after the rule's own changes (SGD: coupled weight decay; AdamW:
    divided by the second moment, then + λ·y), which the authors make in the gradient tensors themselves.
    """
    torch._foreach_lerp_(ys, zs, coef(ckp1, ys))
    axpy_(ys, grads, lr * (beta * (1 - ckp1) - 1))
    axpy_(zs, grads, -lr)


def schedule_free_adamw_grads_(grads, exp_avg_sqs, ys, *, k: int, beta2, eps, weight_decay,
                               ws: Workspace = _FRESH) -> None:
    """AdamW's gradients, in place: v ← β2·v + (1−β2)·g²; g ← g/(√(v/(1−β2^{k+1})) + ε) + λ·y."""
    ema_sq_(exp_avg_sqs, grads, beta2, 1 - beta2, ws)
    for r in ws.spans(grads):
        denom = ws.apply("sqrt", exp_avg_sqs[r])  # √v/√(1−β2^{k+1}): the authors' √(v/(1−β2^{k+1}))
        torch._foreach_div_(denom, coef((1 - beta2 ** (k + 1)) ** 0.5, denom))
        torch._foreach_add_(denom, coef(eps, denom))
        torch._foreach_div_(grads[r], denom)
    if isinstance(weight_decay, Tensor) or weight_decay != 0:
        axpy_(grads, ys, weight_decay)


def schedule_free_swap(params, zs, weight) -> None:
    """p ← lerp(p, z, w): with w = 1 − 1/β from y to x (``.eval()``), with w = 1 − β from x to y (``.train()``)."""
    if params:
        torch._foreach_lerp_(params, zs, coef(weight, params))


# -- DoG / LDoG (dog.DoG / LDoG .step) --------------------------------------------------------------------------


def dog_eta(first: bool, params, grads, x0s, state: dict, *, lr, reps_rel, eps, layerwise: bool, like,
            ws: Workspace = _FRESH) -> Tensor:
    """η of the step; updates ``state["rbar"]`` and ``state["G"]`` (per tensor with `layerwise`).

    First step: r̄ = reps_rel·(1 + ‖x_0‖), G = Σ‖g‖² + ε; then r̄ ← max(r̄, ‖x − x_0‖), G ← G + Σ‖g‖²; η = lr·r̄/√G.
    DoG takes the norms over all tensors of the group (one η), LDoG per tensor (one η per tensor).
    `grads` holds None for a tensor without a gradient (it adds nothing to G).
    """
    present = [i for i, g in enumerate(grads) if g is not None]
    sq = torch.zeros(*like.shape, len(grads), dtype=like.dtype, device=like.device)
    if len(present) == len(grads):
        sq = sq_norms(grads, like)
    elif present:  # into the tensors that have a gradient
        index = torch.tensor(present, device=like.device)
        sq.index_copy_(-1, index, sq_norms([grads[i] for i in present], like))
    if not layerwise:
        sq = sq.sum(-1)

    def col(value):  # a member's value over its tensors' columns (LDoG: (K, n))
        return value[:, None] if layerwise and isinstance(value, Tensor) and value.dim() == 1 else value

    if first:
        norms = _norms(params, like, 2)
        state["rbar"] = col(reps_rel) * (1 + (norms if layerwise else torch.linalg.vector_norm(norms, dim=-1)))
        state["G"] = sq + col(eps)
    else:
        dist = distances(params, x0s, like, ws)
        state["rbar"] = torch.maximum(state["rbar"], dist if layerwise else torch.linalg.vector_norm(dist, dim=-1))
        state["G"] = state["G"] + sq
    return col(lr) * state["rbar"] / torch.sqrt(state["G"])


def dog_apply(params, grads, etas: list[Tensor]) -> None:
    """p ← p − η_i·g for each tensor i (η_i 0-dim, or (K,) per member)."""
    if params:
        torch._foreach_addcmul_(params, grads, [coef(-eta, [p])[0] for p, eta in zip(params, etas)])
