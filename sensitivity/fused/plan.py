"""How to cut trials into arrays: whether fusing pays, and how many members fit.

``fuse`` (study file, or ``sensitivity run --fuse``) is ``off``, ``auto`` or an int N:

- ``off``: every trial runs alone (``run_trial``).
- ``auto``: fuse only where it pays on the device at hand (:func:`pays`), with as many members
  as fit in :data:`MEMORY_FRACTION` of the device's free memory (:func:`fit`), at most
  :data:`AUTO_MAX`.
- ``N``: fuse every fusable group, at most N members an array (still capped by memory).

The rule of :func:`pays` comes from ``benchmarks/fused_throughput.py`` (trials per second,
fused against solo, same configs, one process, one thread): on a CPU fusion pays for the small
fully connected models, whose steps are dominated by per-call overhead, and not for
convolutional ones (grouped convolutions are slower per member there) nor for wide MLPs, which
are compute-bound. On a GPU the fused operators fill the device where one small model cannot
(HFTA reports up to 15x); GPU figures are unmeasured here, so ``auto`` fuses every model there.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

__all__ = ["MEMORY_FRACTION", "AUTO_MAX", "CPU_MAX_PARAMS", "check_setting", "pays", "member_bytes", "fit",
           "cut"]

MEMORY_FRACTION = {"cuda": 0.6, "cpu": 0.25}  # of the free memory, for one array
AUTO_MAX = 64  # members of one array under `auto`
CPU_MAX_PARAMS = 100_000  # fully connected models up to this size fuse on a CPU (see the benchmark)
MIN_SPLIT = 8  # members per array below which arrays are not split further to fill the slots
_STATE_COPIES = 4  # parameter-sized tensors besides the weights: grad, moments, HD's previous direction


def check_setting(value: Any) -> str | int:
    """'auto', 'off' or an int >= 1; ValueError otherwise."""
    if isinstance(value, bool) or not (value in ("auto", "off") or (isinstance(value, int) and value >= 1)):
        raise ValueError(f"fuse must be 'auto', 'off' or an int >= 1, got {value!r}")
    return value


def _device_type(cfg: dict) -> str:
    device = cfg.get("device", "auto")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def _param_count(cfg: dict) -> int:
    from sensitivity import data as datamod
    from sensitivity import models

    shape, classes = datamod.dataset_info(cfg["dataset"], cfg.get("dataset_args") or {})
    with torch.device("meta"):
        model = models.build(cfg["model"], shape, classes, cfg.get("model_args") or {})
    return sum(p.numel() for p in model.parameters())


def pays(cfg: dict) -> bool:
    """Whether ``auto`` fuses this config's trials (see the module docstring for the rule)."""
    if _device_type(cfg) == "cuda":
        return True
    return cfg["model"] in ("logreg", "mlp") and _param_count(cfg) <= CPU_MAX_PARAMS


def member_bytes(cfg: dict) -> int:
    """Estimated memory of one member: weights, gradients, optimizer state and activations."""
    from sensitivity import data as datamod
    from sensitivity import models

    shape, classes = datamod.dataset_info(cfg["dataset"], cfg.get("dataset_args") or {})
    with torch.device("meta"):
        model = models.build(cfg["model"], shape, classes, cfg.get("model_args") or {})
        outputs = []
        hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out.numel()))
                 for m in model.modules() if not list(m.children())]
        model(torch.zeros(2, *shape))
        for h in hooks:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    batch = int(cfg.get("batch_size", 128))
    activations = sum(outputs) // 2 * batch * 2  # kept for backward, and their gradients
    return 4 * (params * (1 + _STATE_COPIES) + activations)


def _free_bytes(device_type: str) -> int:
    if device_type == "cuda":
        return int(torch.cuda.mem_get_info()[0])
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def fit(cfg: dict) -> int:
    """Members of this config's model that fit in MEMORY_FRACTION of the free device memory."""
    kind = _device_type(cfg)
    return max(1, int(MEMORY_FRACTION[kind] * _free_bytes(kind) // member_bytes(cfg)))


def cut(configs: list[dict], setting: str | int, slots: int = 1) -> tuple[list[list[dict]], list[dict]]:
    """(arrays, solo trials): `configs` grouped by fusion key and cut into arrays of similar sizes.

    Groups that ``auto`` does not fuse, and groups of one trial, are returned as solo trials.
    Under ``auto`` a group is split into at least `slots` arrays while each keeps MIN_SPLIT members,
    so that parallel slots are not left idle.
    """
    from .array import fusion_key

    check_setting(setting)
    if setting == "off":
        return [], list(configs)
    groups: dict[tuple, list[dict]] = {}
    for cfg in configs:
        groups.setdefault(fusion_key(_runnable(cfg)), []).append(cfg)
    arrays, solo = [], []
    for members in groups.values():
        first = members[0]
        if len(members) < 2 or (setting == "auto" and not pays(first)):
            solo.extend(members)
            continue
        cap = min(fit(first), AUTO_MAX if setting == "auto" else setting)
        parts = math.ceil(len(members) / cap)
        if setting == "auto":
            parts = max(parts, min(slots, len(members) // MIN_SPLIT))
        parts = max(1, parts)
        for k in range(parts):
            chunk = members[k::parts]  # interleaved: cheap (early-diverging) and costly trials mix
            (arrays.append(chunk) if len(chunk) > 1 else solo.extend(chunk))
    return arrays, solo


def _runnable(cfg: dict) -> dict:
    from sensitivity.study import runnable

    return runnable({k: v for k, v in cfg.items() if k != "_extra"})
