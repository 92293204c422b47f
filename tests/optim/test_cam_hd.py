"""CAM-HD (issue 3): invariants against HD and torch.optim, a hand-computed example, the curvature
check, state round trips, lr-decay rescaling, and bad input. Budget: ≤ ~40 s on 2 busy cores."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from sensitivity.optim import available, create

OPS = ("sgd", "sgdn", "adam")
ALL_LEVELS = ("parameter", "unit", "layer", "global")
# Per-op settings where the hypergradient visibly moves the rates within a few steps.
HP = {
    "sgd": {"lr": 0.1, "beta": 0.02},
    "sgdn": {"lr": 0.05, "beta": 0.01},
    "adam": {"lr": 0.01, "beta": 1e-4},
}
BASE = {
    "sgd": lambda p, lr, wd: torch.optim.SGD(p, lr=lr, weight_decay=wd),
    "sgdn": lambda p, lr, wd: torch.optim.SGD(p, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd),
    "adam": lambda p, lr, wd: torch.optim.Adam(p, lr=lr, weight_decay=wd),
}
LEVEL_SETS = [
    (("parameter",), (1.0,)),
    (("unit",), (1.0,)),
    (("layer",), (1.0,)),
    (("global",), (1.0,)),
    (("unit", "global"), (0.2, 0.8)),
    (("layer", "global"), (0.5, 0.5)),
    (("parameter", "layer", "global"), (0.3, 0.3, 0.4)),
    (ALL_LEVELS, (0.1, 0.2, 0.3, 0.4)),
]


def _model(dtype=torch.float64, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(dtype)


def _batches(dtype=torch.float64, count=4):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(6, 3, generator=gen).to(dtype), torch.randn(6, 2, generator=gen).to(dtype))
            for _ in range(count)]


def _step(model, opt, batch) -> None:
    x, y = batch
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# -- invariants ---------------------------------------------------------------------------------
@pytest.mark.parametrize("op", OPS)
def test_layer_and_global_with_all_weight_on_global_is_hd(op):
    ref, cam_model = _model(), _model()
    hd = create(f"{op}-hd", ref.parameters(), weight_decay=1e-2, **HP[op])
    cam = create(
        f"{op}-cam-hd", cam_model.named_parameters(), weight_decay=1e-2,
        levels=("layer", "global"), gammas=(0.0, 1.0), delta=0.0, **HP[op],
    )
    for batch in _batches() * 2:
        _step(ref, hd, batch)
        _step(cam_model, cam, batch)
        torch.testing.assert_close(_flat(cam_model), _flat(ref), rtol=1e-11, atol=1e-13)
        assert cam.param_groups[0]["lr"] == pytest.approx(hd.param_groups[0]["lr"], rel=1e-11)
    assert hd.param_groups[0]["lr"] != pytest.approx(HP[op]["lr"], rel=1e-3)  # HD really moved α
    assert cam.gammas == (0.0, 1.0)


@pytest.mark.parametrize("levels,gammas", LEVEL_SETS, ids=lambda v: "+".join(v) if isinstance(v[0], str) else None)
@pytest.mark.parametrize("op", OPS)
def test_zero_beta_and_delta_is_the_torch_base_optimizer(op, levels, gammas):
    ref, cam_model = _model(), _model()
    base = BASE[op](ref.parameters(), HP[op]["lr"], 1e-2)
    cam = create(
        f"{op}-cam-hd", cam_model.named_parameters(), lr=HP[op]["lr"], beta=0.0, delta=0.0,
        weight_decay=1e-2, levels=levels, gammas=gammas,
    )
    for batch in _batches():
        _step(ref, base, batch)
        _step(cam_model, cam, batch)
    torch.testing.assert_close(_flat(cam_model), _flat(ref), rtol=1e-12, atol=1e-14)
    assert cam.param_groups[0]["lr"] == pytest.approx(HP[op]["lr"], rel=1e-12)


@pytest.mark.parametrize("op", OPS)
def test_gammas_stay_on_the_simplex_and_move(op):
    model = _model()
    start = (0.1, 0.2, 0.3, 0.4)
    opt = create(f"{op}-cam-hd", model.named_parameters(), levels=ALL_LEVELS, gammas=start, delta=5.0, **HP[op])
    for batch in _batches() * 2:
        _step(model, opt, batch)
        assert sum(opt.gammas) == pytest.approx(1.0, abs=1e-12)
        assert all(math.isfinite(g) and g >= 0 for g in opt.gammas)
    assert max(abs(a - b) for a, b in zip(opt.gammas, start)) > 1e-4
    # A huge δ drives some γ below 0: they are clamped and the rest renormalised.
    model = _model()
    huge = create(f"{op}-cam-hd", model.named_parameters(), levels=ALL_LEVELS, gammas=start, delta=1e12, **HP[op])
    for batch in _batches():
        _step(model, huge, batch)
        assert sum(huge.gammas) == pytest.approx(1.0, abs=1e-12)
        assert all(math.isfinite(g) and g >= 0 for g in huge.gammas)


def test_gammas_are_clamped_at_zero_and_keep_their_values_when_all_clamp():
    # A huge δ on the two-curvature quadratic: at steps 2 and 3 every γ − δ·∂f/∂γ is negative (all
    # clamp to 0: γ keep their values); at steps 4 and 5 the two gradients have opposite signs, so
    # one γ clamps to 0 and the other renormalises to 1.
    x = torch.full((4, 3), 0.3, dtype=torch.float64, requires_grad=True)
    y = torch.full((4, 3), 10.0, dtype=torch.float64, requires_grad=True)
    opt = create("sgd-cam-hd", [x, y], lr=0.3, beta=1e-3, levels=("layer", "global"), gammas=(0.5, 0.5), delta=100.0)
    seen = []
    for _ in range(5):
        opt.zero_grad()
        (5.0 * x.square().sum() + 0.05 * y.square().sum()).backward()
        opt.step()
        seen.append(opt.gammas)
    assert seen == [(0.5, 0.5), (0.5, 0.5), (0.5, 0.5), (0.0, 1.0), (1.0, 0.0)]


@pytest.mark.parametrize("op", OPS)
def test_gradients_zeroed_in_place_give_the_same_steps(op):
    # zero_grad(set_to_none=False) reuses the gradient tensors: d_{t−1} must not live in them.
    runs = []
    for set_to_none in (True, False):
        model = _model()
        opt = create(f"{op}-cam-hd", model.named_parameters(), levels=ALL_LEVELS, gammas=(0.1, 0.2, 0.3, 0.4),
                     delta=0.5, **HP[op])
        for x, y in _batches():
            opt.zero_grad(set_to_none=set_to_none)
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        runs.append((_flat(model), opt.gammas))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]


@pytest.mark.parametrize("op", OPS)
def test_state_dict_round_trip_continues_identically(op):
    kw = dict(levels=ALL_LEVELS, gammas=(0.1, 0.2, 0.3, 0.4), delta=0.5, decay_rate=0.05, weight_decay=1e-3, **HP[op])
    batches = _batches()
    model = _model()
    opt = create(f"{op}-cam-hd", model.named_parameters(), **kw)
    for batch in batches[:3]:
        _step(model, opt, batch)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    saved_model = copy.deepcopy(model.state_dict())
    for batch in batches * 2:
        _step(model, opt, batch)

    resumed = _model(seed=7)
    resumed.load_state_dict(saved_model)
    opt2 = create(f"{op}-cam-hd", resumed.named_parameters(), **kw)
    buffer.seek(0)
    opt2.load_state_dict(torch.load(buffer))
    for batch in batches * 2:
        _step(resumed, opt2, batch)
    assert torch.equal(_flat(resumed), _flat(model))
    assert opt2.gammas == opt.gammas
    assert opt2.curve_metrics() == opt.curve_metrics()


# -- exact small cases --------------------------------------------------------------------------
def _lin(W, b):
    lin = nn.Linear(1, 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(W, dtype=torch.float64))
        lin.bias.copy_(torch.tensor(b, dtype=torch.float64))
    return lin


def _half_square_step(lin, opt):
    # f = ½ Σ θ² over the weight and the bias, so g = θ.
    opt.zero_grad()
    (0.5 * (lin.weight.square().sum() + lin.bias.square().sum())).backward()
    opt.step()


def test_hand_computed_two_steps_unit_and_global():
    # One module: W = [[1], [2]], b = [1, -1]; unit 0 = {W00, b0}, unit 1 = {W10, b1}; n = 4, n_i = 2.
    lin = _lin([[1.0], [2.0]], [1.0, -1.0])
    opt = create("sgd-cam-hd", lin.named_parameters(), lr=0.25, beta=1 / 16, levels=("unit", "global"),
                 gammas=(0.25, 0.75), delta=0.5)
    # Step 1: every rate is 0.25, κ = 0.25, θ1 = 0.75·θ0.
    _half_square_step(lin, opt)
    torch.testing.assert_close(lin.weight, torch.tensor([[0.75], [1.5]], dtype=torch.float64), rtol=0, atol=0)
    torch.testing.assert_close(lin.bias, torch.tensor([0.75, -0.75], dtype=torch.float64), rtol=0, atol=0)
    assert opt.gammas == (0.25, 0.75) and opt.param_groups[0]["lr"] == 0.25
    # Step 2: g2 = θ1, d1 = θ0, D = −g2·d1 = −0.75·θ0² = W: [−0.75, −3], b: [−0.75, −0.75].
    #   unit sums: u0 = −1.5, u1 = −3.75; global sum −5.25.
    #   α_u0 = 0.25 − (1/16)(0.25)(4/2)(−1.5)  = 0.296875
    #   α_u1 = 0.25 − (1/16)(0.25)(4/2)(−3.75) = 0.3671875
    #   α_g  = 0.25 − (1/16)(0.75)(−5.25)      = 0.49609375
    #   ∂f/∂γ_u = ∂f/∂γ_g = Σ D·0.25 = −1.3125 → γ = (0.25 + 0.65625, 0.75 + 0.65625) / 2.3125
    _half_square_step(lin, opt)
    g_u, g_g = 0.90625 / 2.3125, 1.40625 / 2.3125
    assert opt.gammas == pytest.approx((g_u, g_g), rel=1e-15)
    k0 = g_u * 0.296875 + g_g * 0.49609375
    k1 = g_u * 0.3671875 + g_g * 0.49609375
    # θ2 = θ1 − κ ⊙ g2 = θ1·(1 − κ_unit)
    expected_w = torch.tensor([[0.75 * (1 - k0)], [1.5 * (1 - k1)]], dtype=torch.float64)
    expected_b = torch.tensor([0.75 * (1 - k0), -0.75 * (1 - k1)], dtype=torch.float64)
    torch.testing.assert_close(lin.weight, expected_w, rtol=1e-15, atol=0)
    torch.testing.assert_close(lin.bias, expected_b, rtol=1e-15, atol=0)
    assert opt.level_lrs() == pytest.approx({"unit": (0.296875 + 0.3671875) / 2, "global": 0.49609375}, rel=1e-15)
    assert opt.curve_metrics()["lr"] == pytest.approx(g_u * 0.33203125 + g_g * 0.49609375, rel=1e-15)


def test_hand_computed_two_steps_parameter_and_global():
    # Same problem; the parameter level has n_i = 1, so its β is scaled by n = 4.
    lin = _lin([[1.0], [2.0]], [1.0, -1.0])
    opt = create("sgd-cam-hd", lin.named_parameters(), lr=0.25, beta=1 / 16, levels=("parameter", "global"),
                 gammas=(0.5, 0.5), delta=0.0)
    _half_square_step(lin, opt)
    _half_square_step(lin, opt)
    # D = (W: −0.75, −3; b: −0.75, −0.75): α_p = 0.25 − (1/16)(0.5)(4)·D_p, α_g = 0.25 − (1/16)(0.5)(−5.25)
    alpha_p = [0.25 + 0.125 * 0.75, 0.25 + 0.125 * 3.0, 0.25 + 0.125 * 0.75, 0.25 + 0.125 * 0.75]
    alpha_g = 0.25 + 0.03125 * 5.25
    kappa = [0.5 * a + 0.5 * alpha_g for a in alpha_p]
    theta1 = [0.75, 1.5, 0.75, -0.75]
    expected = torch.tensor([t * (1 - k) for t, k in zip(theta1, kappa)], dtype=torch.float64)
    torch.testing.assert_close(torch.cat([lin.weight.reshape(-1), lin.bias]), expected, rtol=1e-15, atol=0)
    weight_rates = opt.state[lin.weight]["lr_parameter"].reshape(-1)
    torch.testing.assert_close(weight_rates, torch.tensor(alpha_p[:2], dtype=torch.float64))
    assert opt.level_lrs() == pytest.approx({"parameter": sum(alpha_p) / 4, "global": alpha_g}, rel=1e-15)


def test_units_follow_dim0_and_layers_follow_module_names():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 5)).double()
    opt = create("sgd-cam-hd", net.named_parameters(), levels=("unit", "layer", "global"), gammas=(0.2, 0.3, 0.5))
    rates = opt.state["cam_hd"]["groups"][0]
    # conv: 8 filters (weight 3x3x3 + its bias element); BatchNorm: 8 channels; linear: 5 units.
    assert rates["unit"].numel() == 8 + 8 + 5 and rates["layer"].numel() == 3
    net(torch.randn(2, 3, 3, 3, dtype=torch.float64)).square().sum().backward()
    opt.step()
    net.zero_grad()
    net(torch.randn(2, 3, 3, 3, dtype=torch.float64)).square().sum().backward()
    opt.step()
    # Each conv filter's rate moved by its own hypergradient: the 8 unit rates differ.
    assert len(set(rates["unit"][:8].tolist())) == 8


def test_hand_computed_decay_scales_hypergradients_by_tau_of_the_step():
    # Global level only (so HD) with τ(t) = exp(−0.1 t) and α∞ = 0.125, same problem as above.
    lin = _lin([[1.0], [2.0]], [1.0, -1.0])
    opt = create("sgd-cam-hd", lin.named_parameters(), lr=0.25, beta=1 / 16, levels=("global",), gammas=(1.0,),
                 delta=0.0, decay_rate=0.1, alpha_inf=0.125)
    tau1, tau2 = math.exp(-0.1), math.exp(-0.2)
    k1 = tau1 * 0.25 + (1 - tau1) * 0.125
    _half_square_step(lin, opt)
    assert opt.param_groups[0]["lr"] == pytest.approx(k1, rel=1e-15)
    # D = −θ1·θ0 = −(1 − κ1)·θ0², Σθ0² = 7; scaled by τ(2) at step 2 (the paper's τ(t)),
    # so α ← 0.25 + (1/16)·τ(2)·7·(1 − κ1).
    alpha = 0.25 + (1 / 16) * tau2 * 7 * (1 - k1)
    k2 = tau2 * alpha + (1 - tau2) * 0.125
    _half_square_step(lin, opt)
    expected = torch.tensor([1.0, 2.0, 1.0, -1.0], dtype=torch.float64) * (1 - k1) * (1 - k2)
    torch.testing.assert_close(torch.cat([lin.weight.reshape(-1), lin.bias]), expected, rtol=1e-14, atol=0)
    assert opt.level_lrs()["global"] == pytest.approx(alpha, rel=1e-15)


@pytest.mark.parametrize("op", OPS)
def test_flatter_layer_gets_the_larger_layer_lr(op):
    # f = ½·10·‖x‖² + ½·0.1·‖y‖², started where both layers have gradient 1 per element, so only the
    # curvature differs. HD raises both rates from a small α0, but the sharp layer's rate stops near
    # 1/10 (its iterates start to oscillate) while the flat layer's keeps growing.
    x = torch.full((4, 3), 0.1, dtype=torch.float64, requires_grad=True)
    y = torch.full((4, 3), 10.0, dtype=torch.float64, requires_grad=True)
    opt = create(f"{op}-cam-hd", [x, y], lr=0.01, beta=1e-3, levels=("layer", "global"), gammas=(0.5, 0.5), delta=0.0)
    for _ in range(40):
        opt.zero_grad()
        (5.0 * x.square().sum() + 0.05 * y.square().sum()).backward()
        opt.step()
    sharp, flat = opt.state["cam_hd"]["groups"][0]["layer"].tolist()
    assert flat > 4 * sharp and flat > 0.01
    assert 0 < sharp < 0.2  # stable for curvature 10


# -- semantics around the step ------------------------------------------------------------------
@pytest.mark.parametrize("op", OPS)
def test_scheduler_decay_scales_every_level(op):
    # β = δ = 0: CAM-HD under StepLR must match the torch optimizer under the same StepLR.
    ref, cam_model = _model(), _model()
    base = BASE[op](ref.parameters(), HP[op]["lr"], 0.0)
    cam = create(f"{op}-cam-hd", cam_model.named_parameters(), lr=HP[op]["lr"], beta=0.0, delta=0.0,
                 levels=ALL_LEVELS, gammas=(0.1, 0.2, 0.3, 0.4))
    schedulers = [torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5) for o in (base, cam)]
    for batch in _batches() * 2:
        _step(ref, base, batch)
        _step(cam_model, cam, batch)
        for s in schedulers:
            s.step()
    torch.testing.assert_close(_flat(cam_model), _flat(ref), rtol=1e-12, atol=1e-14)
    assert cam.level_lrs() == pytest.approx({level: HP[op]["lr"] / 16 for level in ALL_LEVELS}, rel=1e-12)
    # With β > 0 a halving of param_groups lr halves every level rate (and the mean lr).
    model = _model()
    opt = create(f"{op}-cam-hd", model.named_parameters(), levels=ALL_LEVELS, gammas=(0.1, 0.2, 0.3, 0.4), **HP[op])
    for batch in _batches():
        _step(model, opt, batch)
    before = opt.level_lrs()
    opt.param_groups[0]["lr"] *= 0.5
    assert opt.level_lrs() == pytest.approx({k: v / 2 for k, v in before.items()}, rel=1e-12)
    assert opt.curve_metrics()["lr"] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)


@pytest.mark.parametrize("op", OPS)
def test_reported_lrs_are_element_means_of_the_rates(op):
    model = _model()
    opt = create(f"{op}-cam-hd", model.named_parameters(), levels=ALL_LEVELS, gammas=(0.1, 0.2, 0.3, 0.4),
                 delta=0.5, **HP[op])
    for batch in _batches():
        _step(model, opt, batch)
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    per_element = torch.cat([opt.state[p]["lr_parameter"].reshape(-1) for p in params])
    lrs = opt.level_lrs()
    assert lrs["parameter"] == pytest.approx(per_element.mean().item(), rel=1e-12)
    rates = opt.state["cam_hd"]["groups"][0]
    # layers: 0 (weight 4x3 + bias 4 = 16 elements), 1 (weight 2x4 + bias 2 = 10 elements)
    assert lrs["layer"] == pytest.approx((16 * rates["layer"][0].item() + 10 * rates["layer"][1].item()) / n, rel=1e-12)
    units = rates["unit"]  # 4 units of 4 elements, then 2 units of 5 elements
    assert units.numel() == 6
    assert lrs["unit"] == pytest.approx((4 * units[:4].sum().item() + 5 * units[4:].sum().item()) / n, rel=1e-12)
    metrics = opt.curve_metrics()
    assert metrics["lr"] == pytest.approx(sum(g * lrs[lv] for g, lv in zip(opt.gammas, ALL_LEVELS)), rel=1e-12)
    assert set(metrics) == {"lr"} | {f"lr_{lv}" for lv in ALL_LEVELS} | {f"gamma_{lv}" for lv in ALL_LEVELS}


@pytest.mark.parametrize("levels,gammas", LEVEL_SETS, ids=lambda v: "+".join(v) if isinstance(v[0], str) else None)
def test_every_level_set_learns_and_reports_a_consistent_mean_lr(levels, gammas):
    model = _model()
    opt = create("sgdn-cam-hd", model.named_parameters(), levels=levels, gammas=gammas, delta=0.5,
                 decay_rate=0.05, alpha_inf=0.02, **HP["sgdn"])
    batches = _batches()
    for batch in batches:
        _step(model, opt, batch)
    metrics = opt.curve_metrics()
    tau = math.exp(-0.05 * len(batches))
    mean = sum(g * metrics[f"lr_{lv}"] for g, lv in zip(opt.gammas, levels))
    assert metrics["lr"] == pytest.approx(tau * mean + (1 - tau) * 0.02, rel=1e-12)
    assert all(math.isfinite(v) for v in metrics.values())
    assert any(metrics[f"lr_{lv}"] != pytest.approx(HP["sgdn"]["lr"], rel=1e-6) for lv in levels)


@pytest.mark.parametrize("op", OPS)
def test_only_the_parameter_level_adds_per_element_state(op):
    def state_numel(opt):
        total = 0
        for value in opt.state.values():
            stack = [value]
            while stack:
                v = stack.pop()
                if isinstance(v, torch.Tensor):
                    total += v.numel()
                elif isinstance(v, dict):
                    stack.extend(v.values())
                elif isinstance(v, list):
                    stack.extend(v)
        return total

    sizes = {}
    for name, kw in [
        ("hd", {}),
        ("unit+global", dict(levels=("unit", "global"), gammas=(0.2, 0.8))),
        ("parameter+layer+global", dict(levels=("parameter", "layer", "global"), gammas=(0.3, 0.3, 0.4))),
    ]:
        model = _model()
        opt = create(f"{op}-hd", model.parameters(), **HP[op]) if name == "hd" else create(
            f"{op}-cam-hd", model.named_parameters(), **HP[op], **kw)
        for batch in _batches():
            _step(model, opt, batch)
        sizes[name] = state_numel(opt)
    n = sum(p.numel() for p in _model().parameters())
    assert sizes["unit+global"] - sizes["hd"] <= 6 + 2 + 1  # units + module rates + global: O(units)
    assert n <= sizes["parameter+layer+global"] - sizes["hd"] <= n + 4


def test_params_without_grad_are_skipped_and_groups_keep_their_own_rates():
    model = _model()
    frozen = nn.Parameter(torch.ones(3, dtype=torch.float64))
    groups = [
        {"params": list(model[0].named_parameters(prefix="0")) + [("extra.weight", frozen)]},
        {"params": list(model[2].named_parameters(prefix="2")), "lr": 0.01},
    ]
    opt = create("sgd-cam-hd", groups, lr=0.1, beta=0.05, levels=("unit", "layer", "global"), gammas=(0.2, 0.3, 0.5))
    for batch in _batches():
        _step(model, opt, batch)
    assert torch.equal(frozen.detach(), torch.ones(3, dtype=torch.float64))
    assert "prev_direction" not in opt.state[frozen]
    first, second = opt.state["cam_hd"]["groups"]
    assert first["global"].item() != pytest.approx(0.1, rel=1e-6)
    assert second["global"].item() != pytest.approx(0.01, rel=1e-6)
    assert second["global"].item() < 0.05  # started at 0.01, its own α
    assert all(math.isfinite(v) for v in opt.curve_metrics().values())


@pytest.mark.parametrize("op", OPS)
def test_a_parameter_that_skipped_a_step_adds_nothing_to_the_next_hypergradient(op):
    # b has no gradient at step 2, so it did not move then: at step 3 the hypergradient is a's alone,
    # exactly as for an optimizer that never saw b.
    def run(with_b):
        a = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
        b = torch.tensor([3.0, 1.0], dtype=torch.float64, requires_grad=True)
        opt = create(f"{op}-cam-hd", [a, b] if with_b else [a], levels=("global",), gammas=(1.0,), **HP[op])
        for t in range(3):
            opt.zero_grad()
            loss = (a - 0.3).square().sum() + (0.0 if t == 1 else 2.0 * b.square().sum())
            loss.backward()
            opt.step()
        return a.detach().clone(), opt.param_groups[0]["lr"]

    (a1, lr1), (a2, lr2) = run(True), run(False)
    torch.testing.assert_close(a1, a2, rtol=1e-14, atol=0)
    assert lr1 == pytest.approx(lr2, rel=1e-14)


@pytest.mark.parametrize("op", OPS)
def test_float32_params(op):
    model = _model(torch.float32)
    opt = create(f"{op}-cam-hd", model.named_parameters(), levels=ALL_LEVELS, gammas=(0.1, 0.2, 0.3, 0.4),
                 delta=0.5, **HP[op])
    for batch in _batches(torch.float32):
        _step(model, opt, batch)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert opt.state["cam_hd"]["groups"][0]["unit"].dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("op", OPS)
def test_cuda_matches_cpu(op):
    kw = dict(levels=ALL_LEVELS, gammas=(0.1, 0.2, 0.3, 0.4), delta=0.5, decay_rate=0.01, **HP[op])
    cpu, gpu = _model(), _model().cuda()
    o_cpu = create(f"{op}-cam-hd", cpu.named_parameters(), **kw)
    o_gpu = create(f"{op}-cam-hd", gpu.named_parameters(), **kw)
    for x, y in _batches():
        _step(cpu, o_cpu, (x, y))
        _step(gpu, o_gpu, (x.cuda(), y.cuda()))
    torch.testing.assert_close(_flat(gpu).cpu(), _flat(cpu), rtol=1e-9, atol=1e-12)
    assert o_gpu.gammas == pytest.approx(o_cpu.gammas, rel=1e-9)


def test_registry_entries():
    infos = available()
    for op in OPS:
        info = infos[f"{op}-cam-hd"]
        assert info.is_hd and info.wants_names and not info.needs_closure
        keys = {"lr", "beta", "weight_decay", "levels", "gammas", "delta", "decay_rate", "alpha_inf"}
        assert keys <= set(info.hyperparameters)
        assert info.hyperparameters["levels"] == ("unit", "global") and info.hyperparameters["gammas"] == (0.2, 0.8)


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,match", [
    (dict(levels=("unit", "filter"), gammas=(0.5, 0.5)), "unknown level 'filter'"),
    (dict(levels=("global", "unit"), gammas=(0.5, 0.5)), "ordered leaf first"),
    (dict(levels=("unit", "unit"), gammas=(0.5, 0.5)), "without repeats"),
    (dict(levels=(), gammas=()), "non-empty"),
    (dict(levels="global", gammas=(1.0,)), "non-empty list"),
    (dict(levels=("unit", "global"), gammas=(1.0,)), "one weight per level"),
    (dict(levels=("unit", "global"), gammas=(1.2, -0.2)), r"gammas\[1\] must be >= 0"),
    (dict(levels=("unit", "global"), gammas=(0.5, 0.6)), "sum to 1"),
    (dict(delta=-1.0), "delta must be >= 0"),
    (dict(decay_rate=-0.1), "decay_rate must be >= 0"),
    (dict(decay_rate=0.01, alpha_inf=-1e-3), "alpha_inf must be >= 0"),
    (dict(momentum=1.0), "momentum"),
    (dict(weight_decay=-1e-4), "weight_decay"),
    (dict(beta=-1.0), "beta"),
    (dict(gammas=(0.5, 0.5), levels=["unit", "global"], bogus=1), "unknown hyperparameter"),
])
def test_bad_hyperparameters_raise_one_line(kw, match):
    with pytest.raises(ValueError, match=match) as err:
        create("sgdn-cam-hd", _model().named_parameters(), **kw)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("levels,gammas", [(("layer", "global"), (0.5, 0.5)), (("unit", "global"), (0.2, 0.8))])
def test_unit_and_layer_levels_need_module_structure(levels, gammas):
    with pytest.raises(ValueError, match="named_parameters") as err:
        create("adam-cam-hd", _model().parameters(), levels=levels, gammas=gammas)
    assert "\n" not in str(err.value)
    # Without a weight-bias pattern plain tensors are simply one layer each; the global level never needs names.
    create("adam-cam-hd", [torch.zeros(3, 2, requires_grad=True), torch.zeros(4, 2, requires_grad=True)],
           levels=levels, gammas=gammas)
    create("adam-cam-hd", _model().parameters(), levels=("parameter", "global"), gammas=(0.5, 0.5))


def test_loading_a_state_with_other_levels_raises():
    model = _model()
    opt = create("adam-cam-hd", model.named_parameters(), levels=("unit", "global"), gammas=(0.2, 0.8))
    _step(model, opt, _batches()[0])
    other = create("adam-cam-hd", model.named_parameters(), levels=("layer", "global"), gammas=(0.2, 0.8))
    with pytest.raises(ValueError, match="levels"):
        other.load_state_dict(opt.state_dict())
