"""The learning-rate-free optimizers equal their authors' code: the same gradients give the same parameters.

Table-driven over the seven names (``lr_free_cases``): ours (``create``) and theirs (the authors'
class with the same keywords) start from the same float64 parameters, four tensors of different
shapes including a bias-like 1-D one that starts at zero and a 0-dim one. Each step's gradients
are those of a noisy quadratic at our parameters, handed to both (cloned: the authors' code writes
into ``p.grad``). After every step of STEPS the parameters agree to 1e-6 relative, and so do the
rule's numbers (d, η, the scheduled lr) and the lr our curves report. Schedule-Free is compared
in both modes: y after every step, x after ``.eval()`` every 10 steps (with repeated and
redundant switches), x at the end. Halfway, every group's lr is halved, as an lr decay does.
"""

from __future__ import annotations

import pytest
import torch
from lr_free_cases import AWAY, NAMES, SCHEDULE_FREE, cases, quadratic_grads, reference

from sensitivity.optim import create
from sensitivity.optim.lr_free_functional import Workspace

SHAPES = [(5, 4), (4,), (3, 2, 2), ()]
STEPS = 120
TOL = dict(rtol=1e-6, atol=1e-12)


def _start() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    params = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    params[1].zero_()  # a bias that starts at zero (Prodigy keeps a scalar 0 as its start)
    return params


def _feed(ours: list[torch.Tensor], theirs: list[torch.Tensor], step: int) -> None:
    for p, q, g in zip(ours, theirs, quadratic_grads(ours, step)):
        p.grad, q.grad = g.clone(), g.clone()


def _expected_lr(name: str, group: dict) -> float | None:
    """The step size the authors' next step uses, from their group's numbers (None: compared after the step)."""
    if name == "d-adapt-sgd":
        return group["d"] * group["lr"] / group["g0_norm"] if group["k"] > 0 else None
    if name in ("prodigy", "d-adapt-adam"):
        beta1, beta2 = group["betas"]
        k = group["k"]
        bc = (1 - beta2 ** (k + 1)) ** 0.5 / (1 - beta1 ** (k + 1)) if group["use_bias_correction"] else 1
        return group["d"] * group["lr"] * bc
    return None


def _check_numbers(name: str, opt, ref, expected_lr: float | None) -> None:
    """The rule's own numbers agree with the authors', and our curves report the step size they used
    (the mean over groups, where each group has its own)."""
    ours, groups = opt.curve_metrics(), ref.param_groups
    if name in ("prodigy", "d-adapt-sgd", "d-adapt-adam"):
        assert ours["d"] == pytest.approx(groups[0]["d"], rel=1e-6)
        if expected_lr is not None:
            assert ours["lr"] == pytest.approx(expected_lr, rel=1e-6)
        return
    if name in SCHEDULE_FREE:
        lrs = [g["scheduled_lr"] for g in groups]
    elif name == "dog":
        lrs = [float(g["eta"][0]) for g in groups]
    else:
        lrs = []
        for mine, theirs in zip(opt.param_groups, groups):
            etas = torch.stack(theirs["eta"])
            torch.testing.assert_close(mine["eta"], etas, **TOL)
            sizes = torch.tensor([p.numel() for p in theirs["params"]], dtype=torch.float64)
            lrs.append(float((etas * sizes).sum() / sizes.sum()))
    assert ours["lr"] == pytest.approx(sum(lrs) / len(lrs), rel=1e-6)


def _switch(opt, ref, sequence: str) -> None:
    for mode in sequence:
        getattr(opt, {"e": "eval", "t": "train"}[mode])()
        getattr(ref, {"e": "eval", "t": "train"}[mode])()


def _run(name: str, ours_params, theirs_params, opt, ref, steps: int) -> None:
    schedule_free = name in SCHEDULE_FREE
    if schedule_free:
        _switch(opt, ref, "t")
    for t in range(steps):
        if t == steps // 2:  # an lr decay multiplies the rule's multiplier, in both
            for group in opt.param_groups + ref.param_groups:
                group["lr"] *= 0.5
        _feed(ours_params, theirs_params, t)
        expected_lr = _expected_lr(name, ref.param_groups[0])
        opt.step()
        ref.step()
        for a, b in zip(ours_params, theirs_params):
            torch.testing.assert_close(a, b, **TOL, msg=lambda m: f"{name}, step {t + 1}: {m}")
        _check_numbers(name, opt, ref, expected_lr)
        if schedule_free and t % 10 == 9:
            _switch(opt, ref, "ee" if t % 20 == 9 else "e")  # to x (a second eval() is a no-op)
            for a, b in zip(ours_params, theirs_params):
                torch.testing.assert_close(a, b, **TOL, msg=lambda m: f"{name}, x after step {t + 1}: {m}")
            _switch(opt, ref, "tt" if t % 20 == 19 else "t")  # back to y
    if schedule_free:
        _switch(opt, ref, "e")
        for a, b in zip(ours_params, theirs_params):
            torch.testing.assert_close(a, b, **TOL, msg=lambda m: f"{name}, x at the end: {m}")


@pytest.mark.parametrize("name, hp", cases())
def test_equals_the_authors_code_after_every_step(name, hp):
    ours, theirs = _start(), _start()
    opt, ref = create(name, ours, **hp), reference(name)(theirs, **hp)
    _run(name, ours, theirs, opt, ref, STEPS)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("keep", [False, True], ids=["fresh", "kept-in-ranges"])
def test_either_workspace_equals_the_authors_code(name, keep):
    """Temporaries as accelerators make them (one range, fresh foreach results), and in kept memory a few
    tensors at a time (CPU's default, here with ranges of 16 elements so that there are several)."""
    ours, theirs = _start(), _start()
    opt, ref = create(name, ours, **AWAY[name][-1]), reference(name)(theirs, **AWAY[name][-1])
    opt.workspace = Workspace(keep=keep)
    opt.workspace.SPAN = 16
    _run(name, ours, theirs, opt, ref, 40)
    assert len(opt.workspace.spans(ours)) == (3 if keep else 1)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("frozen", [False, True], ids=["two-groups", "second-group-lr-0"])
def test_param_groups_equal_the_authors_code(name, frozen):
    """Two groups with their own weight decay (and ε); with `frozen` the second group's lr is 0, which
    Prodigy and D-Adaptation leave out of d's sums (Schedule-Free and DoG: just another lr)."""
    hp = AWAY[name][0]
    extra = {"weight_decay": 0.03, **({"eps": 1e-5} if "eps" in hp else {})}
    second = {"lr": 0.0} if frozen else ({"lr": hp["lr"] / 2} if name in SCHEDULE_FREE + ("dog", "ldog") else {})
    ours, theirs = _start(), _start()
    opt = create(name, [{"params": ours[:2], **extra}, {"params": ours[2:], **second}], **hp)
    ref = reference(name)([{"params": theirs[:2], **extra}, {"params": theirs[2:], **second}], **hp)
    _run(name, ours, theirs, opt, ref, 50)


@pytest.mark.parametrize("name", SCHEDULE_FREE)
def test_schedule_free_steps_only_in_train_mode_as_the_authors(name):
    ours, theirs = _start(), _start()
    opt, ref = create(name, ours), reference(name)(theirs)
    assert opt.param_groups[0]["train_mode"] is ref.param_groups[0]["train_mode"] is False
    _feed(ours, theirs, 0)
    with pytest.raises(Exception, match="train mode"):
        ref.step()
    with pytest.raises(RuntimeError, match="train mode"):
        opt.step()
    _switch(opt, ref, "t")
    opt.step()
    ref.step()
    _switch(opt, ref, "e")
    with pytest.raises(Exception, match="train mode"):
        ref.step()
    with pytest.raises(RuntimeError, match="train mode"):
        opt.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, **TOL)
