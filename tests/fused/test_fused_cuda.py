"""CUDA: a fused array on the GPU agrees with solo runs (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from sensitivity import train
from sensitivity.fused import run_fused

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def exact_float32(monkeypatch):
    """TF32 off (cuDNN's default for convolutions): the grouped and the solo convolutions take different
    kernels, and at 10 mantissa bits their difference is not float32's."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.mark.parametrize("model,args", [("mlp", {"hidden": [32]}), ("resnet18", {})])
def test_cuda_array_agrees_with_solo(model, args, exact_float32):
    base = {"dataset": "synthetic", "dataset_args": {"shape": [3, 8, 8], "train_size": 256, "test_size": 64},
            "model": model, "model_args": args, "optimizer": "sgdn-hd", "batch_size": 32, "epochs": 2,
            "device": "cuda"}
    configs = [{**base, "lr": lr, "seed": s} for lr in (0.01, 1e4) for s in (0, 1)]
    for cfg, result in zip(configs, run_fused(configs)):
        solo = train.run_trial(cfg)
        assert result.row["status"] == solo.row["status"]
        if solo.row["status"] == "ok":
            assert result.row["min_train_loss"] == pytest.approx(solo.row["min_train_loss"], rel=1e-3)


@pytest.mark.parametrize("optimizer", ["sgd", "adam-hd"])
def test_cuda_members_draw_their_augmentation_as_their_solo_runs_do(optimizer):
    """augment on, on the GPU: each member's crops and flips come from its own generator on the
    device, so a member's batches, and with them its losses, are its solo run's (float64 data and
    model: equal to round-off). The global CUDA seed, which no loss shows, is test_fused_seeding's."""
    from dataclasses import replace

    from sensitivity import data as datamod

    load = datamod.load

    def load64(*args, **kwargs):
        d = load(*args, **kwargs)
        return replace(d, train_x=d.train_x.double(), test_x=d.test_x.double(), pad_value=d.pad_value.double())

    before = torch.get_default_dtype()
    datamod.load = load64
    torch.set_default_dtype(torch.float64)
    try:
        base = {"dataset": "synthetic", "dataset_args": {"shape": [3, 12, 12], "train_size": 96, "test_size": 32},
                "model": "lenet5", "optimizer": optimizer, "batch_size": 16, "epochs": 2, "augment": True,
                "device": "cuda"}
        configs = [{**base, "lr": 0.01 * (1 + k), "seed": k} for k in range(3)]
        for cfg, result in zip(configs, run_fused(configs)):
            solo = train.run_trial(cfg)
            assert [c["train_loss"] for c in result.curve] == pytest.approx([c["train_loss"] for c in solo.curve],
                                                                           rel=1e-8)
    finally:
        datamod.load = load
        torch.set_default_dtype(before)
