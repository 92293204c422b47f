"""The learning-rate-free optimizers along the member axis: one optimizer over K stacked runs equals K solo ones.

Table-driven over ``lr_free_cases.MEMBER_CASES`` (the seven names; DoG and LDoG also with an
init_eta per member; Prodigy and D-Adaptation Adam also with one member's β1 = 0), every hyperparameter
different per member, float64. Prodigy's d,
D-Adaptation's d and DoG's η are sums over all parameters; along the member axis they are one per
member, and no member's numbers reach another's.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from lr_free_cases import MEMBER_CASES, NAMES, SCHEDULE_FREE, member_hyperparameters

from sensitivity.optim import create, create_members, members

SHAPES = [(4, 3), (4,), (2, 3, 2), ()]
K = 3


def _grads(steps: int, seed: int = 0) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(K, *s, generator=gen, dtype=torch.float64) for s in SHAPES] for _ in range(steps)]


def _params(seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(K, *s, generator=gen, dtype=torch.float64) for s in SHAPES]
    params[1].zero_()  # a bias that starts at zero
    return params


def _hps(name: str, variant: str) -> list[dict]:
    return [member_hyperparameters(name, k, variant) for k in range(K)]


def _fused(name: str, variant: str, params: list[torch.Tensor]):
    opt = create_members(name, params, _hps(name, variant))
    if name in SCHEDULE_FREE:
        opt.train()
    return opt


def _solo(name: str, variant: str, k: int, params: list[torch.Tensor]):
    opt = create(name, params, **member_hyperparameters(name, k, variant))
    if name in SCHEDULE_FREE:
        opt.train()
    return opt


def _steps(opt, params, grads, member: int | None = None) -> list[dict]:
    """Step through `grads` (member's slice, for a solo run) plus the pull of a quadratic,
    a_i·(θ_i − c_i): the estimates d and η grow only where the gradients follow the parameters.
    Returns the curve metrics after each step."""
    curves = []
    for step in grads:
        for i, (p, g) in enumerate(zip(params, step)):
            noise = g if member is None else g[member]
            p.grad = noise + (0.5 + i) * (p.detach() - 0.3 * (i + 1))  # fresh, as autograd allocates them
        opt.step()
        curves.append(opt.curve_metrics())
    return curves


@pytest.mark.parametrize("name, variant", MEMBER_CASES)
def test_member_axis_equals_solo_optimizers(name, variant):
    grads = _grads(30)
    fused = _params()
    opt = _fused(name, variant, fused)
    before = opt.curve_metrics()
    fused_curves = _steps(opt, fused, grads)
    assert all(isinstance(v, torch.Tensor) and v.shape == (K,) for v in before.values())
    for k in range(K):
        solo = [p[k].clone() for p in _params()]
        solo_opt = _solo(name, variant, k, solo)
        solo_before = solo_opt.curve_metrics()
        assert all(type(v) is float for v in solo_before.values())
        assert solo_before == pytest.approx({c: float(v[k]) for c, v in before.items()}, rel=1e-12, nan_ok=True)
        for t, curve in enumerate(_steps(solo_opt, solo, grads, member=k)):
            assert curve == pytest.approx({c: float(v[k]) for c, v in fused_curves[t].items()}, rel=1e-12), t
        for p_solo, p_fused in zip(solo, fused):
            torch.testing.assert_close(p_fused[k], p_solo, rtol=1e-12, atol=1e-14)
        assert type(solo_opt.param_groups[0]["lr"]) is float


@pytest.mark.parametrize("name, variant", MEMBER_CASES)
def test_a_member_never_reads_another(name, variant):
    """Member 1's gradients turn NaN mid-run: members 0 and 2 end bit for bit as without it."""
    grads = _grads(12)
    clean = _params()
    clean_curves = _steps(_fused(name, variant, clean), clean, grads)
    poisoned = copy.deepcopy(grads)
    for step in poisoned[5:]:
        for g in step:
            g[1] = float("nan")
    fused = _params()
    curves = _steps(_fused(name, variant, fused), fused, poisoned)
    for p_clean, p_fused in zip(clean, fused):
        assert not torch.isfinite(p_fused[1]).all()
        assert torch.equal(p_fused[0], p_clean[0]) and torch.equal(p_fused[2], p_clean[2])
    for column, values in curves[-1].items():
        assert torch.equal(values[[0, 2]], clean_curves[-1][column][[0, 2]]), column


def _resume(build, params, grads, split: int, load=lambda sd: sd):
    """Run `split` steps, save the state dict through torch.save, load it (after `load`) into a new
    optimizer over copies of the parameters and run the rest; returns the resumed parameters."""
    opt = build(params)
    _steps(opt, params, grads[:split])
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    resumed = [p.clone() for p in params]
    again = build(resumed)
    again.load_state_dict(load(torch.load(buffer)))
    _steps(again, resumed, grads[split:])
    return resumed, again


@pytest.mark.parametrize("name", NAMES)
def test_solo_state_dict_round_trip(name):
    grads = [[g[0] for g in step] for step in _grads(16)]
    whole = [p[0].clone() for p in _params()]
    opt = _solo(name, False, 0, whole)
    _steps(opt, whole, grads)
    resumed, again = _resume(lambda ps: _solo(name, False, 0, ps), [p[0].clone() for p in _params()], grads, 8)
    for a, b in zip(whole, resumed):
        assert torch.equal(a, b)
    assert again.curve_metrics() == opt.curve_metrics()


@pytest.mark.parametrize("name, variant", MEMBER_CASES)
def test_member_axis_state_dict_round_trip(name, variant):
    grads = _grads(16)
    whole = _params()
    opt = _fused(name, variant, whole)
    _steps(opt, whole, grads)
    resumed, again = _resume(lambda ps: _fused(name, variant, ps), _params(), grads, 8)
    for a, b in zip(whole, resumed):
        assert torch.equal(a, b)
    for column, values in again.curve_metrics().items():
        assert values.dtype == torch.float64 and torch.equal(values, opt.curve_metrics()[column])


def _eval_round_trip(build, params, grads, split: int):
    """(uninterrupted, resumed) parameters: both switch to eval mode after `split` steps, as the
    authors' README does before saving; one goes on in place (train() again), the other is saved there,
    at x, and loaded into a new optimizer over copies of x, which train() takes back to y."""
    whole = [p.clone() for p in params]
    opt = build(whole)
    _steps(opt, whole, grads[:split])
    opt.eval()
    buffer = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "params": [p.clone() for p in whole]}, buffer)
    opt.train()
    _steps(opt, whole, grads[split:])
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = [p.clone() for p in saved["params"]]
    again = build(resumed)
    again.load_state_dict(saved["optimizer"])
    assert again.param_groups[0]["train_mode"] is False  # loaded in the mode it was saved in
    with pytest.raises(RuntimeError, match="not in train mode"):
        again.step()
    again.train()
    _steps(again, resumed, grads[split:])
    return whole, resumed, opt, again


@pytest.mark.parametrize("name", SCHEDULE_FREE)
@pytest.mark.parametrize("axis", ["solo", "member axis"])
def test_schedule_free_state_dict_saved_in_eval_mode_resumes_exactly(name, axis):
    grads = _grads(16)
    if axis == "solo":
        grads = [[g[0] for g in step] for step in grads]
        whole, resumed, opt, again = _eval_round_trip(lambda ps: _solo(name, False, 0, ps),
                                                      [p[0].clone() for p in _params()], grads, 8)
    else:
        whole, resumed, opt, again = _eval_round_trip(lambda ps: _fused(name, False, ps), _params(), grads, 8)
    for a, b in zip(whole, resumed):
        assert torch.equal(a, b)
    opt.eval(), again.eval()  # and the averages x they end at
    for a, b in zip(whole, resumed):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name, variant", MEMBER_CASES)
def test_member_sets_split_and_join(name, variant):
    """A state dict cut into member sets (`members.select`) and stacked again (`members.join`) resumes
    exactly; a 1-member slice resumes that member as the whole array does."""
    grads = _grads(16)
    whole = _params()
    _steps(_fused(name, variant, whole), whole, grads)
    resumed, _ = _resume(lambda ps: _fused(name, variant, ps), _params(), grads, 8,
                         load=lambda sd: members.join([members.select(sd, [0]), members.select(sd, [1, 2])]))
    for a, b in zip(whole, resumed):
        assert torch.equal(a, b)
    hp = [_hps(name, variant)[2]]
    alone, _ = _resume(lambda ps: _with_train(name, create_members(name, ps, hp)), [p[2:3].clone() for p in _params()],
                       [[g[2:3] for g in step] for step in grads], 8, load=lambda sd: sd)
    first = _params()
    opt = _fused(name, variant, first)
    _steps(opt, first, grads[:8])
    single = [p[2:3].clone() for p in first]
    one = _with_train(name, create_members(name, single, hp))
    one.load_state_dict(members.select(copy.deepcopy(opt.state_dict()), [2]))
    _steps(one, single, [[g[2:3] for g in step] for step in grads[8:]])
    for a, b, c in zip(whole, single, alone):
        torch.testing.assert_close(b[0], a[2], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(c[0], a[2], rtol=1e-12, atol=1e-14)


def _with_train(name: str, opt):
    if name in SCHEDULE_FREE:
        opt.train()
    return opt


@pytest.mark.parametrize("name", SCHEDULE_FREE)
def test_schedule_free_train_and_eval_per_member_equal_solo(name):
    """Switches between y (train) and x (eval) mid-run, repeated ones included, move every member as
    they move its solo run."""
    grads = _grads(24)
    plan = {6: "e", 12: "eet", 18: "ett"}  # after these steps: the switches (and a final eval)
    fused = _params()
    opt = _fused(name, False, fused)
    solos = [[p[k].clone() for p in _params()] for k in range(K)]
    solo_opts = [_solo(name, False, k, s) for k, s in enumerate(solos)]
    for t, step in enumerate(grads):
        _steps(opt, fused, [step])
        for k, (s, o) in enumerate(zip(solos, solo_opts)):
            _steps(o, s, [step], member=k)
        for mode in plan.get(t + 1, "") + ("e" if t + 1 == len(grads) else ""):
            for o in [opt, *solo_opts]:
                o.eval() if mode == "e" else o.train()
            assert opt.param_groups[0]["train_mode"] is solo_opts[0].param_groups[0]["train_mode"] is (mode == "t")
            for k in range(K):
                for p_solo, p_fused in zip(solos[k], fused):
                    torch.testing.assert_close(p_fused[k], p_solo, rtol=1e-12, atol=1e-14)
        if plan.get(t + 1, "t")[-1] == "e":
            for o in [opt, *solo_opts]:
                o.train()
    with pytest.raises(RuntimeError, match="train mode"):
        opt.step()


@pytest.mark.parametrize("name", NAMES)
def test_member_axis_takes_fused_tensors_of_any_shape(name):
    """create_members over a fused model's tensors: (K,) scalars, vectors, convolution kernels."""
    shapes = [(K,), (K, 7), (K, 4, 3, 3, 3), (K, 2, 1)]
    params = [torch.randn(s, dtype=torch.float32) for s in shapes]
    opt = _fused(name, False, params)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    assert all(torch.isfinite(p).all() for p in params)
    assert all(v.shape == (K,) and torch.isfinite(v).all() for v in opt.curve_metrics().values())


def test_members_share_flags_and_refuse_what_their_solo_run_refuses():
    params = _params()
    hps = [member_hyperparameters("prodigy", k) for k in range(K)]
    with pytest.raises(ValueError, match="decouple: members of one array must share it"):
        create_members("prodigy", params, [{**hp, "decouple": k == 1} for k, hp in enumerate(hps)])
    with pytest.raises(ValueError, match="lr must be > 0, got 0"):
        create_members("dog", params, [{"lr": lr} for lr in (1.0, 0.0, 1.0)])
    with pytest.raises(ValueError, match=r"warmup_steps must be an integer >= 0, got 2.5"):
        create_members("schedule-free-sgd", params, [{"warmup_steps": w} for w in (0, 2.5, 3)])
    assert math.isnan(create_members("d-adapt-sgd", params, [{}] * K).curve_metrics()["lr"][0])
