"""The member axis: one optimizer over fused (K, …) tensors equals K solo optimizers, member by member.

Table-driven over every name the fused arrays update along the member axis (sgd, sgdn, adam and
the nine HD optimizers), with every hyperparameter different per member, in float64.
"""

from __future__ import annotations

import copy

import pytest
import torch
from optim_cases import hd_names

from sensitivity.optim import create_members as member_axis_optimizer
from sensitivity.optim import available, create

NAMES = ["sgd", "sgdn", "adam", *hd_names()]
SHAPES = [(4, 3), (4,), (2, 4)]
K = 3


def _hyperparameters(name: str, k: int) -> dict:
    """Member k's hyperparameters: each one differs between members where the optimizer has it."""
    keys = available()[name].hyperparameters
    values = {
        "lr": (0.05 if "adam" not in name.split("-")[0] else 0.01) * (1 + k), "beta": 1e-3 * (1 + k),
        "weight_decay": 1e-3 * k, "momentum": 0.9 - 0.2 * k, "betas": (0.9 - 0.1 * k, 0.999 - 0.05 * k),
        "eps": 10.0 ** (-8 + 2 * k), "lop_momentum": 0.5 + 0.2 * k, "lop_betas": (0.8 + 0.05 * k, 0.99),
        "lop_eps": 10.0 ** (-8 + k), "lr_min": [None, 0.0, 1e-3][k], "lr_max": [None, 1.0, 0.2][k],
    }
    return {key: values[key] for key in keys if key in values}


def _grads(steps: int, seed: int = 0) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(K, *s, generator=gen, dtype=torch.float64) for s in SHAPES] for _ in range(steps)]


def _params(seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(K, *s, generator=gen, dtype=torch.float64) for s in SHAPES]


def _run_fused(name, params, grads):
    opt = member_axis_optimizer(name, params, [_hyperparameters(name, k) for k in range(K)])
    lrs = []
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.clone()  # a fresh tensor each step, as autograd allocates after zero_grad
        opt.step()
        lrs.append(opt.param_groups[0]["lr"].clone())
    return opt, lrs


@pytest.mark.parametrize("name", NAMES)
def test_member_axis_equals_solo_optimizers(name):
    steps = 25
    grads = _grads(steps)
    fused = _params()
    _, fused_lrs = _run_fused(name, fused, grads)
    for k in range(K):
        solo = [p[k].clone() for p in _params()]
        opt = create(name, solo, **_hyperparameters(name, k))
        for t, step in enumerate(grads):
            for p, g in zip(solo, step):
                p.grad = g[k].clone()
            opt.step()
            assert opt.param_groups[0]["lr"] == pytest.approx(float(fused_lrs[t][k]), rel=1e-12, abs=1e-300)
        for p_solo, p_fused in zip(solo, fused):
            torch.testing.assert_close(p_fused[k], p_solo, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", NAMES)
def test_a_member_never_reads_another(name):
    """Member 1's gradients turn non-finite mid-run: members 0 and 2 end exactly as without it."""
    grads = _grads(12)
    clean = _params()
    _run_fused(name, clean, grads)
    poisoned = copy.deepcopy(grads)
    for step in poisoned[5:]:
        for g in step:
            g[1] = float("inf") if name.startswith("sgd") else float("nan")
    fused = _params()
    opt, _ = _run_fused(name, fused, poisoned)
    for p_clean, p_fused in zip(clean, fused):
        assert not torch.isfinite(p_fused[1]).all()
        assert torch.equal(p_fused[0], p_clean[0]) and torch.equal(p_fused[2], p_clean[2])
    assert torch.isfinite(opt.param_groups[0]["lr"][[0, 2]]).all()


@pytest.mark.parametrize("name", NAMES)
def test_member_axis_state_dict_round_trip(name):
    """Saved after 8 steps and loaded into a new optimizer, 8 more steps equal the uninterrupted run."""
    grads = _grads(16)
    whole = _params()
    _run_fused(name, whole, grads)
    first = _params()
    opt, _ = _run_fused(name, first, grads[:8])
    state = copy.deepcopy(opt.state_dict())
    resumed = [p.clone() for p in first]
    again = member_axis_optimizer(name, resumed, [_hyperparameters(name, k) for k in range(K)])
    again.load_state_dict(state)
    assert again.param_groups[0]["lr"].dtype == torch.float64
    for step in grads[8:]:
        for p, g in zip(resumed, step):
            p.grad = g.clone()
        again.step()
    for a, b in zip(whole, resumed):
        assert torch.equal(a, b)


def test_member_axis_baselines_accept_what_their_solo_optimizer_accepts():
    """Fused sgdn members pass torch's SGD checks, as their solo runs do: momentum 0 with Nesterov is
    an error there, momentum 1.5 is not."""
    params = _params()
    with pytest.raises(ValueError, match="[Nn]esterov"):
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


@pytest.mark.parametrize("name", NAMES)
def test_member_sets_split_and_join(name):
    """A state dict cut into member sets (`members.select`) and stacked again (`members.join`) resumes
    exactly; a 1-member slice resumes that member exactly as the whole array does."""
    from sensitivity.optim import members

    grads = _grads(16)
    whole = _params()
    _run_fused(name, whole, grads)
    first = _params()
    opt, _ = _run_fused(name, first, grads[:8])
    state = copy.deepcopy(opt.state_dict())
    joined = members.join([members.select(state, [0]), members.select(state, [1, 2])])
    resumed = [p.clone() for p in first]
    again = member_axis_optimizer(name, resumed, [_hyperparameters(name, k) for k in range(K)])
    again.load_state_dict(joined)
    alone = [p[2:3].clone() for p in first]
    single = member_axis_optimizer(name, alone, [_hyperparameters(name, 2)])
    single.load_state_dict(members.select(state, [2]))
    for step in grads[8:]:
        for p, q, g in zip(resumed, alone, step):
            p.grad, q.grad = g.clone(), g[2:3].clone()
        again.step()
        single.step()
    for a, b, c in zip(whole, resumed, alone):
        assert torch.equal(a, b)
        torch.testing.assert_close(c[0], a[2], rtol=1e-12, atol=1e-14)
