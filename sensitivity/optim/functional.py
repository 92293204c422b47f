"""Pure update math of the hypergradient (HD) family, over lists of tensors.

Contract (shared with ``cam_hd.py``; keep names and signatures stable):

* Every function takes parallel lists of tensors (one entry per parameter) and scalars.
  Nothing here reads optimizer state or param groups, and nothing synchronises with the device
  except :func:`lr_step` on python numbers.
* State arguments (momentum buffers, Adam moments) are updated in place, as each docstring says;
  returned directions are new tensors, and no other input is modified.
* Convention (Baydin et al. 2018, *Online Learning Rate Adaptation with Hypergradient Descent*;
  Mittal 2019, *Hypergradient based optimization methods*): the update is θ_t = θ_{t−1} − α_t·d_t where d_t is the
  base optimizer's direction, g_t includes coupled L2, and the hypergradient of the loss with
  respect to α is D_t = −Σ g_t·d_{t−1}.
* All multi-tensor work uses ``torch._foreach_*`` ops; reductions over the parameters stay on the
  device as tensors, so a step needs at most one host sync (reading D for the α update).

**The member axis.** A scalar (:data:`Scalar`) is either a python number, or one value per
member of a fused array (``sensitivity.fused``) as a (K,) tensor, for tensors whose leading
dimension is the member axis (member k's parameter is ``p[k]``). The same formulas then update
K independent runs at once, each with its own α, hyperparameters and hypergradient, and no
member's numbers enter another's: elementwise ops broadcast each member's value over its own
slice, and reductions (:func:`member_dot`) stop at the member axis. A solo optimizer passes
python numbers and runs exactly the ops it always did.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "LOPS",
    "Scalar",
    "per_tensor",
    "axpy_",
    "addcmul_",
    "sqrt",
    "where",
    "adam_moments_",
    "by_step",
    "pick",
    "read_floats",
    "member_dot",
    "coupled_l2",
    "sgdn_direction",
    "adam_direction",
    "adam_scaled_direction",
    "dot",
    "hypergradient",
    "lr_step",
]

LOPS = ("sgd", "sgdn", "adam")

Scalar = float | Tensor  # a python number, or a (K,) tensor: one value per member (see above)


def per_tensor(value: Scalar, tensors: list[Tensor]) -> float | list[Tensor]:
    """`value` as foreach ops take it: the number itself, or per tensor a (K, 1, …, 1) view of the
    members' values in that tensor's dtype, which broadcasts each member's value over its slice."""
    if not isinstance(value, Tensor):
        return value
    cast = {t.dtype: None for t in tensors}
    for dtype in cast:
        cast[dtype] = value.to(dtype)
    return [cast[t.dtype].view(-1, *([1] * (t.dim() - 1))) for t in tensors]


def axpy_(ys: list[Tensor], xs: list[Tensor], a: Scalar) -> None:
    """y ← y + a·x in place (one pass; a per-member `a` scales each member's slice)."""
    if isinstance(a, Tensor):
        torch._foreach_addcmul_(ys, xs, per_tensor(a, xs))
    else:
        torch._foreach_add_(ys, xs, alpha=a)


def addcmul_(ys: list[Tensor], xs: list[Tensor], zs: list[Tensor], scales: Sequence[Scalar]) -> None:
    """y ← y + s·x·z in place, with each tensor's own scale s (a number, or per member a (K,) tensor,
    folded into x: x should be the smaller operand, such as a rate that broadcasts over z)."""
    if not any(isinstance(s, Tensor) for s in scales):
        torch._foreach_addcmul_(ys, xs, zs, list(scales))
        return
    scaled = [x * per_tensor(s, [x])[0] if isinstance(s, Tensor) else x * s for x, s in zip(xs, scales)]
    torch._foreach_addcmul_(ys, scaled, zs)


def _axpy(ys: list[Tensor], xs: list[Tensor], a: Scalar) -> list[Tensor]:
    """y + a·x as new tensors."""
    if isinstance(a, Tensor):
        return list(torch._foreach_addcmul(ys, xs, per_tensor(a, xs)))
    return list(torch._foreach_add(ys, xs, alpha=a))


def sqrt(x: Scalar) -> Scalar:
    """√x of a number or of the members' values."""
    return torch.sqrt(x) if isinstance(x, Tensor) else math.sqrt(x)


def where(cond, a: Scalar, b: Scalar) -> Scalar:
    """`a` where `cond` holds, else `b`: python's conditional on numbers; per member (``torch.where``,
    no host sync) when `cond`, `a` or `b` is a (K,) tensor. Numbers become the tensors' dtype
    (float64, as the members' values, when only `cond` is a tensor)."""
    tensors = [x for x in (a, b, cond) if isinstance(x, Tensor)]
    if not tensors:
        return a if cond else b
    device = tensors[0].device
    values = [x for x in (a, b) if isinstance(x, Tensor)]
    dtype = values[0].dtype if values else (torch.float32 if device.type == "mps" else torch.float64)
    return torch.where(torch.as_tensor(cond, device=device), torch.as_tensor(a, dtype=dtype, device=device),
                       torch.as_tensor(b, dtype=dtype, device=device))


def by_step(steps: Sequence[int]) -> dict[int, list[int]]:
    """Indices of the tensors at each step count: one entry, unless some parameters skipped steps
    (grad None), which gives them other bias corrections."""
    out: dict[int, list[int]] = {}
    for i, t in enumerate(steps):
        out.setdefault(t, []).append(i)
    return out


def pick(lists: Sequence[list], idx: list[int]) -> list[list]:
    """The entries at `idx` of each list (the lists themselves when `idx` takes them all)."""
    if all(len(xs) == len(idx) for xs in lists):
        return list(lists)
    return [[xs[i] for i in idx] for xs in lists]


def read_floats(values: list[Tensor]) -> list[float]:
    """The entries of small tensors (flattened, in order) as python floats: one host sync when they
    share a device (one per tensor otherwise)."""
    if not values:
        return []
    if len(values) == 1 and values[0].dim() == 0:
        return [values[0].item()]
    if len({v.device for v in values}) > 1:
        values = [v.cpu() for v in values]
    return torch.cat([v.reshape(-1).to(torch.float64) for v in values]).tolist()


def coupled_l2(grads: list[Tensor], params: list[Tensor], weight_decay: Scalar) -> list[Tensor]:
    """g + wd·θ as new tensors; returns `grads` itself (same list, no copy) when wd == 0."""
    if not isinstance(weight_decay, Tensor) and weight_decay == 0:
        return grads
    return _axpy(grads, params, weight_decay)


def sgdn_direction(grads: list[Tensor], momentum_buffers: list[Tensor], *, momentum: Scalar) -> list[Tensor]:
    """torch's Nesterov direction (dampening 0).

    Updates `momentum_buffers` in place, buf ← μ·buf + g (a zero buffer reproduces torch's first
    step, which clones g), and returns new tensors d = g + μ·buf.
    """
    if not grads:
        return []
    torch._foreach_mul_(momentum_buffers, per_tensor(momentum, momentum_buffers))
    torch._foreach_add_(momentum_buffers, grads)
    return _axpy(grads, momentum_buffers, momentum)


def adam_direction(
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    step: int,
    beta1: float,
    beta2: float,
    eps: float,
) -> list[Tensor]:
    """torch.optim.Adam's direction m̂_t/(√v̂_t + ε) as new tensors.

    Updates the moments in place exactly as torch's foreach Adam does (m ← lerp(m, g, 1−β1),
    v ← β2·v + (1−β2)·g²); `step` is t after the increment (1 on the first step).
    """
    if not grads:
        return []
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = math.sqrt(1 - beta2**step)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    directions = torch._foreach_div(exp_avgs, denom)
    torch._foreach_div_(directions, bias_correction1)
    return list(directions)


def adam_moments_(grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], *, beta1: Scalar,
                  beta2: Scalar) -> None:
    """Adam's moments in place, as torch's foreach Adam (and RAdam) update them:
    m ← lerp(m, g, 1−β1), v ← β2·v + (1−β2)·g² (per-member β broadcast over each member's slice)."""
    torch._foreach_lerp_(exp_avgs, grads, per_tensor(1 - beta1, grads))
    torch._foreach_mul_(exp_avg_sqs, per_tensor(beta2, exp_avg_sqs))
    if isinstance(beta2, Tensor):
        torch._foreach_addcmul_(exp_avg_sqs, torch._foreach_mul(grads, per_tensor(1 - beta2, grads)), grads)
    else:
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)


def adam_scaled_direction(
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    steps: Sequence[int],
    beta1: Scalar,
    beta2: Scalar,
    eps: Scalar,
) -> tuple[list[Tensor], list[Scalar]]:
    """Adam's direction in factored form, with one allocation like torch's Adam step.

    Returns (u, c) with d_i = c_i·u_i, u_i = m_i/(√v_i + ε·√(1−β2^{t_i})) and
    c_i = √(1−β2^{t_i})/(1−β1^{t_i}); this equals m̂/(√v̂ + ε) up to round-off. `steps` holds each
    tensor's own t (after the increment), as torch keeps one step count per parameter.
    Updates the moments in place like :func:`adam_direction`. With per-member coefficients the
    scales c_i are (K,) tensors.
    """
    if not grads:
        return [], []
    adam_moments_(grads, exp_avgs, exp_avg_sqs, beta1=beta1, beta2=beta2)
    bias2_sqrt = [sqrt(1 - beta2**t) for t in steps]
    scales = [b2 / (1 - beta1**t) for b2, t in zip(bias2_sqrt, steps)]
    # Built in the one buffer that sqrt allocates (torch's Adam allocates the same one):
    # u = m · 1/(√v + ε·√bc2). An extra allocation costs more than the extra pass on CPU.
    u = torch._foreach_sqrt(exp_avg_sqs)
    if isinstance(eps * bias2_sqrt[0], Tensor):
        torch._foreach_add_(u, [per_tensor(eps * b, [ui])[0] for b, ui in zip(bias2_sqrt, u)])
    elif len(set(steps)) == 1:
        torch._foreach_add_(u, eps * bias2_sqrt[0])
    else:
        torch._foreach_add_(u, [eps * b for b in bias2_sqrt])
    torch._foreach_reciprocal_(u)
    torch._foreach_mul_(u, exp_avgs)
    return list(u), scales


_SMALL = 8192  # tensors up to this size share one concatenated dot on CPU


def dot(xs: list[Tensor], ys: list[Tensor], weights: Sequence[float] | None = None) -> Tensor:
    """Σ_i w_i·⟨x_i, y_i⟩ as a 0-dim tensor on the device of xs[0], without a host sync.

    On CPU a per-tensor ``torch.dot`` reads each operand once and allocates nothing; small
    tensors (biases, norms) are concatenated into one dot, since there the per-call overhead
    dominates. On accelerators one foreach product plus one concatenated sum needs a handful of
    kernel launches instead of one per tensor. Mixed dtypes are accumulated in float64.
    """
    if not xs:
        return torch.zeros((), dtype=torch.float64)
    if weights is not None and all(w == weights[0] for w in weights):
        return dot(xs, ys) * weights[0]
    device = xs[0].device
    same = len({x.dtype for x in xs}) == 1 and len({x.device for x in xs}) == 1
    if device.type != "cpu":
        prods = torch._foreach_mul(xs, ys)
        if weights is None and same:
            return torch.cat([p.reshape(-1) for p in prods]).sum()
        parts = [p.sum() for p in prods]
    elif weights is None and same and len(xs) > 2:
        parts, small_x, small_y = [], [], []
        for x, y in zip(xs, ys):
            if x.numel() <= _SMALL:  # (most are 1-D already: skip the reshape call)
                small_x.append(x if x.dim() == 1 else x.reshape(-1))
                small_y.append(y if y.dim() == 1 else y.reshape(-1))
            else:
                parts.append(torch.dot(x.reshape(-1), y.reshape(-1)))
        if small_x:
            parts.append(torch.dot(torch.cat(small_x), torch.cat(small_y)))
    else:
        parts = [torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(xs, ys)]
    if weights is not None:
        parts = [p * w for p, w in zip(parts, weights)]
    if len({p.dtype for p in parts}) > 1 or len({p.device for p in parts}) > 1:
        parts = [p.to(device=device, dtype=torch.float64) for p in parts]
    return torch.stack(parts).sum() if len(parts) > 1 else parts[0]


def member_dot(xs: list[Tensor], ys: list[Tensor], weights: Sequence[Scalar] | None = None) -> Tensor:
    """Per member k, Σ_i w_i·⟨x_i[k], y_i[k]⟩: a (K,) tensor for tensors with a leading member axis.

    One ``vecdot`` per tensor (several times faster on CPU than a batched matrix product or a
    loop of dots). Mixed dtypes are accumulated in float64.
    """
    parts = []
    for i, (x, y) in enumerate(zip(xs, ys)):
        k = x.shape[0]
        part = torch.linalg.vecdot(x.reshape(k, -1), y.reshape(k, -1))
        parts.append(part if weights is None else part * weights[i])
    if len({p.dtype for p in parts}) > 1:
        parts = [p.to(torch.float64) for p in parts]
    return torch.stack(parts).sum(0) if len(parts) > 1 else parts[0]


def hypergradient(grads: list[Tensor], prev_directions: list[Tensor]) -> Tensor:
    """D = −Σ g·d_prev (0-dim tensor): ∂f(θ_{t−1})/∂α_{t−1}, summed over the parameters sharing α."""
    return -dot(grads, prev_directions)


def lr_step(
    lop: str,
    alpha: Scalar,
    D: Scalar,
    state: dict,
    *,
    beta: Scalar,
    lop_momentum: Scalar = 0.9,
    lop_betas: tuple[Scalar, Scalar] = (0.9, 0.999),
    lop_eps: Scalar = 1e-8,
) -> Scalar:
    """One step of the lr-optimizer `lop` on α with hypergradient D; returns the new α.

    * ``sgd``:  α ← α − β·D                                   (Baydin et al. 2018)
    * ``sgdn``: b ← μ_h·b + D;  α ← α − β·(D + μ_h·b)          (Mittal 2019, Algorithm 1)
    * ``adam``: k ← k + 1;  m ← β1h·m + (1−β1h)·D;  v ← β2h·v + (1−β2h)·D²;
      α ← α − β·(m/(1−β1h^k)) / (√(v/(1−β2h^k)) + ε_h)        (Mittal 2019, Algorithm 2)

    `state` holds the lop's state and is updated in place: ``lop_momentum_buffer`` (sgdn),
    ``lop_step``, ``lop_exp_avg``, ``lop_exp_avg_sq`` (adam). Missing keys start at 0. On python
    numbers it is python floats; with a member axis, α and D are (K,) float64 tensors (α keeps the
    precision of a solo run's python float) and so is the state, with no host sync.
    """
    if not isinstance(alpha, Tensor):
        alpha, D = float(alpha), float(D)
    if lop == "sgd":
        return alpha - beta * D
    if lop == "sgdn":
        b = lop_momentum * state.get("lop_momentum_buffer", 0.0) + D
        state["lop_momentum_buffer"] = b
        return alpha - beta * (D + lop_momentum * b)
    if lop == "adam":
        beta1, beta2 = lop_betas
        k = state.get("lop_step", 0) + 1
        m = beta1 * state.get("lop_exp_avg", 0.0) + (1 - beta1) * D
        v = beta2 * state.get("lop_exp_avg_sq", 0.0) + (1 - beta2) * D * D
        state.update(lop_step=k, lop_exp_avg=m, lop_exp_avg_sq=v)
        m_hat = m / (1 - beta1**k)
        v_hat = v / (1 - beta2**k)
        return alpha - beta * m_hat / (sqrt(v_hat) + lop_eps)
    raise ValueError(f"unknown lr-optimizer {lop!r}; valid: {', '.join(LOPS)}")


def init_base_state(state: dict, param: Tensor, op: str) -> None:
    """Create the base optimizer's state for `param` on its first step (torch/optim's lazy init)."""
    if "step" in state:
        return
    state["step"] = 0
    if op == "sgdn":
        state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    elif op == "adam":
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
