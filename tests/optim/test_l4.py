"""L4 (Rolinek & Martius 2018), following the reference implementation's update rule."""

from __future__ import annotations

import io
import math

import pytest
import torch
from optim_cases import L4_NAMES, batches, flat, tiny_model, train

from sensitivity.optim import create


def _run(name: str, steps: int, **hp):
    """f(θ) = ½θ², θ0 = 1; returns (θ, η, L_min) after each step."""
    theta = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    opt = create(name, [theta], **hp)
    out = []
    for _ in range(steps):
        def closure():
            opt.zero_grad()
            loss = 0.5 * (theta**2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        out.append((theta.item(), opt.param_groups[0]["lr"], opt.state[theta]["l4_min_loss"]))
    return out


def test_hand_computed_adam_l4():
    # α = 0.15, γ = 0.9, γ0 = 0.75, τ = 1000, ε = 0 (Adam direction), 1e-12 in the η denominator.
    # t=1: L = 0.5, L_min = 0.75·0.5 = 0.375; m̂ = v̂ = 1 so d = ĝ = 1;
    #      η = 0.15·(0.5 − 0.9·0.375)/(1 + 1e-12); θ = 1 − η; then L_min = 0.375·1.001
    eta1 = 0.15 * (0.5 - 0.9 * 0.375) / (1 + 1e-12)
    theta1 = 1 - eta1
    # t=2: L = ½θ1², L_min = min(0.375375, L) = 0.375375; m = 0.09 + 0.1·θ1, v = 0.000999 + 0.001·θ1²;
    #      ĝ = m/0.19, d = ĝ/√(v/0.001999); η = 0.15·(L − 0.9·0.375375)/(ĝ·d + 1e-12)
    loss2 = 0.5 * theta1**2
    g_hat = (0.09 + 0.1 * theta1) / 0.19
    d = g_hat / math.sqrt((0.000999 + 0.001 * theta1**2) / 0.001999)
    eta2 = 0.15 * (loss2 - 0.9 * 0.375375) / (g_hat * d + 1e-12)
    got = _run("adam-l4", 2, eps=0.0)
    assert eta1 == pytest.approx(0.024375, abs=1e-12)
    assert got[0][:2] == (pytest.approx(theta1, abs=1e-15), pytest.approx(eta1, abs=1e-15))
    assert got[0][2] == pytest.approx(0.375 * 1.001, abs=1e-15)
    assert got[1][1] == pytest.approx(eta2, rel=1e-13)
    assert got[1][0] == pytest.approx(theta1 - eta2 * d, rel=1e-13)
    assert got[1][2] == pytest.approx(0.375375 * 1.001, abs=1e-15)


def test_hand_computed_sgdn_l4_uses_the_momentum_average_as_direction():
    # t=1 as for adam-l4 (ĝ = d = 1); t=2: d = ĝ = (0.09 + 0.1·θ1)/0.19, η = 0.15·(L − 0.9·0.375375)/(ĝ² + 1e-12)
    eta1 = 0.15 * (0.5 - 0.9 * 0.375) / (1 + 1e-12)
    theta1 = 1 - eta1
    g_hat = (0.09 + 0.1 * theta1) / 0.19
    eta2 = 0.15 * (0.5 * theta1**2 - 0.9 * 0.375375) / (g_hat**2 + 1e-12)
    got = _run("sgdn-l4", 2)
    assert got[0][0] == pytest.approx(theta1, abs=1e-15)
    assert got[1][1] == pytest.approx(eta2, rel=1e-13)
    assert got[1][0] == pytest.approx(theta1 - eta2 * g_hat, rel=1e-13)


def test_min_loss_follows_new_minima_and_is_slowly_forgotten():
    got = _run("sgdn-l4", 30, tau=10.0)
    # L_t is the loss at θ_{t−1}; after step t, L_min = (1 + 1/τ)·min(L_min, L_t), L_min = γ0·L_1 at t = 1.
    losses = [0.5] + [0.5 * theta**2 for theta, _, _ in got[:-1]]
    expected = 0.75 * losses[0] * 1.1
    assert got[0][2] == pytest.approx(expected, rel=1e-14)
    for loss, (_, _, min_loss) in zip(losses[1:], got[1:]):
        expected = 1.1 * min(expected, loss)
        assert min_loss == pytest.approx(expected, rel=1e-14)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", L4_NAMES)
def test_trains_round_trips_and_reports_its_step_size(name):
    model = tiny_model()
    opt = create(name, model.parameters())
    assert opt.param_groups[0]["lr"] == 0.0 and opt.param_groups[0]["alpha"] == 0.15
    data = batches(count=8)
    losses = train(model, opt, data[:4])
    assert losses[-1] < losses[0]
    assert opt.param_groups[0]["lr"] > 0
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    other = tiny_model(seed=5)
    other.load_state_dict(saved["model"])
    opt2 = create(name, other.parameters())
    opt2.load_state_dict(saved["opt"])
    train(model, opt, data[4:])
    train(other, opt2, data[4:])
    assert torch.equal(flat(model), flat(other))
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_groups_share_the_loss_target_and_scale_by_their_fraction():
    model = tiny_model()
    first, *rest = list(model.parameters())
    opt = create("adam-l4", [{"params": [first], "lr": 0.3}, {"params": rest}])
    train(model, opt, batches(count=2))
    assert opt.param_groups[0]["lr"] == pytest.approx(2 * opt.param_groups[1]["lr"], rel=1e-12)
