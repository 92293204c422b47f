"""The trial loop: K ≥ 1 trials of one task trained step by step, each exactly as if alone.

Everything a trial does is written here once, whether one member runs or many:

1. **Data** (shared by the members): loaded once onto the device (`sensitivity.data`), the
   train split optionally cut to ``train_fraction``.
2. **Seeding.** Each member's seed expands into three streams (`outcome.seeds`): its initial
   weights (the model is built on the CPU from them, then moved), its data order and
   augmentation (a ``torch.Generator`` on the device), and torch's global CPU and CUDA RNGs
   during training (seeded from the first member; nothing in training draws from them). The
   caller's RNG states are restored afterwards.
3. **Initial evaluation**: L0 on the test split (eval mode, no RNG drawn), before any step.
4. **Epochs.** Per step, each member gathers its own batch from its own permutation (and its
   own augmentation draws); the strategy runs forward, backward and the optimizer step; the
   minibatch losses stay on the device and are read every ``strategy.every`` steps, then
   replayed on the host in step order (`outcome.Tracker`): divergence, the running loss and
   the thresholds are decided exactly as with a per-step check. A member that diverges is
   recorded at its own step and dropped from the strategy; the others go on.
5. **After each epoch**: evaluation on the test split, the curve row, the lr decay, and each
   running member's checkpoint (one file per trial, so a trial resumes whatever array it
   lands in next time).
6. **Rows** (`outcome.row`): the record's identity columns and the outcome.

What differs between one member and many is only *how* a step is computed: the **strategy**.
`sensitivity.solo.Solo` trains a plain torch module with the optimizer `optim.create` builds,
exactly as a researcher would write it; `sensitivity.fused.array.Stacked` trains the K members as
one stacked model with the member-axis optimizer (`sensitivity.optim.members`). Why two
strategies rather than the solo trial as an array of one: a solo trial keeps torch's own
optimizers and layers, so its numbers are the reference every fused member is tested against
(float64, to 1e-8), and its speed stays that of a hand-written loop (``benchmarks/train_throughput.py``).
The loop itself, and so every step above, is shared, as torch keeps one functional core
behind its foreach and for-loop paths.

A strategy has: ``kind`` ("solo" or "stacked": which strategy can resume its checkpoints),
``every`` (steps between reads of the losses), ``size``, ``step(xb, yb, on_error)`` returning the
members' (K,) losses, ``correct()`` (the epoch's (K,) correct predictions, reset), ``evaluate(x, y)``,
``lr_metrics()``, ``decay(j, factor)``, ``keep(index)``, ``member_state(j)``, ``load(states)``.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple

import torch

from sensitivity import checkpoint as ckpt
from sensitivity import data as datamod
from sensitivity.outcome import Tracker, decays_after, row, seeds
from sensitivity.record import TrialRecord

__all__ = ["TrialResult", "Member", "SYNC_EVERY", "EVAL_BATCH", "resolve_device", "build_model", "seeded", "train",
           "load_checkpoints", "checkpoint_kind"]

SYNC_EVERY = 32  # steps between reads of the minibatch losses where reading costs a device sync
EVAL_BATCH = 1024  # test-split examples per forward pass in eval mode (the result does not depend on it)
CHECKPOINT_VERSION = 2
BN_BATCHES = 50  # training batches that re-estimate batch-norm statistics at an optimizer's eval point


class TrialResult(NamedTuple):
    row: dict
    curve: list[dict]


class Diverged(Exception):
    """A member's replayed losses diverged while its optimizer raised (the loop records it as diverged)."""


def resolve_device(value: Any) -> torch.device:
    """The torch device of a record's ``device`` ('auto': cuda where present); ValueError naming it."""
    if not isinstance(value, str):
        raise ValueError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {value!r}")
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise ValueError(f"device: {value!r} is not a torch device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {value!r} requested but torch sees no CUDA device; use 'auto' or 'cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device: {value!r} does not exist; torch sees {torch.cuda.device_count()} CUDA device(s)")
    return device


def build_model(record: TrialRecord | Mapping[str, Any], input_shape: tuple[int, ...],
                num_classes: int) -> torch.nn.Module:
    """The trial's initial model, on the CPU: a function of (model, model_args, data shape, seed) only."""
    from sensitivity import models as modelmod

    record = TrialRecord.from_config(record)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seeds(record.seed)[0])  # CPU only: the caller's CUDA RNG stays
        return modelmod.build(record.model, input_shape, num_classes, dict(record.model_args))


@dataclass
class Member:
    """One trial of the loop: its record, data generator, tracker, curve and outcome so far."""

    record: TrialRecord
    tracker: Tracker
    gen: torch.Generator | None = None
    curve: list[dict] = field(default_factory=list)
    status: str | None = None  # None while training
    wall: float = 0.0  # seconds of training and evaluation (its share while others ran beside it)
    initial_lr: float = math.nan
    init_test_loss: float | None = None
    epoch: int = 0  # epochs completed


class evaluation_point:
    """Evaluate where the optimizer says the model is: its ``eval()`` before, its ``train()`` after.

    Schedule-Free keeps two sequences and trains at y but is evaluated at x: its ``.eval()`` swaps
    the parameters to x and ``.train()`` back, as its authors' README requires. A batch-norm
    model's running statistics were gathered at y, so at x they are estimated again from the first
    `BN_BATCHES` training batches in the split's own order, in train mode without grad (their
    README's recipe; the same batches for every member and every run, no RNG drawn). Optimizers
    without ``eval()`` are evaluated as they are.
    """

    def __init__(self, model, optimizers: list, data, batch_size: int, forward):
        self.model, self.optimizers, self.data, self.batch_size = model, optimizers, data, batch_size
        self.forward = forward  # forward(model, x) for the training split's batch x
        self.swaps = [o for o in optimizers if callable(getattr(o, "eval", None))]

    def __enter__(self):
        for opt in self.swaps:
            opt.eval()
        # running statistics: torch's batch norms and the fused one (`fused.layers`, not a _BatchNorm)
        if self.swaps and any(isinstance(getattr(m, "running_mean", None), torch.Tensor) for m in self.model.modules()):
            x = self.data.train_x
            self.model.train()
            with torch.no_grad():
                for start in range(0, min(len(x), BN_BATCHES * self.batch_size), self.batch_size):
                    self.forward(self.model, x[start:start + self.batch_size])
        return self

    def __exit__(self, *exc):
        for opt in self.swaps:
            opt.train()
        self.model.train()
        return False


@contextmanager
def seeded(seed: int, device: torch.device):
    """torch's global RNGs seeded with `seed` for training: the CPU's and, on a CUDA device, that
    device's (the only one the trial uses); the caller's states are restored afterwards."""
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        for each in cuda:
            with torch.cuda.device(each):
                torch.cuda.manual_seed(seed)
        yield


def checkpoint_path(checkpoint_dir, tid: str):
    return ckpt.path_for(checkpoint_dir, tid)


def load_checkpoints(records: list[TrialRecord], checkpoint_dir) -> list[dict | None]:
    """Each record's checkpoint in `checkpoint_dir` (``<trial_id>.pt``), or None."""
    if checkpoint_dir is None:
        return [None] * len(records)
    out = []
    for record in records:
        path = checkpoint_path(checkpoint_dir, record.trial_id)
        state = ckpt.load(path)
        if state is None:  # the layout before one file per trial: <trial_id>/<trial_id>.pt
            state = ckpt.load(checkpoint_path(path.parent / record.trial_id, record.trial_id))
        if state is not None and state.get("trial_id") != record.trial_id:
            raise ValueError(f"checkpoint {path} belongs to trial {state.get('trial_id')}, not {record.trial_id}; "
                             f"remove it to start over")
        out.append(state)
    return out


def checkpoint_kind(state: dict | None) -> str | None:
    if state is None:
        return None
    return state.get("kind", "solo")  # version 1 files are solo trials'


def _member_losses(values: list[torch.Tensor], j: int) -> list[float]:
    return torch.stack(values)[:, j].tolist() if values else []


def train(records: list[TrialRecord], strategy_type, *, checkpoint_dir=None,
          states: list[dict | None] | None = None, extra_columns: dict | None = None) -> list[TrialResult]:
    """Train `records` (one task: the shared fields of a fused array) with one strategy; their results in order.

    `states`: each member's checkpoint (all None, or all of the strategy's kind at one epoch).
    With `checkpoint_dir`, every running member's state is saved there after each epoch but the
    last (``<trial_id>.pt``) and removed once it finishes.
    """
    first = records[0]
    device = resolve_device(first.device)
    states = states if states is not None else [None] * len(records)
    data = datamod.load(first.dataset, data_dir=first.data_dir, dataset_args=dict(first.dataset_args),
                        device=device, download=first.download)
    data = datamod.train_subset(data, first.train_fraction)
    members = [Member(r, Tracker.of(r)) for r in records]
    models = [build_model(r, data.input_shape, data.num_classes) for r in records]
    strategy = strategy_type(records, models, device, data)
    resumed = states[0] is not None
    with seeded(seeds(first.seed)[2], device):
        for m in members:
            m.gen = torch.Generator(device=device)
            m.gen.manual_seed(seeds(m.record.seed)[1])
        if resumed:
            _resume(members, strategy, states, device)
        else:  # L0: each initial model's test loss (eval mode, no RNG drawn), before any step
            for m, lr, (loss, _) in zip(members, strategy.lr_metrics(), strategy.evaluate(data.test_x, data.test_y)):
                m.initial_lr, m.init_test_loss = lr["lr"], loss
        active = [m for m in members if m.status is None]
        loop = _Epochs(strategy, data, first, device)
        for epoch in range(active[0].epoch + 1 if active else first.epochs + 1, first.epochs + 1):
            active = loop.epoch(active, epoch)
            if not active:
                break
            if checkpoint_dir is not None and epoch < first.epochs:
                _save(active, strategy, checkpoint_dir, device)
        for m in active:
            m.status = "ok"
    results = []
    for m in members:
        out = row(m.record, status=m.status, curve=m.curve, tracker=m.tracker, initial_lr=m.initial_lr,
                  wall_time_s=m.wall, init_test_loss=m.init_test_loss, device=str(device))
        out.update(extra_columns or {})
        results.append(TrialResult(out, m.curve))
        if checkpoint_dir is not None:
            ckpt.remove(checkpoint_path(checkpoint_dir, m.record.trial_id))
    return results


def _resume(members: list[Member], strategy, states: list[dict], device: torch.device) -> None:
    for m, state in zip(members, states):
        if state["device_type"] != device.type:
            raise ValueError(f"checkpoint of trial {m.record.trial_id} was written on {state['device_type']}, "
                             f"this run is on {device.type}; remove it to start over")
        m.curve, m.epoch, m.wall = list(state["curve"]), state["epoch"], state["wall_time_s"]
        m.init_test_loss = state.get("init_test_loss")
        m.tracker.load_state_dict(state["tracker"])
        m.gen.set_state(state["data_rng"])
    initial = strategy.lr_metrics()  # the optimizer as built: α0 (version 1 files did not save it)
    for m, state, lr in zip(members, states, initial):
        m.initial_lr = state.get("initial_lr", lr["lr"])
    strategy.load([{"model": s["model"], "optimizer": s["optimizer"]} for s in states])
    torch.set_rng_state(states[0]["torch_rng"])
    if device.type == "cuda" and states[0].get("cuda_rng") is not None:
        torch.cuda.set_rng_state(states[0]["cuda_rng"], device)


def _save(active: list[Member], strategy, checkpoint_dir, device: torch.device) -> None:
    torch_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    for j, m in enumerate(active):
        ckpt.save(checkpoint_path(checkpoint_dir, m.record.trial_id), {
            "version": CHECKPOINT_VERSION, "kind": strategy.kind, "trial_id": m.record.trial_id,
            "device_type": device.type, "epoch": m.epoch, **strategy.member_state(j),
            "data_rng": m.gen.get_state(), "torch_rng": torch_rng, "cuda_rng": cuda_rng,
            "tracker": m.tracker.state_dict(), "curve": m.curve, "init_test_loss": m.init_test_loss,
            "initial_lr": m.initial_lr, "wall_time_s": m.wall,
        })


class _Epochs:
    """The epoch loop over the running members."""

    def __init__(self, strategy, data, record: TrialRecord, device: torch.device):
        self.strategy, self.data, self.record, self.device = strategy, data, record, device
        self.clock = time.perf_counter()

    def _share_time(self, active: list[Member]) -> None:
        """Add the time since the last call to the running members, in equal shares."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        for m in active:
            m.wall += (now - self.clock) / len(active)
        self.clock = now

    def epoch(self, active: list[Member], epoch: int) -> list[Member]:
        """Train one epoch of every running member; returns the members still running."""
        strategy, data, device = self.strategy, self.data, self.device
        x, y = data.train_x, data.train_y
        n, bs = len(y), self.record.batch_size
        self.clock = time.perf_counter()
        perms = torch.stack([torch.randperm(n, generator=m.gen, device=device) for m in active])
        pending: list[torch.Tensor] = []
        sizes: list[int] = []
        for start in range(0, n, bs):
            idx = perms[:, start:start + bs]
            flat = idx.reshape(-1)  # index_select over the flat indices: several times faster than x[idx] on CPU
            xb = x.index_select(0, flat).view(*idx.shape, *x.shape[1:])
            yb = y.index_select(0, flat).view(idx.shape)
            if self.record.augment:
                xb = torch.stack([datamod.augment(xb[j], m.gen, data.pad_value) for j, m in enumerate(active)])

            def on_error(j: int) -> bool:
                # an optimizer may raise on the non-finite values of an already diverged run that the
                # chunked check has not read yet: replay what is pending, this step's loss included
                values = pending + ([strategy.last] if strategy.last is not None else [])
                return active[j].tracker.replay(_member_losses(values, j), sizes + [idx.shape[1]])

            try:
                losses = strategy.step(xb, yb, on_error)
            except Diverged:
                self._share_time(active)
                active[0].status = "diverged"  # a solo strategy's one member (see Solo.step)
                return []
            pending.append(losses)
            sizes.append(idx.shape[1])
            if len(pending) >= strategy.every or start + bs >= n:
                values = torch.stack(pending).T.tolist()  # (members, steps)
                gone = {j for j, m in enumerate(active) if m.tracker.replay(values[j], sizes)}
                pending.clear()
                sizes.clear()
                if gone:
                    self._share_time(active)
                    for j in gone:
                        active[j].status = "diverged"
                    keep = [j for j in range(len(active)) if j not in gone]
                    if not keep:
                        return []
                    strategy.keep(keep)
                    perms = perms[keep]
                    active = [active[j] for j in keep]
        accs = (strategy.correct().double() / n).tolist()
        evals = strategy.evaluate(data.test_x, data.test_y)
        for j, (m, acc, (test_loss, test_acc), lr) in enumerate(zip(active, accs, evals, strategy.lr_metrics())):
            m.curve.append({
                "trial_id": m.record.trial_id, "epoch": epoch, "step": m.tracker.steps,
                "train_loss": m.tracker.end_epoch(), "train_acc": acc,
                "test_loss": test_loss if not math.isnan(test_loss) else math.inf, "test_acc": test_acc, **lr,
            })
            m.epoch = epoch
            if decays_after(m.record.decay, epoch):
                strategy.decay(j, m.record.decay["factor"])
        self._share_time(active)
        return active
