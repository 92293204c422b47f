"""What a trial reports, for one member or many: its seeds, the loss tracker, and its row.

The trial loop (`sensitivity.loop`) keeps one :class:`Tracker` per member and ends each member
with :func:`row`; the sweep writes :func:`error_row` for a trial that raised. Every row of a
trial starts with its record's identity columns (`TrialRecord.columns`), so an ok, a diverged
and an errored row of one trial are spelt alike. Torch-free.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from sensitivity.record import TrialRecord, decay_label  # noqa: F401 (decay_label: importable from here)

__all__ = ["LOSS_KEYS", "Tracker", "seeds", "decays_after", "running_loss", "loss_or_inf", "threshold_column",
           "row", "error_row"]

LOSS_KEYS = ("min_train_loss", "min_test_loss", "final_train_loss", "final_test_loss")


def seeds(seed: int) -> tuple[int, int, int]:
    """Independent (initial weights, data order and augmentation, anything else) seeds from one trial seed."""
    init, order, rest = np.random.SeedSequence(seed).generate_state(3)
    return int(init), int(order), int(rest)


def decays_after(decay: Mapping[str, Any] | None, epoch: int) -> bool:
    """Whether the lr is multiplied by ``decay["factor"]`` after `epoch` (1-based)."""
    if decay is None:
        return False
    if "every_epochs" in decay:
        return epoch % decay["every_epochs"] == 0
    return epoch in decay["milestones"]


def running_loss(losses, smoothing: float) -> list[float]:
    """The running training loss after each step: the bias-corrected EMA of `losses`."""
    out, ema = [], 0.0
    for k, loss in enumerate(losses, start=1):
        ema = smoothing * ema + (1.0 - smoothing) * loss
        out.append(ema / (1.0 - smoothing ** k))
    return out


def loss_or_inf(value: float | None) -> float:
    """A loss column value: never NaN (the contract), +inf where none was measured or it was not finite."""
    return float(value) if value is not None and math.isfinite(value) else math.inf


def threshold_column(threshold: float) -> str:
    """The column of a threshold: ``iters_to_0.3`` (Python's ``:g``; the study reader rejects two that print alike)."""
    return f"iters_to_{threshold:g}"


class Tracker:
    """Host-side replay of one member's minibatch losses, step by step: divergence, running loss, thresholds."""

    def __init__(self, thresholds, factor: float, smoothing: float):
        self.smoothing, self.factor = smoothing, factor
        self.limit = math.inf  # divergence_factor x the first loss, once seen
        self.steps = 0
        self.ema = 0.0
        self.reached: dict[float, int | None] = {t: None for t in thresholds}
        self.epoch_sum, self.epoch_count = 0.0, 0
        self.diverged_at: int | None = None
        self.first_loss: float | None = None  # L0 on the training side: the loss before any step

    @classmethod
    def of(cls, record: TrialRecord) -> "Tracker":
        return cls(record.thresholds, record.divergence_factor, record.loss_smoothing)

    def replay(self, losses: list[float], sizes: list[int]) -> bool:
        """Consume one chunk of minibatch losses; True (and stop) at the first divergent step."""
        s = self.smoothing
        for loss, n in zip(losses, sizes):
            self.steps += 1
            if self.steps == 1:
                self.first_loss = loss
            if self.steps == 1 and math.isfinite(loss) and loss > 0:
                self.limit = self.factor * loss
            if not math.isfinite(loss) or loss > self.limit:
                self.diverged_at = self.steps
                return True
            self.ema = s * self.ema + (1.0 - s) * loss
            running = self.ema / (1.0 - s ** self.steps)
            for t, at in self.reached.items():
                if at is None and running < t:
                    self.reached[t] = self.steps
            self.epoch_sum += loss * n
            self.epoch_count += n
        return False

    def end_epoch(self) -> float:
        """The epoch's mean training loss; resets the per-epoch sums."""
        mean = self.epoch_sum / max(self.epoch_count, 1)
        self.epoch_sum, self.epoch_count = 0.0, 0
        return mean

    def state_dict(self) -> dict:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(self).items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, dict(v) if isinstance(v, dict) else v)


def row(record: TrialRecord, *, status: str, curve: list[dict], tracker: Tracker, initial_lr: float,
        wall_time_s: float, init_test_loss: float | None, device: str) -> dict:
    """The trials.parquet row of a trial that ran: its identity columns, then its outcome."""
    last = curve[-1] if curve else None
    ok = status == "ok"
    out = record.columns()
    out.update({
        "status": status,
        "min_train_loss": min((c["train_loss"] for c in curve), default=math.inf),
        "min_test_loss": min((c["test_loss"] for c in curve), default=math.inf),
        "final_train_loss": last["train_loss"] if ok else math.inf,
        "final_test_loss": last["test_loss"] if ok else math.inf,
        "best_test_acc": max((c["test_acc"] for c in curve), default=None),
        "final_test_acc": last["test_acc"] if ok else None,
        "final_lr": last["lr"] if last else initial_lr,
        "epochs_completed": len(curve),
        "steps": tracker.steps,
    })
    for t, at in tracker.reached.items():
        out[threshold_column(t)] = at
    out.update({"wall_time_s": wall_time_s, "error": None, "device": device,
                "init_train_loss": loss_or_inf(tracker.first_loss), "init_test_loss": loss_or_inf(init_test_loss)})
    return out


def error_row(record: TrialRecord, message: str, wall_time_s: float) -> dict:
    """The row of a trial that raised (or whose worker died): its identity columns, status `error` and the message.

    Its losses are +inf (never NaN), its thresholds and L0 null: analysis reads an error as no outcome.
    """
    out = record.columns()
    out.update({"status": "error", **{k: math.inf for k in LOSS_KEYS}, "best_test_acc": None, "final_test_acc": None,
                "final_lr": None, "epochs_completed": 0, "steps": 0})
    for t in record.thresholds:
        out[threshold_column(t)] = None
    out.update({"wall_time_s": wall_time_s, "error": " ".join(str(message).split())[:2000], "device": record.device,
                "init_train_loss": None, "init_test_loss": None})
    return out
