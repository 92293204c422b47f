"""Pure update math of the learning-rate-free rules, over lists of tensors, with the member axis.

Prodigy (Mishchenko & Defazio 2024), D-Adaptation SGD and Adam (Defazio & Mishchenko 2023),
Schedule-Free SGD and AdamW (Defazio et al. 2024) and DoG/LDoG (Ivgi et al. 2023), each written
from its authors' package (prodigyopt 1.1.2, dadaptation 3.2, schedulefree 1.4.1, dog-optimizer
1.0.3) so that the same gradients give the same parameters; the classes in ``prodigy.py``,
``d_adapt.py``, ``schedule_free.py`` and ``dog.py`` gather the tensors and keep the state. This
module holds the shared pieces and the Schedule-Free and DoG math; ``d_adapt_functional.py``
holds Prodigy's and D-Adaptation's.

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

import torch
from torch import Tensor

from . import functional as F
from .members import member_dtype

__all__ = [
    "Scalar", "coef", "operand", "scale_", "axpy_", "ema_sq_", "nonzero", "py_max", "py_min", "gate", "safe_div",
    "total", "l1", "sq_norms", "distances", "total_of_differences", "Workspace", "FRESH_WORKSPACE",
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


def operand(value: Scalar, tensors: list[Tensor]):
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
        torch._foreach_mul_(xs, operand(a, xs))


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

    def keeps(self, tensors: list[Tensor]) -> bool:
        return self.keep if self.keep is not None else bool(tensors) and tensors[0].device.type == "cpu"

    def spans(self, tensors: list[Tensor]) -> list[slice]:
        """Ranges of `tensors` whose temporaries are made together."""
        if not self.keeps(tensors):
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
        if not self.keeps(args[0]):
            return list(getattr(torch, f"_foreach_{op}")(*args))
        out = self._views(args[0], slot)
        fn = getattr(torch, op)
        for o, *xs in zip(out, *(a if isinstance(a, list) else [a] * len(out) for a in args)):
            fn(*xs, out=o)
        return out


FRESH_WORKSPACE = Workspace()  # for callers that keep none (nothing outlives an op, so sharing it is safe)


def axpy_(ys: list[Tensor], xs: list[Tensor], a: Scalar) -> None:
    """y ← y + a·x in place (``y.add_(x, alpha=a)``)."""
    if not ys:
        return
    if isinstance(a, Tensor):
        torch._foreach_addcmul_(ys, xs, coef(a, xs))
    else:
        torch._foreach_add_(ys, xs, alpha=a)


def ema_sq_(vs: list[Tensor], grads: list[Tensor], beta: Scalar, c: Scalar, ws: Workspace = FRESH_WORKSPACE) -> None:
    """v ← β·v + c·g² in place (``v.mul_(β).addcmul_(g, g, value=c)``; a per-member c needs c·g first)."""
    scale_(vs, beta)
    if isinstance(c, Tensor):
        for r in ws.spans(vs):
            torch._foreach_addcmul_(vs[r], ws.apply("mul", grads[r], coef(c, grads[r])), grads[r])
    elif vs:
        torch._foreach_addcmul_(vs, grads, grads, value=c)


def nonzero(value: Scalar) -> bool:
    """Whether `value` may be nonzero: a number other than 0, or any tensor (members' values; no sync)."""
    return isinstance(value, Tensor) or value != 0


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


def l1(xs: list[Tensor], like: Tensor, ws: Workspace = FRESH_WORKSPACE) -> Tensor:
    """Σ_i Σ|x_i| (``sum(x.abs().sum())``): foreach 1-norms, or on CPU |x| into kept memory and summed
    (CPU's 1-norm kernel is several times slower than the two passes)."""
    if not xs:
        return torch.zeros_like(like)
    if not ws.keeps(xs):
        return _norms(xs, like, 1).sum(-1)
    parts = [a.sum() if like.dim() == 0 else a.reshape(a.shape[0], -1).sum(1)
             for r in ws.spans(xs) for a in ws.apply("abs", xs[r])]
    return torch.stack([_like(part, like) for part in parts]).sum(0)


def sq_norms(xs: list[Tensor], like: Tensor) -> Tensor:
    """‖x_i‖² of each tensor: (n,) solo, (K, n) with a member axis."""
    return _norms(xs, like, 2).square()


def distances(xs: list[Tensor], x0s: list[Tensor], like: Tensor, ws: Workspace = FRESH_WORKSPACE) -> Tensor:
    """‖x_i − x0_i‖ of each tensor: (n,) solo, (K, n) with a member axis."""
    return torch.cat([_norms(ws.apply("sub", xs[r], x0s[r]), like, 2) for r in ws.spans(xs)], dim=-1)


def total_of_differences(gs: list[Tensor], xs: list[Tensor], ys: list[Tensor], like: Tensor,
                         ws: Workspace = FRESH_WORKSPACE) -> Tensor:
    """Σ_i ⟨g_i, x_i − y_i⟩ (the difference formed, not ⟨g, x⟩ − ⟨g, y⟩, which cancels)."""
    out = torch.zeros_like(like)
    for r in ws.spans(gs):
        out = out + total(gs[r], ws.apply("sub", xs[r], ys[r]), like)
    return out


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
                               ws: Workspace = FRESH_WORKSPACE) -> None:
    """AdamW's gradients, in place: v ← β2·v + (1−β2)·g²; g ← g/(√(v/(1−β2^{k+1})) + ε) + λ·y."""
    ema_sq_(exp_avg_sqs, grads, beta2, 1 - beta2, ws)
    for r in ws.spans(grads):
        denom = ws.apply("sqrt", exp_avg_sqs[r])  # √v/√(1−β2^{k+1}): the authors' √(v/(1−β2^{k+1}))
        torch._foreach_div_(denom, coef((1 - beta2 ** (k + 1)) ** 0.5, denom))
        torch._foreach_add_(denom, coef(eps, denom))
        torch._foreach_div_(grads[r], denom)
    if nonzero(weight_decay):
        axpy_(grads, ys, weight_decay)


def schedule_free_swap(params, zs, weight) -> None:
    """p ← lerp(p, z, w): with w = 1 − 1/β from y to x (``.eval()``), with w = 1 − β from x to y (``.train()``)."""
    if params:
        torch._foreach_lerp_(params, zs, coef(weight, params))


# -- DoG / LDoG (dog.DoG / LDoG .step) --------------------------------------------------------------------------


def dog_eta(first: bool, params, grads, x0s, state: dict, *, lr, reps_rel, eps, layerwise: bool, like,
            ws: Workspace = FRESH_WORKSPACE) -> Tensor:
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
