"""``run_fused(configs)``: K trial configs trained as one fused array, each member as if alone.

The loop is `sensitivity.loop`, the same as a solo trial's; this module holds its stacked
strategy (:class:`Stacked`) and the entry point. How the array keeps each member's run identical
to ``run_trial`` of its config:

- **Weights.** Each member's solo model is built exactly as ``run_trial`` builds it (its own
  seed), then the K models are fused (``models.fuse``): the fused tensors hold the same numbers.
- **Data.** The loop gives each member its own data-order generator, permutation and augmentation
  draws, in the solo order; step s of the array gathers member k's batch s as its solo run does.
- **Forward/backward.** One pass of the fused model; the loss is the sum of the members' mean
  cross-entropies, so each member's gradient is that of its own loss (no operator mixes members).
- **Update.** Each member has its own α, hypergradient, lr-optimizer state and γ, and no member
  reads another's numbers (``optim.py``): optimizers with a member-axis form update all members
  in one foreach step; the others run their solo optimizer on views of each member's slices.
- **Isolation.** A member that diverges is recorded at the step where its own run would stop and
  is dropped from the array (every fused tensor is sliced) at the next read of the losses.

Checkpoints are one file per member (``<trial_id>.pt``), so an array cut differently next time
(a seed added, other free slots) resumes every member that has one: members are grouped by the
epoch (and the strategy) their checkpoints were written at, and each group trains as an array
of its own. Members that do not fit in the device's free memory are split into arrays run one
after the other; on a CUDA out-of-memory error an array is split in two halves.

Rows carry two extra columns: ``array_size`` (members trained together) and ``array_id``.
``wall_time_s`` is each member's share of the array's time (time while it ran / members running).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from sensitivity import loop
from sensitivity.loop import EVAL_BATCH, SYNC_EVERY, TrialResult
from sensitivity.record import SHARED_FIELDS, TrialRecord
from sensitivity.solo import Solo

from .models import fuse
from .optim import MemberOptimizers
from .plan import fit

__all__ = ["SHARED_KEYS", "STRATEGIES", "fusion_key", "run_fused", "array_id", "strategy_groups", "Stacked"]

SHARED_KEYS = SHARED_FIELDS  # what every member of an array shares; everything else may differ per member


def fusion_key(config: Mapping[str, Any] | TrialRecord) -> tuple:
    """A hashable key: configs with equal keys may train in one array (ValueError for a bad config)."""
    return TrialRecord.from_config(config).fusion_key()


def array_id(trial_ids: list[str]) -> str:
    return "a" + hashlib.sha1("\n".join(trial_ids).encode()).hexdigest()[:15]


def _example_losses(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy (K, N) of logits (K, N, C) against labels (K, N).

    Computed over the (K, C, N) view: torch's CPU log-softmax vectorises along the innermost
    dimension, which there holds the N examples instead of the few classes (about 10x faster).
    """
    return F.cross_entropy(out.transpose(1, 2), y, reduction="none")


def _predictions(out: torch.Tensor) -> torch.Tensor:
    """argmax over the classes of logits (K, N, C), the first maximum as argmax takes it. The fused
    model's logits are a transposed view, where ``max`` is ten times faster than ``argmax``."""
    return out.max(-1).indices


def _all_members(model, x: torch.Tensor) -> torch.Tensor:
    """The fused model on one batch of the training split, the same for every member."""
    return model(x.unsqueeze(0).expand(model.size, *x.shape))


class Stacked:
    """The loop's strategy for K members: one fused model and the members' optimizers."""

    kind = "stacked"
    every = SYNC_EVERY  # each read is a python pass over the members: every SYNC_EVERY steps on the CPU too

    def __init__(self, records: list[TrialRecord], models: list[torch.nn.Module], device: torch.device, data=None):
        self.model = fuse(models).to(device)
        self.data, self.batch_size = data, records[0].batch_size
        self.opts = MemberOptimizers(records[0].optimizer, [r.hyperparameters() for r in records], self.model)
        self.size = len(records)
        self.device = device
        self.last: torch.Tensor | None = None
        self._correct = torch.zeros(len(records), dtype=torch.long, device=device)

    def step(self, xb: torch.Tensor, yb: torch.Tensor, on_error) -> torch.Tensor:
        """Forward, backward and the members' step. The member-axis optimizer takes new gradient
        tensors each step (as a solo run's autograd allocates them), so none are zeroed. A failing
        step fails the array (its members then run alone, where the solo strategy tells an optimizer
        raising on an already diverged run from a real error); `on_error` is the solo strategy's."""
        model = self.model
        for p in model.parameters():
            p.grad = None
        self.last = None
        with torch.enable_grad():
            out = model(xb)
            losses = _example_losses(out, yb).mean(1)
            losses.sum().backward()
        losses = losses.detach()
        self.last = losses
        self._correct += (_predictions(out.detach()) == yb).sum(1)
        self.opts.step(losses)
        return losses

    def correct(self) -> torch.Tensor:
        out = self._correct
        self._correct = torch.zeros_like(out)
        return out

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> list[tuple[float, float]]:
        """Per member (mean cross-entropy, accuracy) over (x, y) in eval mode, at the optimizers' eval point."""
        with loop.evaluation_point(self.model, self.opts.optimizers(), self.data, self.batch_size, _all_members):
            return self._evaluate(x, y)

    @torch.no_grad()
    def _evaluate(self, x: torch.Tensor, y: torch.Tensor) -> list[tuple[float, float]]:
        """Per member (mean cross-entropy, accuracy) over (x, y) in eval mode; one host sync."""
        model, k = self.model, self.model.size
        model.eval()
        loss = torch.zeros(k, dtype=torch.float64, device=x.device)
        correct = torch.zeros(k, dtype=torch.float64, device=x.device)
        step = max(128, EVAL_BATCH // k)  # bounded activations; eval mode: no dependence on it
        for i in range(0, len(y), step):
            xb, yb = x[i:i + step], y[i:i + step]
            out = model(xb.unsqueeze(0).expand(k, *xb.shape))
            loss += _example_losses(out, yb.expand(k, -1)).sum(1).double()
            correct += (_predictions(out) == yb).sum(1)
        model.train()
        values = torch.stack([loss, correct]).tolist()
        return [(lo / len(y), c / len(y)) for lo, c in zip(*values)]

    def lr_metrics(self) -> list[dict[str, float]]:
        return self.opts.lr_metrics()

    def decay(self, j: int, factor: float) -> None:
        self.opts.decay(j, factor)

    def keep(self, index: list[int]) -> None:
        self.model.keep(index)
        self.opts.keep(index)
        self._correct = self._correct[index]
        self.size = len(index)

    def member_state(self, j: int) -> dict:
        return {"model": self.model.member_state(j), "optimizer": self.opts.member_state(j)}

    def load(self, states: list[dict]) -> None:
        for j, state in enumerate(states):
            self.model.load_member_state(j, state["model"])
        self.opts.load([s["optimizer"] for s in states])


def _check_shared(records: list[TrialRecord]) -> None:
    first = records[0].fusion_key()
    for i, record in enumerate(records[1:], start=1):
        for (key, a), (_, b) in zip(first, record.fusion_key()):
            if a != b:
                raise ValueError(f"run_fused: configs 0 and {i} differ in {key} ({a} vs {b}); "
                                 "members of one array must share it")


def _train_array(records: list[TrialRecord], states: list, checkpoint_dir) -> list[TrialResult]:
    """One array, split in two halves on a CUDA out-of-memory error."""
    aid = array_id([r.trial_id for r in records])
    try:
        return loop.train(records, Stacked, checkpoint_dir=checkpoint_dir, states=states,
                          extra_columns={"array_size": len(records), "array_id": aid})
    except torch.cuda.OutOfMemoryError:
        if len(records) == 1:
            raise
        torch.cuda.empty_cache()
        half = len(records) // 2
        return (_train_array(records[:half], states[:half], checkpoint_dir)
                + _train_array(records[half:], states[half:], checkpoint_dir))


STRATEGIES = {Solo.kind: Solo, Stacked.kind: Stacked}  # which strategy resumes a checkpoint of each kind


def strategy_groups(states: list[dict | None], fresh: type) -> list[tuple[type, list[int]]]:
    """Members that train together: (strategy, positions), by the kind and epoch of their checkpoints.

    The one place that decides a member's strategy, for ``run_trial`` (`fresh` = Solo) and
    ``run_fused`` (`fresh` = Stacked) alike: members without a checkpoint form one group of
    `fresh`; those whose checkpoint a stacked array wrote, one stacked group per epoch (so an array
    cut differently next time resumes every member); a member whose checkpoint a solo run wrote
    resumes alone.
    """
    groups: dict[tuple, list[int]] = {}
    for j, state in enumerate(states):
        kind = loop.checkpoint_kind(state)
        key = (fresh.kind, -1) if kind is None else (kind, state["epoch"] if kind == Stacked.kind else j)
        groups.setdefault(key, []).append(j)
    return [(STRATEGIES[kind], members) for (kind, _), members in sorted(groups.items(), key=lambda kv: kv[0][1])]


def run_fused(configs: list[Mapping[str, Any] | TrialRecord], *, checkpoint_dir: str | None = None) -> list[TrialResult]:
    """Train `configs` as one array; returns, in order, what ``run_trial(config)`` returns for each.

    The configs must share :data:`SHARED_KEYS` (ValueError naming the first that differs).
    With `checkpoint_dir`, each member's state is saved there once per epoch
    (``<checkpoint_dir>/<trial_id>.pt``), and a later call resumes every member that has one,
    whichever members it is given with. Members that do not fit in the free memory of this
    process's device (`plan.fit`) train as several arrays, one after the other.
    """
    if not configs:
        return []
    records = [TrialRecord.from_config(c) for c in configs]
    _check_shared(records)
    if len({r.trial_id for r in records}) != len(records):
        raise ValueError("run_fused: the same trial appears twice in one array")
    states = loop.load_checkpoints(records, checkpoint_dir)
    results: list[TrialResult | None] = [None] * len(records)
    for strategy, positions in strategy_groups(states, fresh=Stacked):
        if strategy is Solo:  # (a group of one)
            chunks = [positions]
        else:
            parts = math.ceil(len(positions) / fit(records[positions[0]], _device_kind(records[positions[0]])))
            chunks = [positions[k::parts] for k in range(parts)]  # interleaved, as the driver cuts arrays
        for chunk in chunks:
            members, member_states = [records[j] for j in chunk], [states[j] for j in chunk]
            done = (loop.train(members, Solo, checkpoint_dir=checkpoint_dir, states=member_states)
                    if strategy is Solo else _train_array(members, member_states, checkpoint_dir))
            for j, result in zip(chunk, done):
                results[j] = result
    return results


def _device_kind(record: TrialRecord) -> str:
    """The kind of device this process trains `record` on (where the array runs, not the driver's)."""
    return loop.resolve_device(record.device).type
