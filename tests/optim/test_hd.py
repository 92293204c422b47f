"""The HD family (issue 2, "Exact semantics"), table-driven over every <op>-hd[-<lop>] name."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch
from optim_cases import DEVICES, MOVING, TORCH_BASE, batches, flat, op_lop, tiny_model, train

from sensitivity.optim import create

DTYPES = [torch.float64, torch.float32]


def _tol(dtype):
    return {"rtol": 1e-12, "atol": 1e-14} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 2e-6}


def _moving(name: str, **overrides) -> dict:
    op, lop = op_lop(name)
    lr, beta = MOVING[op]
    if lop == "adam":  # the Adam lr-optimizer moves α by about β per step, whatever D's scale
        beta = lr / 10
    return {"lr": lr, "beta": beta, **overrides}


# -- β = 0 is the base optimizer ------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_beta_zero_reproduces_torch(hd_name, dtype, wd, device):
    op, _ = op_lop(hd_name)
    ours, ref = tiny_model(dtype, device), tiny_model(dtype, device)
    opt = create(hd_name, ours.parameters(), lr=0.05, beta=0.0, weight_decay=wd)
    ref_opt = TORCH_BASE[op](ref.parameters(), 0.05, wd)
    data = batches(dtype, device, count=6)
    losses, ref_losses = train(ours, opt, data), train(ref, ref_opt, data)
    torch.testing.assert_close(flat(ours), flat(ref), **_tol(dtype))
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    assert opt.param_groups[0]["lr"] == 0.05
    assert all(p.dtype == dtype and p.device.type == device for p in ours.parameters())


# -- hand-computed examples -------------------------------------------------------------------
def _run_scalar(name: str, steps: int, theta0=(1.0,), curvature=(1.0,), **hp) -> list[tuple[list[float], float]]:
    """f(θ) = ½ Σ h_i θ_i² with one 1-element tensor per entry; returns (θ, α) after each step."""
    thetas = [torch.tensor([t], dtype=torch.float64, requires_grad=True) for t in theta0]
    opt = create(name, thetas, **hp)
    out = []
    for _ in range(steps):
        def closure():
            opt.zero_grad()
            loss = sum(0.5 * h * (t**2).sum() for h, t in zip(curvature, thetas))
            loss.backward()
            return loss

        opt.step(closure)
        out.append(([t.item() for t in thetas], opt.param_groups[0]["lr"]))
    return out


def test_hand_computed_lop_sgd():
    # f = ½θ², θ0 = 1, α0 = 0.1, β = 0.5, op sgd (d = g = θ).
    # t=1: α = 0.1, θ = 1 − 0.1·1 = 0.9
    # t=2: D = −0.9·1 = −0.9; α = 0.1 + 0.5·0.9 = 0.55; θ = 0.9 − 0.55·0.9 = 0.405
    # t=3: D = −0.405·0.9 = −0.3645; α = 0.55 + 0.5·0.3645 = 0.73225; θ = 0.405·(1 − 0.73225) = 0.10843875
    got = _run_scalar("sgd-hd", 3, lr=0.1, beta=0.5)
    expected = [([0.9], 0.1), ([0.405], 0.55), ([0.10843875], 0.73225)]
    for (theta, alpha), (e_theta, e_alpha) in zip(got, expected):
        assert theta == pytest.approx(e_theta, abs=1e-15) and alpha == pytest.approx(e_alpha, abs=1e-15)
    assert _run_scalar("sgd-hd-sgd", 3, lr=0.1, beta=0.5) == got


def test_hand_computed_lop_sgdn():
    # As above with μ_h = 0.9:
    # t=2: D = −0.9; b = −0.9; α = 0.1 − 0.5·(−0.9 + 0.9·(−0.9)) = 0.955; θ = 0.9·(1 − 0.955) = 0.0405
    # t=3: D = −0.0405·0.9 = −0.03645; b = 0.9·(−0.9) − 0.03645 = −0.84645;
    #      α = 0.955 − 0.5·(−0.03645 − 0.9·0.84645) = 1.3541275; θ = 0.0405·(1 − 1.3541275) = −0.01434216375
    got = _run_scalar("sgd-hd-sgdn", 3, lr=0.1, beta=0.5, lop_momentum=0.9)
    expected = [([0.9], 0.1), ([0.0405], 0.955), ([-0.01434216375], 1.3541275)]
    for (theta, alpha), (e_theta, e_alpha) in zip(got, expected):
        assert theta == pytest.approx(e_theta, abs=1e-15) and alpha == pytest.approx(e_alpha, abs=1e-15)


def test_hand_computed_lop_adam():
    # As above with the Adam lr-optimizer, β1h = 0.9, β2h = 0.999, ε_h = 0:
    # t=2: k=1, D = −0.9: m = 0.1·(−0.9) = −0.09, v = 0.001·0.81 = 0.00081, m̂ = −0.9, v̂ = 0.81;
    #      α = 0.1 − 0.5·(−0.9/0.9) = 0.6; θ = 0.9 − 0.6·0.9 = 0.36
    # t=3: k=2, D = −0.36·0.9 = −0.324: m = 0.9·(−0.09) + 0.1·(−0.324) = −0.1134,
    #      v = 0.999·0.00081 + 0.001·0.104976 = 0.000914166, m̂ = −0.1134/0.19, v̂ = 0.000914166/0.001999
    m_hat, v_hat = -0.1134 / 0.19, 0.000914166 / 0.001999
    alpha3 = 0.6 - 0.5 * m_hat / math.sqrt(v_hat)  # = 1.041291…
    got = _run_scalar("sgd-hd-adam", 3, lr=0.1, beta=0.5, lop_betas=(0.9, 0.999), lop_eps=0.0)
    expected = [([0.9], 0.1), ([0.36], 0.6), ([0.36 * (1 - alpha3)], alpha3)]
    for (theta, alpha), (e_theta, e_alpha) in zip(got, expected):
        assert theta == pytest.approx(e_theta, abs=1e-13) and alpha == pytest.approx(e_alpha, abs=1e-13)
    assert alpha3 == pytest.approx(1.0412892, abs=1e-6)


def test_hand_computed_op_sgdn():
    # op sgdn (μ = 0.9), lop sgd, f = ½θ², θ0 = 1, α0 = 0.1, β = 0.5:
    # t=1: g = 1, buf = 1, d = 1 + 0.9·1 = 1.9, θ = 1 − 0.1·1.9 = 0.81
    # t=2: g = 0.81, D = −0.81·1.9 = −1.539, α = 0.1 + 0.5·1.539 = 0.8695;
    #      buf = 0.9 + 0.81 = 1.71, d = 0.81 + 0.9·1.71 = 2.349, θ = 0.81 − 0.8695·2.349 = −1.2324555
    got = _run_scalar("sgdn-hd", 2, lr=0.1, beta=0.5, momentum=0.9)
    assert got[0] == ([pytest.approx(0.81, abs=1e-15)], 0.1)
    assert got[1][0][0] == pytest.approx(-1.2324555, abs=1e-14) and got[1][1] == pytest.approx(0.8695, abs=1e-15)


def test_hand_computed_op_adam():
    # op adam (β1 = 0.9, β2 = 0.999, ε = 0), lop sgd, f = ½θ², θ0 = 1, α0 = 0.1, β = 0.5:
    # t=1: m = 0.1, v = 0.001, m̂ = 1, v̂ = 1, d = 1, θ = 0.9
    # t=2: g = 0.9, D = −0.9, α = 0.55; m = 0.09 + 0.09 = 0.18, v = 0.000999 + 0.00081 = 0.001809,
    #      d = (0.18/0.19)/√(0.001809/0.001999), θ = 0.9 − 0.55·d
    d2 = (0.18 / 0.19) / math.sqrt(0.001809 / 0.001999)
    got = _run_scalar("adam-hd", 2, lr=0.1, beta=0.5, eps=0.0)
    assert got[0][0][0] == pytest.approx(0.9, abs=1e-15) and got[0][1] == 0.1
    assert got[1][1] == pytest.approx(0.55, abs=1e-15)
    assert got[1][0][0] == pytest.approx(0.9 - 0.55 * d2, abs=1e-14)


def test_hand_computed_coupled_weight_decay_enters_the_hypergradient():
    # wd = 0.5 on f = ½θ²: g = θ + 0.5θ = 1.5θ. t=1: g = 1.5, θ = 1 − 0.1·1.5 = 0.85.
    # t=2: g = 1.275, D = −1.275·1.5 = −1.9125, α = 0.1 + 0.5·1.9125 = 1.05625, θ = 0.85 − 1.05625·1.275 = −0.49671875
    got = _run_scalar("sgd-hd", 2, lr=0.1, beta=0.5, weight_decay=0.5)
    assert got[1][1] == pytest.approx(1.05625, abs=1e-15)
    assert got[1][0][0] == pytest.approx(-0.49671875, abs=1e-15)


def test_hand_computed_one_alpha_per_group_from_the_summed_hypergradient():
    # Two tensors in one group, f = ½a² + ½·2b², a0 = b0 = 1, α0 = 0.1, β = 0.5:
    # t=1: a = 0.9, b = 1 − 0.1·2 = 0.8. t=2: g = (0.9, 1.6), D = −(0.9·1 + 1.6·2) = −4.1,
    # α = 0.1 + 0.5·4.1 = 2.15 for both tensors: a = 0.9 − 2.15·0.9 = −1.035, b = 0.8 − 2.15·1.6 = −2.64
    got = _run_scalar("sgd-hd", 2, theta0=(1.0, 1.0), curvature=(1.0, 2.0), lr=0.1, beta=0.5)
    assert got[0][0] == pytest.approx([0.9, 0.8], abs=1e-15)
    assert got[1][1] == pytest.approx(2.15, abs=1e-15)
    assert got[1][0] == pytest.approx([-1.035, -2.64], abs=1e-14)


def test_alpha_uses_the_whole_group_not_each_tensor(hd_name):
    # The same problem as one 5-element tensor or as three tensors gives the same run.
    h = torch.tensor([1.0, 2.0, 3.0, 0.5, 4.0], dtype=torch.float64)
    whole = torch.ones(5, dtype=torch.float64, requires_grad=True)
    parts = [torch.ones(n, dtype=torch.float64, requires_grad=True) for n in (1, 3, 1)]
    hp = _moving(hd_name)
    runs = []
    for params, get in ((["whole"], lambda: whole), (["parts"], lambda: torch.cat(parts))):
        opt = create(hd_name, [whole] if params == ["whole"] else parts, **hp)
        for _ in range(5):
            opt.zero_grad()
            (0.5 * (h * get() ** 2).sum()).backward()
            opt.step()
        runs.append((get().detach().clone(), opt.param_groups[0]["lr"]))
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=1e-12, atol=1e-14)
    assert runs[0][1] == pytest.approx(runs[1][1], rel=1e-12)
    assert runs[0][1] != hp["lr"]


# -- sign of the adaptation on a quadratic ------------------------------------------------------
# Per op: α0 far too small, and α0 large enough that the iterates oscillate.
SIGN_LRS = {"sgd": (1e-3, 0.6), "sgdn": (1e-4, 0.3), "adam": (1e-3, 3.0)}


def _sign_beta(op: str, lop: str, lr: float, grow: bool) -> float:
    if lop == "adam":  # the Adam lr-optimizer moves α by about β per step
        return lr / 4 if grow else lr / 20
    if grow:
        return 1e-3
    return {"sgd": 1e-3, "sgdn": 1e-4}[lop] * (30 if op == "adam" else 1)


def _quadratic_run(name: str, lr: float, beta: float, steps: int = 20, **hp) -> float:
    """f(θ) = ½ Σ h_i θ_i², h from 1 to 4, θ0 = 1; returns α after `steps` steps."""
    h = torch.linspace(1.0, 4.0, 8, dtype=torch.float64)
    theta = torch.ones(8, dtype=torch.float64, requires_grad=True)
    opt = create(name, [theta], lr=lr, beta=beta, **hp)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (h * theta**2).sum()).backward()
        opt.step()
    return opt.param_groups[0]["lr"]


def test_alpha_grows_when_far_too_small_and_shrinks_when_oscillating(hd_name):
    op, lop = op_lop(hd_name)
    small, big = SIGN_LRS[op]
    grown = _quadratic_run(hd_name, small, _sign_beta(op, lop, small, grow=True), steps=20)
    assert grown > 3 * small, grown
    shrunk = _quadratic_run(hd_name, big, _sign_beta(op, lop, big, grow=False), steps=10)
    assert shrunk < 0.9 * big, shrunk


# -- state, groups, skipped parameters ----------------------------------------------------------
def test_state_dict_round_trip_mid_run_continues_identically(hd_name):
    model = tiny_model()
    opt = create(hd_name, model.parameters(), **_moving(hd_name))
    data = batches(count=6)
    train(model, opt, data[:3])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert any("prev_direction" in s for s in saved["opt"]["state"].values())
    resumed = tiny_model(seed=123)
    resumed.load_state_dict(saved["model"])
    opt2 = create(hd_name, resumed.parameters(), lr=7.0)  # lr is restored from the state dict
    opt2.load_state_dict(saved["opt"])
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    train(model, opt, data[3:])
    train(resumed, opt2, data[3:])
    assert torch.equal(flat(model), flat(resumed))
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] != _moving(hd_name)["lr"]


def test_param_groups_keep_separate_alphas(hd_name):
    # A separable loss: two groups in one optimizer behave as two optimizers, one per group.
    torch.manual_seed(0)
    a0, b0 = torch.randn(3, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)

    def loss_of(a, b):
        return 0.5 * (a**2).sum() + 2.0 * (b**2).sum()

    hp = _moving(hd_name)
    a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    joint = create(hd_name, [{"params": [a]}, {"params": [b], "lr": hp["lr"] / 2}], **hp)
    a1, b1 = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    solo_a = create(hd_name, [a1], **hp)
    solo_b = create(hd_name, [b1], **{**hp, "lr": hp["lr"] / 2})
    for _ in range(6):
        for opts, (x, y) in (([joint], (a, b)), ([solo_a, solo_b], (a1, b1))):
            for o in opts:
                o.zero_grad()
            loss_of(x, y).backward()
            for o in opts:
                o.step()
    alphas = [g["lr"] for g in joint.param_groups]
    assert alphas == [solo_a.param_groups[0]["lr"], solo_b.param_groups[0]["lr"]]
    assert alphas[0] != alphas[1]
    assert torch.equal(a, a1) and torch.equal(b, b1)


def test_params_without_grad_are_skipped(hd_name):
    model, ref = tiny_model(), tiny_model()
    unused = torch.ones(3, dtype=torch.float64, requires_grad=True)
    # `unused` first: the group's lr-optimizer state lives with a parameter that never steps.
    opt = create(hd_name, [unused, *model.parameters()], **_moving(hd_name))
    ref_opt = create(hd_name, ref.parameters(), **_moving(hd_name))
    data = batches(count=5)
    train(model, opt, data)
    train(ref, ref_opt, data)
    assert torch.equal(unused, torch.ones(3, dtype=torch.float64))
    assert "step" not in opt.state[unused] and "prev_direction" not in opt.state[unused]
    assert torch.equal(flat(model), flat(ref))
    assert opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]


def test_a_parameter_that_loses_its_grad_keeps_its_state_and_others_continue(hd_name):
    model = tiny_model()
    opt = create(hd_name, model.parameters(), **_moving(hd_name))
    data = batches(count=4)
    train(model, opt, data[:2])
    first = next(model.parameters())
    frozen = first.detach().clone()
    first.requires_grad_(False)
    train(model, opt, data[2:])
    assert torch.equal(first, frozen)
    assert opt.state[first]["step"] == 2
    assert all(math.isfinite(g["lr"]) for g in opt.param_groups)


def test_a_parameter_without_grad_last_step_adds_nothing_to_the_hypergradient(hd_name):
    # It did not move at step t−1 (d_{t−1} = 0 for it), so a stale d_{t−2} must not enter D_t.
    a = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    opt = create(hd_name, [a, b], **_moving(hd_name))
    ref_a = a.detach().clone().requires_grad_(True)
    ref_b = b.detach().clone().requires_grad_(True)
    ref = create(hd_name, [ref_a, ref_b], **_moving(hd_name))

    def step(optimizer, x, y, use_y):
        optimizer.zero_grad()
        loss = (x ** 2).sum() + ((y ** 2).sum() if use_y else 0.0)
        loss.backward()
        optimizer.step()

    step(opt, a, b, True)
    step(ref, ref_a, ref_b, True)
    step(opt, a, b, False)  # b gets no grad: it has none at all this step
    step(ref, ref_a, ref_b, False)
    ref_b.grad = None  # the reference has no stale b; its step 3 sees b with a fresh grad only
    ref.state[ref_b].pop("prev_direction", None)
    opt_lr_before = opt.param_groups[0]["lr"]
    assert opt_lr_before == ref.param_groups[0]["lr"]
    b.grad = None
    step(opt, a, b, True)
    step(ref, ref_a, ref_b, True)
    assert opt.param_groups[0]["lr"] == ref.param_groups[0]["lr"]
    assert torch.equal(a, ref_a) and torch.equal(b, ref_b)


@pytest.mark.parametrize("device", DEVICES)
def test_float32_keeps_dtype_and_follows_float64(hd_name, device):
    runs = {}
    for dtype in (torch.float32, torch.float64):
        model = tiny_model(dtype, device)
        opt = create(hd_name, model.parameters(), **_moving(hd_name))
        train(model, opt, batches(dtype, device, count=4))
        runs[dtype] = (flat(model), opt.param_groups[0]["lr"])
        assert type(opt.param_groups[0]["lr"]) is float
        for state in opt.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    assert value.dtype == dtype and value.device.type == device
    torch.testing.assert_close(runs[torch.float32][0].double(), runs[torch.float64][0], rtol=1e-4, atol=1e-5)
    assert runs[torch.float32][1] == pytest.approx(runs[torch.float64][1], rel=1e-4)


# -- gradients reused in place, clamps, schedulers ----------------------------------------------
def test_gradients_reused_in_place_give_the_same_run(hd_name):
    runs = []
    for set_to_none in (True, False):
        model = tiny_model()
        opt = create(hd_name, model.parameters(), **_moving(hd_name))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            train(model, opt, batches(count=6), set_to_none=set_to_none)
        runs.append((flat(model), opt.param_groups[0]["lr"]))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]


def test_switching_to_in_place_gradients_mid_run_is_detected():
    model = tiny_model()
    opt = create("sgd-hd", model.parameters(), **_moving("sgd-hd"))
    data = batches(count=6)
    train(model, opt, data[:3], set_to_none=True)  # the optimizer now borrows the gradient tensors
    with pytest.warns(RuntimeWarning, match="modified in place"):
        train(model, opt, data[3:4], set_to_none=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(model, opt, data[4:], set_to_none=False)  # copies from now on
    assert math.isfinite(opt.param_groups[0]["lr"])


@pytest.mark.parametrize("clamp", ["lr_max", "lr_min"])
def test_optional_clamps_bound_alpha(clamp):
    small, big = SIGN_LRS["sgd"]
    if clamp == "lr_max":
        assert _quadratic_run("sgd-hd", small, 1e-3, lr_max=2 * small) == 2 * small
    else:
        assert _quadratic_run("sgd-hd", big, 1e-3, lr_min=0.95 * big) == 0.95 * big


def test_alpha_may_go_negative_without_clamps():
    # The papers let α go where the hypergradient sends it. f = ½θ², α0 = 2.5, β = 2:
    # θ1 = 1 − 2.5 = −1.5; D = −(−1.5·1) = 1.5, α = 2.5 − 2·1.5 = −0.5; θ2 = −1.5 + 0.5·(−1.5) = −2.25
    got = _run_scalar("sgd-hd", 2, lr=2.5, beta=2.0)
    assert got[1] == ([-2.25], -0.5)


def test_a_scheduler_rescales_the_current_alpha():
    model = tiny_model()
    opt = create("adam-hd", model.parameters(), lr=0.01, beta=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    train(model, opt, batches(count=2))
    before = opt.param_groups[0]["lr"]
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(before / 2)


# -- an independent, literal implementation of issue 2's "Exact semantics" ------------------------
def _literal_hd(op, lop, model, data, *, lr, beta, wd, momentum=0.9, betas=(0.9, 0.999), eps=1e-8,
                lop_momentum=0.9, lop_betas=(0.9, 0.999), lop_eps=1e-8):
    """Per-tensor loops, no foreach, no factoring: the spec's steps 1-4 as written."""
    params = list(model.parameters())
    alpha, b, mh, vh, k = lr, 0.0, 0.0, 0.0, 0
    prev = None
    buf = [torch.zeros_like(p) for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    alphas = []
    for t, (x, y) in enumerate(data, start=1):
        model.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        with torch.no_grad():
            g = [p.grad + wd * p for p in params]  # step 1
            if t >= 2:  # step 2
                D = -sum(float((gi * di).sum()) for gi, di in zip(g, prev))
                if lop == "sgd":
                    alpha = alpha - beta * D
                elif lop == "sgdn":
                    b = lop_momentum * b + D
                    alpha = alpha - beta * (D + lop_momentum * b)
                else:
                    k += 1
                    mh = lop_betas[0] * mh + (1 - lop_betas[0]) * D
                    vh = lop_betas[1] * vh + (1 - lop_betas[1]) * D * D
                    alpha = alpha - beta * (mh / (1 - lop_betas[0] ** k)) / (math.sqrt(vh / (1 - lop_betas[1] ** k)) + lop_eps)
            d = []  # step 3
            for i, gi in enumerate(g):
                if op == "sgd":
                    d.append(gi.clone())
                elif op == "sgdn":
                    buf[i] = momentum * buf[i] + gi
                    d.append(gi + momentum * buf[i])
                else:
                    m[i] = betas[0] * m[i] + (1 - betas[0]) * gi
                    v[i] = betas[1] * v[i] + (1 - betas[1]) * gi * gi
                    m_hat, v_hat = m[i] / (1 - betas[0] ** t), v[i] / (1 - betas[1] ** t)
                    d.append(m_hat / (v_hat.sqrt() + eps))
            for p, di in zip(params, d):  # step 4
                p -= alpha * di
            prev = d
        alphas.append(alpha)
    return alphas


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_matches_a_literal_implementation_of_the_spec(hd_name, wd):
    op, lop = op_lop(hd_name)
    hp = _moving(hd_name, weight_decay=wd)
    ours, literal = tiny_model(), tiny_model()
    data = batches(count=8)
    opt = create(hd_name, ours.parameters(), **hp)
    alphas = []
    for x, y in data:
        train(ours, opt, [(x, y)])
        alphas.append(opt.param_groups[0]["lr"])
    expected = _literal_hd(op, lop, literal, data, lr=hp["lr"], beta=hp["beta"], wd=wd)
    assert alphas == pytest.approx(expected, rel=1e-10, abs=1e-14)
    torch.testing.assert_close(flat(ours), flat(literal), rtol=1e-10, atol=1e-12)
    assert len(set(alphas)) > 2  # α really moved
