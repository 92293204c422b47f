"""The member axis: one optimizer over fused (K, …) tensors equals K solo optimizers, member by member.

Table-driven over every name with a member-axis form (sgd, sgdn, adam, radam, adabound, the nine HD
optimizers, L4 and CAM-HD at several level sets), with every hyperparameter different per member,
in float64. The tensors are named as a fused model names them (``body.`` + the solo name); the solo
optimizers get the solo names.
"""

from __future__ import annotations

import copy

import pytest
import torch
from optim_cases import hd_names

from sensitivity.optim import create_members as member_axis_optimizer
from sensitivity.optim import available, create

# CAM-HD cases: "<op>-cam-hd" with the catalog's levels (unit, global), or "<op>-cam-hd:<levels>"
CAM_LEVELS = {"3": ("parameter", "layer", "global"), "4": ("parameter", "unit", "layer", "global")}
CAM = [f"{op}-cam-hd{suffix}" for op in ("sgd", "sgdn", "adam") for suffix in ("", ":3", ":4")]
NAMES = ["sgd", "sgdn", "adam", "radam", "adabound", *hd_names(), "adam-l4", "sgdn-l4", *CAM]
SOLO_NAMES = ["0.weight", "0.bias", "1.weight", "1.scale"]  # 1.scale: a unit by itself
SHAPES = [(4, 3), (4,), (2, 4), (3,)]
K = 3


def _hyperparameters(case: str, k: int) -> dict:
    """Member k's hyperparameters: each one differs between members where the optimizer has it."""
    name, _, levels = case.partition(":")
    keys = available()[name].hyperparameters
    l4 = name.endswith("-l4")
    values = {
        "lr": 0.1 * (1 + k) if l4 else (0.05 if "adam" not in name.split("-")[0] else 0.01) * (1 + k),
        "beta": 1e-3 * (1 + k),
        "weight_decay": 1e-3 * k, "momentum": 0.9 - 0.2 * k, "betas": (0.9 - 0.1 * k, 0.999 - 0.05 * k),
        "eps": 10.0 ** (-8 + 2 * k), "lop_momentum": 0.5 + 0.2 * k, "lop_betas": (0.8 + 0.05 * k, 0.99),
        "lop_eps": 10.0 ** (-8 + k), "lr_min": [None, 0.0, 1e-3][k], "lr_max": [None, 1.0, 0.2][k],
        "final_lr": 0.1 * (1 + k), "gamma": 0.9 - 0.1 * k if l4 else 1e-2 * (1 + k), "gamma0": 0.75 - 0.1 * k,
        "tau": 10.0 * (1 + k),
        "delta": 0.5 * k, "decay_rate": [None, 0.05, 0.02][k], "alpha_inf": [None, 0.01, None][k],
    }
    if "cam-hd" in name:
        values["beta"] = (1e-4 if name.startswith("adam") else 1e-2) * (1 + k)
        values["levels"] = CAM_LEVELS[levels] if levels else ("unit", "global")
        count = len(values["levels"])
        weights = [1.0 + j + k * (j % 2) for j in range(count)]
        values["gammas"] = tuple(w / sum(weights) for w in weights)
    return {key: values[key] for key in keys if key in values}


def _name(case: str) -> str:
    return case.partition(":")[0]


def _grads(steps: int, seed: int = 0) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(K, *s, generator=gen, dtype=torch.float64) for s in SHAPES] for _ in range(steps)]


def _losses(steps: int, seed: int = 2) -> list[torch.Tensor]:
    """The members' losses of each step (L4 reads them; the others ignore the closure's value)."""
    gen = torch.Generator().manual_seed(seed)
    return [1.0 + torch.rand(K, generator=gen, dtype=torch.float64) for _ in range(steps)]


def _params(seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(K, *s, generator=gen, dtype=torch.float64) for s in SHAPES]


def _members(case, params, hps=None):
    hps = hps or [_hyperparameters(case, k) for k in range(K)]
    return member_axis_optimizer(_name(case), [(f"body.{n}", p) for n, p in zip(SOLO_NAMES, params)], hps)


def _run_fused(case, params, grads, losses=None, opt=None):
    opt = opt or _members(case, params)
    losses = losses or _losses(len(grads))
    lrs = []
    for step, loss in zip(grads, losses):
        for p, g in zip(params, step):
            p.grad = g.clone()  # a fresh tensor each step, as autograd allocates after zero_grad
        opt.step(lambda loss=loss: loss)  # the members' losses, computed before the step
        lrs.append(opt.param_groups[0]["lr"].clone())
    return opt, lrs


def _solo(case, k, params):
    return create(_name(case), list(zip(SOLO_NAMES, params)), **_hyperparameters(case, k))


def _solo_step(opt, params, step, k, loss):
    for p, g in zip(params, step):
        p.grad = g[k].clone()
    opt.step(lambda: loss[k])


@pytest.mark.parametrize("case", NAMES)
def test_member_axis_equals_solo_optimizers(case):
    steps = 25
    grads, losses = _grads(steps), _losses(steps)
    fused = _params()
    opt, fused_lrs = _run_fused(case, fused, grads, losses)
    metrics = getattr(opt, "curve_metrics", None)
    for k in range(K):
        solo = [p[k].clone() for p in _params()]
        solo_opt = _solo(case, k, solo)
        for t, step in enumerate(grads):
            _solo_step(solo_opt, solo, step, k, losses[t])
            assert solo_opt.param_groups[0]["lr"] == pytest.approx(float(fused_lrs[t][k]), rel=1e-12, abs=1e-300)
        for p_solo, p_fused in zip(solo, fused):
            torch.testing.assert_close(p_fused[k], p_solo, rtol=1e-12, atol=1e-14)
        if metrics is not None:  # CAM-HD: every level's mean rate and γ, as the solo run reports them
            columns = solo_opt.curve_metrics()
            assert set(columns) == set(metrics())
            for key, value in metrics().items():
                assert float(value[k]) == pytest.approx(columns[key], rel=1e-11, abs=1e-14), key


@pytest.mark.parametrize("case", NAMES)
def test_a_member_never_reads_another(case):
    """Member 1's gradients (and, for L4, its loss) turn non-finite mid-run: members 0 and 2 end
    exactly as without it."""
    grads, losses = _grads(12), _losses(12)
    clean = _params()
    clean_opt, _ = _run_fused(case, clean, grads, losses)
    poisoned, bad_losses = copy.deepcopy(grads), copy.deepcopy(losses)
    for step, loss in zip(poisoned[5:], bad_losses[5:]):
        for g in step:
            g[1] = float("inf") if case.startswith("sgd") else float("nan")
        loss[1] = float("nan")
    fused = _params()
    opt, _ = _run_fused(case, fused, poisoned, bad_losses)
    for p_clean, p_fused in zip(clean, fused):
        assert not torch.isfinite(p_fused[1]).all()
        assert torch.equal(p_fused[0], p_clean[0]) and torch.equal(p_fused[2], p_clean[2])
    assert torch.isfinite(opt.param_groups[0]["lr"][[0, 2]]).all()
    if "cam-hd" in case:
        assert torch.equal(opt.gammas[[0, 2]], clean_opt.gammas[[0, 2]])


@pytest.mark.parametrize("case", NAMES)
def test_member_axis_state_dict_round_trip(case):
    """Saved after 8 steps and loaded into a new optimizer, 8 more steps equal the uninterrupted run."""
    grads, losses = _grads(16), _losses(16)
    whole = _params()
    _run_fused(case, whole, grads, losses)
    first = _params()
    opt, _ = _run_fused(case, first, grads[:8], losses[:8])
    state = copy.deepcopy(opt.state_dict())
    resumed = [p.clone() for p in first]
    again = _members(case, resumed)
    again.load_state_dict(state)
    assert again.param_groups[0]["lr"].dtype == torch.float64
    _run_fused(case, resumed, grads[8:], losses[8:], opt=again)
    for a, b in zip(whole, resumed):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", NAMES)
def test_a_members_lr_decay_is_its_solo_runs(case):
    """Member 1's lr halved between steps (as a fused array decays it) moves member 1 as halving
    its solo run's lr does, and the others as if nothing happened."""
    grads, losses = _grads(10), _losses(10)
    fused = _params()
    opt, _ = _run_fused(case, fused, grads[:5], losses[:5])
    opt.param_groups[0]["lr"][1] *= 0.5
    _run_fused(case, fused, grads[5:], losses[5:], opt=opt)
    for k in range(K):
        solo = [p[k].clone() for p in _params()]
        solo_opt = _solo(case, k, solo)
        for t, step in enumerate(grads):
            if t == 5 and k == 1:
                for group in solo_opt.param_groups:
                    group["lr"] *= 0.5
            _solo_step(solo_opt, solo, step, k, losses[t])
        for p_solo, p_fused in zip(solo, fused):
            torch.testing.assert_close(p_fused[k], p_solo, rtol=1e-12, atol=1e-14)


def test_member_axis_baselines_accept_what_their_solo_optimizer_accepts():
    """Fused sgdn members pass the checks of their solo runs: momentum 0 with Nesterov is an error
    there (torch's rule, said as a range), momentum 1.5 is not."""
    params = _params()
    with pytest.raises(ValueError, match=r"^momentum must be > 0, got 0.0$"):
        member_axis_optimizer("sgdn", params, [{"lr": 0.1, "momentum": m} for m in (0.9, 0.0, 0.5)])
    grads = _grads(6)
    fused = _params()
    hps = [{"lr": 0.01, "momentum": m} for m in (0.9, 1.5, 0.5)]
    opt = member_axis_optimizer("sgdn", fused, hps)
    solos = [[p[k].clone() for p in _params()] for k in range(K)]
    solo_opts = [create("sgdn", s, **hp) for s, hp in zip(solos, hps)]
    for step in grads:
        for p, g in zip(fused, step):
            p.grad = g.clone()
        opt.step()
        for k, (s, o) in enumerate(zip(solos, solo_opts)):
            for p, g in zip(s, step):
                p.grad = g[k].clone()
            o.step()
    for k in range(K):
        for p_solo, p_fused in zip(solos[k], fused):
            torch.testing.assert_close(p_fused[k], p_solo, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("case", NAMES)
def test_kept_members_continue_as_alone(case):
    """`members.keep` (a fused array dropping a member, and reordering the rest) after 6 steps: the
    kept members then move exactly as their solo runs."""
    from sensitivity.optim import members

    grads, losses = _grads(12), _losses(12)
    fused = _params()
    opt, _ = _run_fused(case, fused, grads[:6], losses[:6])
    index = [2, 0]
    kept = [p[index].clone() for p in fused]
    members.keep(opt, index, kept)
    _run_fused(case, kept, [[g[index] for g in step] for step in grads[6:]], [x[index] for x in losses[6:]], opt=opt)
    for j, k in enumerate(index):
        solo = [p[k].clone() for p in _params()]
        solo_opt = _solo(case, k, solo)
        for step, loss in zip(grads, losses):
            _solo_step(solo_opt, solo, step, k, loss)
        for p_solo, p_kept in zip(solo, kept):
            torch.testing.assert_close(p_kept[j], p_solo, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("case", NAMES)
def test_member_sets_split_and_join(case):
    """A state dict cut into member sets (`members.select`) and stacked again (`members.join`) resumes
    exactly; a 1-member slice resumes that member exactly as the whole array does."""
    from sensitivity.optim import members

    grads, losses = _grads(16), _losses(16)
    whole = _params()
    _run_fused(case, whole, grads, losses)
    first = _params()
    opt, _ = _run_fused(case, first, grads[:8], losses[:8])
    state = copy.deepcopy(opt.state_dict())
    joined = members.join([members.select(state, [0]), members.select(state, [1, 2])])
    resumed = [p.clone() for p in first]
    again = _members(case, resumed)
    again.load_state_dict(joined)
    alone = [p[2:3].clone() for p in first]
    single = _members(case, alone, [_hyperparameters(case, 2)])
    single.load_state_dict(members.select(state, [2]))
    for step, loss in zip(grads[8:], losses[8:]):
        for p, q, g in zip(resumed, alone, step):
            p.grad, q.grad = g.clone(), g[2:3].clone()
        again.step(lambda: loss)
        single.step(lambda: loss[2:3])
    for a, b, c in zip(whole, resumed, alone):
        assert torch.equal(a, b)
        torch.testing.assert_close(c[0], a[2], rtol=1e-12, atol=1e-14)


def test_cam_hd_members_have_their_solo_units_and_layers():
    """Each member's unit and layer rates are its solo run's (from the solo names, with or without the
    fused model's ``body.`` prefix); plain stacked tensors are refused as solo plain tensors are."""
    case = "adam-cam-hd:4"
    opt = _members(case, _params())
    solo = _solo(case, 0, [p[0].clone() for p in _params()])
    rates, solo_rates = opt.state["cam_hd"]["groups"][0], solo.state["cam_hd"]["groups"][0]
    for key in ("unit", "layer"):
        assert rates[key].shape == (K, *solo_rates[key].shape)
    assert solo_rates["unit"].numel() == 4 + 2 + 1 and solo_rates["layer"].numel() == 2
    assert opt.gammas.shape == (K, 4)
    hps = [_hyperparameters("sgd-cam-hd", k) for k in range(K)]
    with pytest.raises(ValueError, match="named_parameters"):
        member_axis_optimizer("sgd-cam-hd", _params(), hps)
    with pytest.raises(ValueError, match="levels"):
        _members("sgd-cam-hd", _params(), [*hps[:2], {**hps[2], "levels": ("global",), "gammas": (1.0,)}])



@pytest.mark.parametrize("case", [c for c in CAM if ":" in c])
def test_a_cam_hd_member_with_delta_zero_keeps_its_gammas_exactly(case):
    """δ = 0 freezes γ: member 0 (δ = 0) ends with its starting γ bit for bit, as its solo run does,
    while the members beside it move theirs. Its γ (as the optimizer normalises them) do not sum to 1
    in floating point, so renormalising them each step would change them."""
    start = {3: (0.7, 0.2, 0.1), 4: (0.4, 0.3, 0.2, 0.1)}
    hps = [_hyperparameters(case, k) for k in range(K)]
    hps[0]["gammas"] = start[len(hps[0]["levels"])]
    fused = _params()
    opt = _members(case, fused, hps)
    before = opt.gammas
    assert hps[0]["delta"] == 0 and sum(before[0].tolist()) != 1.0
    _run_fused(case, fused, _grads(10), opt=opt)
    solo = [p[0].clone() for p in _params()]
    solo_opt = create(_name(case), list(zip(SOLO_NAMES, solo)), **hps[0])
    for t, step in enumerate(_grads(10)):
        _solo_step(solo_opt, solo, step, 0, _losses(10)[t])
    assert opt.gammas[0].tolist() == list(solo_opt.gammas) == before[0].tolist()
    assert not torch.equal(opt.gammas[1:], before[1:])
