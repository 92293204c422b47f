"""The pure functions behind the HD family (shared with CAM-HD)."""

from __future__ import annotations

import math

import pytest
import torch

from sensitivity.optim import functional as F

SHAPES = [(3, 2), (4,), (2, 1, 3)]


def _tensors(seed: int, dtype=torch.float64) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]


def _torch_directions(make_opt, grads_per_step):
    """Directions −Δθ of a torch optimizer built with lr = 1, one per step."""
    params = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in SHAPES]
    opt = make_opt(params)
    out = []
    for grads in grads_per_step:
        before = [p.detach().clone() for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        out.append([b - p.detach() for b, p in zip(before, params)])
    return out, opt, params


def test_coupled_l2():
    grads, params = _tensors(0), _tensors(1)
    assert F.coupled_l2(grads, params, 0.0) is grads
    copies = [g.clone() for g in grads]
    out = F.coupled_l2(grads, params, 0.1)
    for o, g, p, c in zip(out, grads, params, copies):
        torch.testing.assert_close(o, g + 0.1 * p, rtol=0, atol=1e-15)
        assert torch.equal(g, c)  # inputs untouched


def test_sgdn_direction_is_torch_nesterov():
    steps = [_tensors(s) for s in range(3)]
    expected, _, _ = _torch_directions(
        lambda p: torch.optim.SGD(p, lr=1.0, momentum=0.9, nesterov=True, foreach=False), steps
    )
    bufs = [torch.zeros(s, dtype=torch.float64) for s in SHAPES]
    for grads, exp in zip(steps, expected):
        d = F.sgdn_direction(grads, bufs, momentum=0.9)
        for di, ei in zip(d, exp):
            torch.testing.assert_close(di, ei, rtol=1e-14, atol=1e-15)


def test_adam_direction_is_torch_adam_and_scaled_form_agrees():
    steps = [_tensors(s) for s in range(4)]
    expected, opt, params = _torch_directions(lambda p: torch.optim.Adam(p, lr=1.0, foreach=False), steps)
    m1 = [torch.zeros(s, dtype=torch.float64) for s in SHAPES]
    v1 = [torch.zeros(s, dtype=torch.float64) for s in SHAPES]
    m2, v2 = [x.clone() for x in m1], [x.clone() for x in v1]
    for t, (grads, exp) in enumerate(zip(steps, expected), start=1):
        d = F.adam_direction(grads, m1, v1, step=t, beta1=0.9, beta2=0.999, eps=1e-8)
        u, c = F.adam_scaled_direction(grads, m2, v2, steps=[t] * 3, beta1=0.9, beta2=0.999, eps=1e-8)
        for di, ei, ui, ci in zip(d, exp, u, c):
            torch.testing.assert_close(di, ei, rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(ci * ui, ei, rtol=1e-12, atol=1e-14)
    for p, m, v in zip(params, m1, v1):
        torch.testing.assert_close(opt.state[p]["exp_avg"], m, rtol=1e-14, atol=0)
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"], v, rtol=1e-14, atol=0)


def test_adam_scaled_direction_with_different_steps_per_tensor():
    grads = _tensors(0)
    m = [torch.full(s, 0.3, dtype=torch.float64) for s in SHAPES]
    v = [torch.full(s, 0.2, dtype=torch.float64) for s in SHAPES]
    m_ref, v_ref = [x.clone() for x in m], [x.clone() for x in v]
    u, c = F.adam_scaled_direction(grads, m, v, steps=[1, 5, 9], beta1=0.9, beta2=0.999, eps=1e-3)
    for i, t in enumerate([1, 5, 9]):
        d = F.adam_direction([grads[i]], [m_ref[i]], [v_ref[i]], step=t, beta1=0.9, beta2=0.999, eps=1e-3)[0]
        torch.testing.assert_close(c[i] * u[i], d, rtol=1e-12, atol=1e-15)


def test_hypergradient_and_weighted_dot():
    g, d = _tensors(0), _tensors(1)
    expected = -sum(float((a * b).sum()) for a, b in zip(g, d))
    D = F.hypergradient(g, d)
    assert D.dim() == 0 and D.item() == pytest.approx(expected, rel=1e-14)
    w = [2.0, -1.0, 0.5]
    weighted = sum(wi * float((a * b).sum()) for wi, a, b in zip(w, g, d))
    assert F.dot(g, d, w).item() == pytest.approx(weighted, rel=1e-14)
    mixed = F.dot([g[0].float(), g[1]], [d[0].float(), d[1]])
    assert mixed.dtype == torch.float64
    assert F.hypergradient([], []).item() == 0.0


def test_lr_step_rules():
    assert F.lr_step("sgd", 0.1, -2.0, {}, beta=0.5) == pytest.approx(1.1)
    state = {}
    # b = −2, α = 0.1 − 0.5·(−2 + 0.9·(−2)) = 2.0; then b = 0.9·(−2) + 1 = −0.8, α = 2 − 0.5·(1 − 0.72) = 1.86
    assert F.lr_step("sgdn", 0.1, -2.0, state, beta=0.5, lop_momentum=0.9) == pytest.approx(2.0)
    assert state == {"lop_momentum_buffer": pytest.approx(-2.0)}
    assert F.lr_step("sgdn", 2.0, 1.0, state, beta=0.5, lop_momentum=0.9) == pytest.approx(1.86)
    state = {}
    # k = 1: m = 0.1·4 = 0.4, v = 0.001·16 = 0.016, m̂ = 4, v̂ = 16: α = 1 − 0.5·4/(4 + 0) = 0.5
    assert F.lr_step("adam", 1.0, 4.0, state, beta=0.5, lop_betas=(0.9, 0.999), lop_eps=0.0) == pytest.approx(0.5)
    assert state == {"lop_step": 1, "lop_exp_avg": pytest.approx(0.4), "lop_exp_avg_sq": pytest.approx(0.016)}
    # k = 2, D = −4: m = 0.36 − 0.4 = −0.04, v = 0.015984 + 0.016 = 0.031984
    m_hat, v_hat = -0.04 / (1 - 0.81), 0.031984 / (1 - 0.999**2)
    got = F.lr_step("adam", 0.5, -4.0, state, beta=0.5, lop_betas=(0.9, 0.999), lop_eps=0.0)
    assert got == pytest.approx(0.5 - 0.5 * m_hat / math.sqrt(v_hat), rel=1e-12)
    with pytest.raises(ValueError, match="unknown lr-optimizer 'rmsprop'; valid: sgd, sgdn, adam"):
        F.lr_step("rmsprop", 0.1, 1.0, {}, beta=0.1)


def test_dot_mixes_large_and_small_tensors():
    gen = torch.Generator().manual_seed(3)
    shapes = [(100, 100), (7,), (3, 4), (9000,), (2, 2, 2)]
    xs = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    ys = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    expected = sum(float((x * y).sum()) for x, y in zip(xs, ys))
    assert F.dot(xs, ys).item() == pytest.approx(expected, rel=1e-13)
    # non-contiguous operands (transposed views) give the same value
    xt = [xs[0].t()] + xs[1:]
    yt = [ys[0].t()] + ys[1:]
    assert F.dot(xt, yt).item() == pytest.approx(expected, rel=1e-13)
