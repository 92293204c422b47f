"""RAdam and AdaBound, implemented on the functional core, against their libraries in float64:
torch.optim.RAdam (coupled L2) and pytorch-optimizer's AdaBound (``weight_decouple=False``), over
many steps with weight decay on and hyperparameters away from the defaults."""

from __future__ import annotations

import pytest
import torch
from pytorch_optimizer import AdaBound as LibraryAdaBound

from sensitivity.optim import create

SHAPES = [(5, 3), (5,), (2, 5), ()]
STEPS = 200


def _start() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in SHAPES]


def _run(make, steps: int = STEPS, *, skip: int | None = None, schedule=None, params=None, first: int = 0):
    """Noisy steps first..first+steps-1 on f(θ) = Σ θ² + 0.1·θ³ (from a fixed start, or `params`);
    tensor `skip` gets no gradient at every 7th step; `schedule(opt, t)` may change the groups
    before step t. `make` builds the optimizer from the params, or is one already built."""
    params = _start() if params is None else params
    opt = make(params) if callable(make) else make
    for t in range(first, first + steps):
        if schedule is not None:
            schedule(opt, t)
        opt.zero_grad()
        sum((p**2).sum() + 0.1 * (p**3).sum() for p in params).backward()
        noise = torch.Generator().manual_seed(1000 + t)
        for p in params:
            p.grad.add_(torch.randn(p.shape, generator=noise, dtype=torch.float64), alpha=0.1)
        if skip is not None and t % 7 == 3:
            params[skip].grad = None
        opt.step()
    return [p.detach() for p in params]


def _assert_same(ours, reference, rtol=1e-12):
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=rtol, atol=1e-14)


RADAM = [
    dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2),  # rectified from step 6 on
    dict(lr=1e-2, betas=(0.95, 0.6), eps=1e-4, weight_decay=3e-2),  # ρ_∞ = 4: never rectified
    dict(lr=2e-3, betas=(0.5, 0.9), eps=1e-8, weight_decay=1e-3),
]


@pytest.mark.parametrize("hp", RADAM, ids=["rectified", "never-rectified", "early"])
@pytest.mark.parametrize("foreach", [False, True])
def test_radam_is_torch_radam(hp, foreach):
    reference = _run(lambda ps: torch.optim.RAdam(ps, foreach=foreach, **hp))
    ours = _run(lambda ps: create("radam", ps, **hp))
    _assert_same(ours, reference)
    if foreach:  # the same ops as torch's foreach RAdam
        assert all(torch.equal(a, b) for a, b in zip(ours, reference))


def test_radam_groups_and_skipped_steps_are_torch_radam():
    def groups(ps):
        return [{"params": ps[:2], **RADAM[0]}, {"params": ps[2:], **RADAM[2]}]

    reference = _run(lambda ps: torch.optim.RAdam(groups(ps)), skip=1)
    ours = _run(lambda ps: create("radam", groups(ps)), skip=1)
    _assert_same(ours, reference)


ADABOUND = [
    dict(lr=3e-3, final_lr=0.05, gamma=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2),
    dict(lr=1e-2, final_lr=0.2, gamma=0.1, betas=(0.95, 0.9), eps=1e-4, weight_decay=3e-2),  # bounds bind soon
]


@pytest.mark.parametrize("hp", ADABOUND, ids=["slow-bounds", "fast-bounds"])
@pytest.mark.parametrize("foreach", [False, True])
def test_adabound_is_pytorch_optimizers(hp, foreach):
    reference = _run(lambda ps: LibraryAdaBound(ps, weight_decouple=False, foreach=foreach, **hp))
    ours = _run(lambda ps: create("adabound", ps, **hp))
    _assert_same(ours, reference)


def test_adabound_bounds_follow_an_lr_decay_and_a_late_first_lr():
    """Halving lr mid-run scales the bounds with it (final_lr·lr/base_lr); a group created at lr 0
    takes its first positive lr as base lr, as pytorch-optimizer does."""
    hp = {k: v for k, v in ADABOUND[1].items() if k != "lr"}

    def schedule(opt, t):
        if t == 3:
            opt.param_groups[1]["lr"] = 1e-2
        if t == 60:
            for group in opt.param_groups:
                group["lr"] *= 0.5

    def groups(ps):
        return [{"params": ps[:2], "lr": 1e-2}, {"params": ps[2:], "lr": 0.0}]

    reference = _run(lambda ps: LibraryAdaBound(groups(ps), weight_decouple=False, **hp), schedule=schedule)
    ours = _run(lambda ps: create("adabound", groups(ps), **hp), schedule=schedule)
    _assert_same(ours, reference)
    unscheduled = _run(lambda ps: create("adabound", groups(ps), **hp))
    assert not torch.allclose(unscheduled[0], ours[0], rtol=1e-6)  # the decay did change the run


@pytest.mark.parametrize("name,hp", [("radam", RADAM[0]), ("adabound", ADABOUND[0])])
def test_state_dict_round_trip_continues_identically(name, hp):
    whole = _run(lambda ps: create(name, ps, **hp), steps=40)
    params = _start()
    opt = create(name, params, **hp)
    _run(opt, steps=20, params=params)
    state = opt.state_dict()
    resumed = [p.detach().clone().requires_grad_() for p in params]
    again = create(name, resumed, **{**hp, "lr": 1.0})  # lr, base lr and moments all come from the state
    again.load_state_dict(state)
    _run(again, steps=20, params=resumed, first=20)
    assert all(torch.equal(a, b) for a, b in zip(resumed, whole))
