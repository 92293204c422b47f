"""CUDA: a fused array on the GPU agrees with solo runs (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from sensitivity import train
from sensitivity.fused import run_fused

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("model,args", [("mlp", {"hidden": [32]}), ("resnet18", {})])
def test_cuda_array_agrees_with_solo(model, args):
    base = {"dataset": "synthetic", "dataset_args": {"shape": [3, 8, 8], "train_size": 256, "test_size": 64},
            "model": model, "model_args": args, "optimizer": "sgdn-hd", "batch_size": 32, "epochs": 2,
            "device": "cuda"}
    configs = [{**base, "lr": lr, "seed": s} for lr in (0.01, 1e4) for s in (0, 1)]
    for cfg, result in zip(configs, run_fused(configs)):
        solo = train.run_trial(cfg)
        assert result.row["status"] == solo.row["status"]
        if solo.row["status"] == "ok":
            assert result.row["min_train_loss"] == pytest.approx(solo.row["min_train_loss"], rel=1e-3)
