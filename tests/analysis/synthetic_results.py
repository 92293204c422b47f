"""A generator of realistic results tables that follow the parquet contract (README.md, "The results tables").

The tables look like a small robustness + CAM-HD study: U-shaped valleys in log-lr, diverged
runs at large lr (with and without a finite minimum before divergence), an errored trial,
lr-decay rows, HD rows over β, an SGDN label swept over lr × momentum (momentum scales the
effective lr, lr / (1 − momentum), so 0.99 moves the valley a decade down), a 2-level CAM-HD
entry that learns γ, a combination-ratio entry (fixed γ, δ = 0, 10 epochs) and
iters_to_<threshold> columns.
"""
from __future__ import annotations

import hashlib
import json
import math
import pathlib

import numpy as np
import pandas as pd

STEPS_PER_EPOCH = 10
THRESHOLDS = (0.5, 1.0)
SGD_LRS = [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0]
MOMENTA = (0.0, 0.5, 0.9, 0.99)


def _entries():
    """(optimizer, label, decay, lrs, betas, best_lr, floor, extra hyperparameters, epochs, valley width)."""
    cam = {"levels": ["unit", "global"], "decay_rate": 0.002}
    yield "sgd", "sgd", None, SGD_LRS, [None], 0.1, 0.10, {}, 6, 1.0
    yield "sgd", "sgd", "step:2:0.5", SGD_LRS, [None], 1.0, 0.08, {}, 6, 0.8
    yield "sgdn", "sgdn", None, SGD_LRS, [None], 0.01, 0.07, {"momentum": 0.9}, 6, 1.3
    yield "adam", "adam", None, [1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0], [None], 1e-3, 0.06, {}, 6, 1.6
    yield "sgd-hd", "sgd-hd", None, [1e-3, 1e-2, 0.1], [1e-5, 1e-4, 1e-3], 1e-2, 0.09, {}, 6, 1.2
    for m in MOMENTA:
        yield "sgdn", "sgdn-momentum", None, [1e-3, 1e-2, 0.1, 1.0], [None], 1e-2, 0.07, {"momentum": m}, 6, 1.0
    yield ("adam-cam-hd", "adam-cam-hd-2level", None, [1e-4, 1e-3, 1e-2], [1e-8], 1e-3, 0.05,
           {**cam, "gammas": [0.2, 0.8], "delta": 0.03}, 6, 1.5)
    for g in (0.0, 0.25, 0.5, 0.75, 1.0):
        yield ("adam-cam-hd", "adam-cam-hd-ratio", None, [1e-3], [1e-8], 1e-3, 0.05,
               {**cam, "gammas": [1.0 - g, g], "delta": 0.0}, 10, 1.0)


def _lr_at(optimizer, decay, lr, epoch, extra):
    if decay:
        _, every, factor = decay.split(":")
        return lr * float(factor) ** ((epoch - 1) // int(every))
    if optimizer.endswith("-hd"):
        return lr * math.exp(0.1 * epoch)
    return lr


def generate(study: str = "fixture", *, width: float = 1.0, seeds=(0, 1, 2), gammas_as: str = "list",
             with_label: bool = True, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, curves) DataFrames; ``width`` scales the valleys (larger: easier to tune)."""
    rng = np.random.default_rng(seed)
    rows, curves = [], []
    for optimizer, label, decay, lrs, betas, best_lr, floor, extra, epochs, shape in _entries():
        for lr in lrs:
            for beta in betas:
                for s in seeds:
                    config = {"study": study, "optimizer": optimizer, "label": label, "lr": lr, "beta": beta,
                              "decay": decay, "seed": s, "epochs": epochs, **extra}
                    trial_id = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
                    decades, bottom = math.log10(lr) - math.log10(best_lr), floor
                    if label == "sgdn-momentum":  # the valley follows lr / (1 − momentum), best at 0.9
                        m = extra["momentum"]
                        decades = math.log10(lr / (1 - m)) - math.log10(best_lr / (1 - 0.9))
                        bottom = floor + 0.08 * abs(m - 0.9)
                    target = bottom + 0.25 * (decades / (width * shape)) ** 2 + abs(rng.normal(0, 0.01))
                    if beta is not None and optimizer == "sgd-hd":
                        target += 0.05 * abs(math.log10(beta) + 4)
                    if extra.get("delta") == 0.0:  # combination ratio: best near γ_global = 0.75
                        target += 0.2 * (extra["gammas"][1] - 0.75) ** 2
                    row = {**config, "trial_id": trial_id, "dataset": "digits", "model": "mlp",
                           "batch_size": 64, "weight_decay": 1e-4, "node": f"node-{s % 2}",
                           "wall_time_s": 1.5 + 0.1 * s, "error": None,
                           "init_train_loss": 2.3 + 0.01 * s, "init_test_loss": 2.32 + 0.01 * s}
                    if optimizer == "adam" and lr == 1e-5 and s == seeds[-1]:
                        row.update(status="error", error="RuntimeError: worker lost",
                                   init_train_loss=None, init_test_loss=None,
                                   **{k: None for k in ("min_train_loss", "min_test_loss", "final_train_loss",
                                                        "final_test_loss", "best_test_acc", "final_test_acc",
                                                        "final_lr", "epochs_completed", "steps")},
                                   **{f"iters_to_{t}": None for t in THRESHOLDS})
                        rows.append(row)
                        continue
                    if decades >= 2 * max(width, 1) - 1e-9:  # far too large: blows up at once
                        last, status = 0, "diverged"
                    elif decades >= max(width, 1) - 1e-9 and s == seeds[0]:  # diverges after a few epochs
                        last, status = 3, "diverged"
                    else:
                        last, status = epochs, "ok"
                    curve = []
                    for epoch in range(1, max(last, 1) + 1):
                        blown = status == "diverged" and epoch == max(last, 1)
                        train = math.inf if blown else target + (2.3 - target) * math.exp(-0.9 * epoch)
                        test = math.inf if blown else train + 0.05 + abs(rng.normal(0, 0.005))
                        point = {"trial_id": trial_id, "epoch": epoch, "step": epoch * STEPS_PER_EPOCH,
                                 "train_loss": train, "test_loss": test,
                                 "train_acc": 0.1 if blown else min(1.0, 1.02 - train / 2.5),
                                 "test_acc": 0.1 if blown else min(1.0, 1.0 - test / 2.5),
                                 "lr": _lr_at(optimizer, decay, lr, epoch, extra)}
                        if "gammas" in extra:
                            drift = extra["delta"] * epoch
                            gu, gg = extra["gammas"][0] + drift, extra["gammas"][1] - drift
                            point.update(gamma_unit=gu, gamma_global=gg, lr_unit=lr * (1 + 0.05 * epoch),
                                         lr_global=lr * (1 + 0.02 * epoch))
                            point["lr"] = gu * point["lr_unit"] + gg * point["lr_global"]
                        curve.append(point)
                    finite = [p for p in curve if math.isfinite(p["train_loss"])]
                    row.update(
                        status=status,
                        min_train_loss=min((p["train_loss"] for p in finite), default=math.inf),
                        min_test_loss=min((p["test_loss"] for p in finite), default=math.inf),
                        final_train_loss=curve[-1]["train_loss"], final_test_loss=curve[-1]["test_loss"],
                        best_test_acc=max(p["test_acc"] for p in curve), final_test_acc=curve[-1]["test_acc"],
                        final_lr=curve[-1]["lr"], epochs_completed=len(finite), steps=len(curve) * STEPS_PER_EPOCH,
                        **{f"iters_to_{t}": next((p["step"] for p in finite if p["train_loss"] < t), None)
                           for t in THRESHOLDS})
                    rows.append(row)
                    curves.extend(curve)
    trials = pd.DataFrame(rows)
    for col in ("levels", "gammas"):
        trials[col] = [v if isinstance(v, list) else None for v in trials[col]]
        if gammas_as == "str":
            trials[col] = [None if v is None else str(v) for v in trials[col]]
    if not with_label:
        trials = trials.drop(columns="label")
    return trials, pd.DataFrame(curves)


def write(directory: pathlib.Path, trials: pd.DataFrame, curves: pd.DataFrame) -> pathlib.Path:
    directory.mkdir(parents=True, exist_ok=True)
    trials.to_parquet(directory / "trials.parquet", index=False)
    curves.to_parquet(directory / "curves.parquet", index=False)
    (directory / "study.yaml").write_text(f"name: {directory.name}\n")
    return directory
