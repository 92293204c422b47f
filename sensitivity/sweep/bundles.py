"""Cutting a study's missing trials into bundles: several short trials per Ray task."""

from __future__ import annotations

import math
from typing import Any

from sensitivity.record import TrialRecord

BUNDLES_PER_SLOT = 4  # enough tasks per parallel slot to even out the tail
MAX_BUNDLE = 32
SHORT_WORK = 5e5  # sample-epochs (x model factor) below which a trial counts as short
TRAIN_SIZES = {"digits": 1437, "mnist": 60000, "cifar10": 50000, "svhn": 73257}
MODEL_FACTOR = {"logreg": 1, "mlp": 1, "lenet5": 5, "vgg16": 300, "resnet18": 300, "resnet34": 600}


def _work(record: TrialRecord) -> float:
    size = record.dataset_args.get("train_size") or TRAIN_SIZES.get(record.dataset, 1000)
    return size * record.train_fraction * record.epochs * MODEL_FACTOR.get(record.model, 10)


def is_short(record: TrialRecord) -> bool:
    """A trial short enough that Ray's per-task overhead (about 1 s) matters."""
    return _work(record) <= SHORT_WORK


def bundle_size(setting: Any, configs: list[TrialRecord], slots: int) -> int:
    """Trials per Ray task: `setting` when it is an int; `auto` bundles only short trials."""
    if isinstance(setting, int):
        return setting
    if not configs or not all(is_short(c) for c in configs):
        return 1  # long trials: one per task keeps the cluster busy and checkpoints simple
    return max(1, min(MAX_BUNDLE, math.ceil(len(configs) / (BUNDLES_PER_SLOT * slots))))


def make_bundles(configs: list[TrialRecord], size: int) -> list[list[TrialRecord]]:
    """Interleaved bundles, so cheap (early-diverging) and costly trials mix."""
    n = max(1, math.ceil(len(configs) / size))
    return [b for b in (configs[k::n] for k in range(n)) if b]
