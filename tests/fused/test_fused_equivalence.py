"""A fused array reproduces run_trial of each member's own config (float64, 1e-8 relative)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from sensitivity.outcome import Tracker
from sensitivity import data as datamod
from sensitivity import train
from sensitivity.fused import fusion_key, plan, run_fused
from sensitivity.optim import available

pytestmark = pytest.mark.usefixtures("one_thread", "ample_memory")


@pytest.fixture
def ample_memory(monkeypatch):
    """Every array here fits whole (64 GiB free), whatever this machine has free: `_check` asserts
    one array of all the members, which is what makes the comparison with solo runs a test."""
    monkeypatch.setattr(plan, "_free_bytes", lambda kind: 64 * 2**30)


@pytest.fixture
def float64(monkeypatch):
    """Test-only dtype switch: float64 models (default dtype) and float64 data (wrapped loader)."""
    load = datamod.load

    def load64(*args, **kwargs):
        data = load(*args, **kwargs)
        return replace(data, train_x=data.train_x.double(), test_x=data.test_x.double(),
                       pad_value=data.pad_value.double())

    monkeypatch.setattr(datamod, "load", load64)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


@pytest.fixture
def step_losses(monkeypatch):
    """Every _Tracker's per-step minibatch losses, in creation order, as the trackers replay them."""
    logs: dict[int, list[float]] = {}
    replay = Tracker.replay

    def spy(self, losses, sizes):
        before = self.steps
        stop = replay(self, losses, sizes)
        logs.setdefault(id(self), []).extend(losses[: self.steps - before])
        return stop

    monkeypatch.setattr(Tracker, "replay", spy)
    return logs


MIN_STEPS = 50
_LR = {"adam": 1e-3, "sgd": 0.05, "sgdn": 0.02}


def _lr(name: str) -> float:
    info = available()[name]
    if info.needs_closure:
        return 0.1
    return _LR.get(name.split("-")[0], 1e-3)


def _configs(name: str, model: str, dataset_args: dict, *, members: int = 3, **extra) -> list[dict]:
    info = available()[name]
    out = []
    for k in range(members):
        cfg = {"dataset": "synthetic", "dataset_args": dataset_args, "model": model, "optimizer": name,
               "lr": _lr(name) * (1.0 + 0.5 * k), "seed": k, "batch_size": 16, "epochs": 5,
               "weight_decay": 1e-4 * k, "device": "cpu", "thresholds": [2.0], **extra}
        if info.is_hd:
            cfg["beta"] = info.hyperparameters["beta"] * (1 + k)
        if "momentum" in info.hyperparameters:
            cfg["optimizer_args"] = {"momentum": 0.9 - 0.1 * k}
        if info.needs_closure:
            cfg["decay"] = None
        elif k == 1:
            cfg["decay"] = {"every_epochs": 2, "factor": 0.5}
        out.append(cfg)
    return out


def _close(a: float, b: float, rel: float = 1e-8) -> bool:
    if not (math.isfinite(a) and math.isfinite(b)):
        return a == b or (math.isnan(a) and math.isnan(b))
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


def _assert_same(fused, solo, logs_fused, logs_solo):
    assert fused.row["status"] == solo.row["status"]
    assert fused.row["steps"] == solo.row["steps"]
    assert len(logs_fused) == len(logs_solo) >= MIN_STEPS or fused.row["status"] == "diverged"
    for a, b in zip(logs_fused, logs_solo):
        assert _close(a, b), (a, b)
    assert len(fused.curve) == len(solo.curve)
    for cf, cs in zip(fused.curve, solo.curve):
        assert cf.keys() == cs.keys()
        for key in cs:
            if isinstance(cs[key], float):
                assert _close(cf[key], cs[key]), (key, cf[key], cs[key])
            else:
                assert cf[key] == cs[key], key
    for key, value in solo.row.items():
        if key in ("wall_time_s",):
            continue
        if isinstance(value, float):
            assert _close(fused.row[key], value), (key, fused.row[key], value)
        else:
            assert fused.row[key] == value, key


def _check(configs, step_losses):
    fused = run_fused(configs)
    fused_logs = list(step_losses.values())
    step_losses.clear()
    for cfg, result, log in zip(configs, fused, fused_logs):
        solo = train.run_trial(cfg)
        (solo_log,) = step_losses.values()
        step_losses.clear()
        _assert_same(result, solo, log, solo_log)
        assert result.row["array_size"] == len(configs)


SMALL = {"shape": [1, 4, 4], "train_size": 200, "test_size": 40}  # 13 steps an epoch, 65 in all


@pytest.mark.parametrize("name", list(available()))
def test_mlp_every_optimizer_matches_solo(name, float64, step_losses):
    _check(_configs(name, "mlp", SMALL, model_args={"hidden": [16]}), step_losses)


FAMILIES = ["sgd", "sgdn", "adam", "radam", "adabound", "sgd-hd", "sgdn-hd-sgdn", "adam-hd-adam",
            "adam-l4", "sgdn-l4", "sgd-cam-hd", "adam-cam-hd"]


@pytest.mark.parametrize("name", FAMILIES)
def test_lenet5_matches_solo(name, float64, step_losses):
    _check(_configs(name, "lenet5", {"shape": [1, 12, 12], "train_size": 160, "test_size": 40}, members=2),
           step_losses)


def _resnet_configs(name: str, epochs: int) -> list[dict]:
    cfgs = _configs(name, "resnet18", {"shape": [1, 2, 2], "train_size": 160, "test_size": 16}, members=2)
    for cfg in cfgs:
        cfg["epochs"] = epochs
    return cfgs


def test_batch_norm_model_matches_solo(float64, step_losses, monkeypatch):
    """ResNet-18 (batch norm in every block): per-member statistics, running ones included (eval curves)."""
    monkeypatch.setitem(globals(), "MIN_STEPS", 10)
    _check(_resnet_configs("sgdn-hd", 1), step_losses)


@pytest.mark.exhaustive  # 50+ steps of an 11M-parameter float64 model: minutes per optimizer
@pytest.mark.parametrize("name", ["sgdn", "adam-hd", "sgdn-cam-hd", "adam-l4"])
def test_batch_norm_model_matches_solo_50_steps(name, float64, step_losses):
    _check(_resnet_configs(name, 5), step_losses)


@pytest.mark.parametrize("name", ["sgdn", "adam-hd-adam", "sgd-cam-hd", "adam-l4"])
def test_logreg_matches_solo(name, float64, step_losses):
    """One linear layer: CAM-HD's units and layers, L4's losses, HD's α over the smallest model."""
    _check(_configs(name, "logreg", SMALL, members=2), step_losses)


TINY = {"train_size": 32, "test_size": 8}  # batches of 16: two steps an epoch
# VGG-16's 13 conv-BN-ReLU layers and 5 max-pools at widths of 4 to 8 channels (the last 512, which
# the classifier reads): its every layer kind and order, at a thousandth of the full model's cost
NARROW_VGG16 = (4, 4, "M", 8, 8, "M", 8, 8, 8, "M", 8, 8, 8, "M", 8, 8, 512, "M")


@pytest.mark.parametrize("name", ["sgdn-hd", "schedule-free-sgd"])
def test_vgg16_matches_solo(name, float64, step_losses, monkeypatch):
    """Batch norm after every conv; Schedule-Free is evaluated at x, where each member's running
    statistics are estimated again from the training batches (`loop.evaluation_point`)."""
    from sensitivity import models

    monkeypatch.setattr(models, "_VGG16", NARROW_VGG16)
    monkeypatch.setitem(globals(), "MIN_STEPS", 4)
    cfgs = _configs(name, "vgg16", {"shape": [1, 32, 32], **TINY}, members=2, epochs=2)
    _check(cfgs, step_losses)


def test_resnet34_matches_solo(float64, step_losses, monkeypatch):
    """ResNet-34: ResNet-18's blocks, more of them per stage (its downsampling shortcuts included)."""
    monkeypatch.setitem(globals(), "MIN_STEPS", 2)
    _check(_configs("sgdn-hd", "resnet34", {"shape": [1, 2, 2], **TINY}, members=2, epochs=1), step_losses)


@pytest.mark.exhaustive  # the full-width VGG-16 in float64: one to two minutes per optimizer on a CPU
@pytest.mark.parametrize("name", ["sgdn-hd", "schedule-free-sgd"])
def test_full_width_vgg16_matches_solo(name, float64, step_losses, monkeypatch):
    monkeypatch.setitem(globals(), "MIN_STEPS", 4)
    _check(_configs(name, "vgg16", {"shape": [1, 32, 32], **TINY}, members=2, epochs=2), step_losses)


def test_cam_hd_three_levels_matches_solo(float64, step_losses):
    cfgs = _configs("adam-cam-hd", "mlp", SMALL, model_args={"hidden": [16]})
    for k, cfg in enumerate(cfgs):
        cfg["optimizer_args"] = {"levels": ["unit", "layer", "global"], "gammas": [0.2 + 0.1 * k, 0.3, 0.5 - 0.1 * k]}
    _check(cfgs, step_losses)


def test_augmentation_draws_match_solo(float64, step_losses):
    cfgs = _configs("sgdn", "lenet5", {"shape": [1, 12, 12], "train_size": 160, "test_size": 40}, members=2,
                    augment=True)
    _check(cfgs, step_losses)


@pytest.mark.parametrize("name,args", [
    ("adam-hd-adam", [{"betas": [0.9, 0.999], "eps": 1e-8, "lop_betas": [0.8, 0.99], "lop_eps": 1e-6, "lr_max": 0.01},
                      {"betas": [0.8, 0.99], "eps": 1e-6, "lop_betas": [0.9, 0.999], "lr_min": 1e-4},
                      {"betas": [0.95, 0.9], "eps": 1e-3, "lop_eps": 1e-9, "lr_min": 2e-3, "lr_max": 2e-3}]),
    ("sgdn-hd-sgdn", [{"lop_momentum": 0.5}, {"lop_momentum": 0.9, "lr_min": 0.01}, {"lop_momentum": 0.0}]),
    ("adam", [{"betas": [0.9, 0.999]}, {"betas": [0.5, 0.9], "eps": 1e-4}, {"eps": 0.1}]),
])
def test_members_differ_in_every_hyperparameter(name, args, float64, step_losses):
    """Per-member betas, eps and lr-optimizer settings and partial lr bounds: each member as alone."""
    cfgs = _configs(name, "mlp", SMALL, model_args={"hidden": [16]})
    for cfg, extra in zip(cfgs, args):
        cfg["optimizer_args"] = {**cfg.get("optimizer_args", {}), **extra}
    _check(cfgs, step_losses)


@pytest.mark.parametrize("name", ["sgd", "radam", "sgdn-hd", "adam-hd-adam", "adam-cam-hd", "adabound", "sgdn-l4"])
def test_diverging_member_is_isolated(name, float64, step_losses):
    """lr 1e4 beside small ones: diverged at its solo step, dropped, and the others unchanged."""
    base = _configs(name, "mlp", SMALL, model_args={"hidden": [16]})
    base[1]["lr"] = 1e4
    fused = run_fused(base)
    assert fused[1].row["status"] == "diverged"
    alone = run_fused([base[0], base[2]])
    for k, other in ((0, 0), (2, 1)):
        assert fused[k].row["status"] == "ok"
        assert fused[k].row["steps"] == alone[other].row["steps"]
        for cf, ca in zip(fused[k].curve, alone[other].curve):
            for key in ("train_loss", "test_loss", "lr", "train_acc"):
                assert _close(cf[key], ca[key]), key
    step_losses.clear()
    solo = train.run_trial(base[1])
    assert solo.row["status"] == "diverged" and fused[1].row["steps"] == solo.row["steps"]


def test_fusion_key_and_mismatch():
    a = {"dataset": "digits", "model": "mlp", "optimizer": "sgd", "lr": 0.1, "seed": 1}
    b = {**a, "lr": 0.5, "seed": 2, "weight_decay": 1e-3, "decay": {"every_epochs": 1, "factor": 0.5}}
    assert fusion_key(a) == fusion_key(b)
    c = {**a, "batch_size": 32}
    assert fusion_key(a) != fusion_key(c)
    with pytest.raises(ValueError, match="batch_size"):
        run_fused([a, c])
    with pytest.raises(ValueError, match="optimizer_args.levels"):
        run_fused([{**a, "optimizer": "sgd-cam-hd"},
                   {**a, "optimizer": "sgd-cam-hd", "optimizer_args": {"levels": ["global"], "gammas": [1.0]}}])
