"""One training run: ``run_trial(config) -> TrialResult(row, curve)``.

A trial trains one model with one optimizer configuration and one seed, and reports what
happened as one row of ``trials.parquet`` and one curve row per epoch of ``curves.parquet``
(the results contract in the README). The loop itself is `sensitivity.loop`, shared with fused
arrays; this module holds its solo strategy (:class:`Solo`): the plain torch model and the
optimizer `sensitivity.optim.create` builds, stepped through a closure, exactly as a researcher
writes a training loop.

Semantics, in the order they matter to a robustness study (each is implemented once, in the loop):

- **Seeding.** ``seed`` expands (numpy SeedSequence) into three independent streams: the initial
  weights (model built on the CPU, then moved), the data order and augmentation (a
  ``torch.Generator`` on the device), and torch's global CPU and CUDA RNGs during training
  (nothing draws from them today). No stream depends on the optimizer, so every optimizer starts
  from the same weights and sees the same batches for a given seed, and run_trial leaves the
  caller's RNG state untouched.
- **Losses.** ``train_loss`` of an epoch is the mean cross-entropy over its examples (minibatch
  losses weighted by batch size, measured before each step, in train mode); ``test_loss``/
  ``test_acc`` are over the whole test split in eval mode, no grad. L0, the loss at
  initialization (Wortsman et al. 2023's lr sensitivity counts a diverged point as L0):
  ``init_train_loss`` is the first minibatch loss, measured before the first step;
  ``init_test_loss`` is the initial model's test-split loss.
- **Running training loss** (for ``iters_to_<t>``): the bias-corrected exponential moving average
  of the minibatch losses, ``ema_k = s·ema_{k−1} + (1−s)·loss_k``, ``running_k = ema_k / (1 − s^k)``
  with ``s = loss_smoothing`` (default 0.98; 0 uses the raw minibatch loss). ``iters_to_<t>`` is
  the first step k (1-based, counted over the whole run) with ``running_k < t``, else null.
- **Divergence.** Step k diverges when its minibatch loss is NaN/inf or above
  ``divergence_factor × loss_1``. The run stops with status ``diverged``; ``steps`` is k; the
  partial epoch is not a curve row; the minima are those of the completed epochs (+inf when none
  completed); the final losses are +inf and ``final_test_acc`` null; ``final_lr`` is the lr of
  the last completed epoch (α0 if none).
- **Host syncs.** Minibatch losses stay on the device and are read every step on the CPU (where
  reading is free) and every ``SYNC_EVERY`` steps on an accelerator, then replayed on the host in
  step order, so divergence, the running loss and the thresholds are decided exactly as with a
  per-step check.
- **Decay.** ``{"every_epochs": k, "factor": f}`` multiplies every param group's lr by f after each
  k-th epoch; ``{"milestones": [m, ...], "factor": f}`` after epoch m. For HD optimizers this
  scales the learned α; CAM-HD's param-group lr is likewise multiplied (see the README).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from sensitivity import loop
from sensitivity.loop import SYNC_EVERY, TrialResult, build_model  # noqa: F401 (importable from here)
from sensitivity.outcome import decay_label, running_loss  # noqa: F401 (importable from here)
from sensitivity.record import TrialRecord
from sensitivity.spec import CONFIG_KEYS, DEFAULTS, REQUIRED_KEYS, check_config, optimizer_hyperparameters  # noqa: F401

__all__ = ["CONFIG_KEYS", "REQUIRED_KEYS", "DEFAULTS", "TrialResult", "Solo", "validate_config", "run_trial",
           "decay_label", "running_loss", "build_model", "curve_metrics", "evaluate", "sync_every", "SYNC_EVERY",
           "EVAL_BATCH"]

EVAL_BATCH = 1024  # test-set batch (eval mode: the result does not depend on it)


def validate_config(config: Mapping[str, Any]) -> dict:
    """The config with defaults filled in and values normalised; ValueError naming the first bad key.

    The trial's record (`TrialRecord.from_config`, no torch), then what needs torch: the device,
    and the optimizer built once over a probe parameter, so that its own range checks name a bad
    hyperparameter now rather than in a worker hours later.
    """
    from sensitivity import optim

    record = TrialRecord.from_config(config)
    probe = torch.nn.Parameter(torch.zeros(2, 2))
    optim.create(record.optimizer, [("probe.weight", probe)], **record.hyperparameters())
    out = record.config()
    out["device"] = str(loop.resolve_device(record.device))
    return out


def curve_metrics(opt: torch.optim.Optimizer) -> dict[str, float]:
    """The optimizer's curve columns: its own ``curve_metrics()`` (CAM-HD, the lr-free rules), else the mean lr."""
    if hasattr(opt, "curve_metrics"):
        return {k: float(v) for k, v in opt.curve_metrics().items()}
    lrs = [float(g["lr"]) for g in opt.param_groups]
    return {"lr": sum(lrs) / len(lrs)}


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over (x, y) in eval mode; one host sync."""
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, len(y), EVAL_BATCH):
        out = model(x[i:i + EVAL_BATCH])
        yb = y[i:i + EVAL_BATCH]
        loss += F.cross_entropy(out, yb, reduction="sum").double()
        correct += (out.argmax(1) == yb).sum()
    model.train()
    total, right = torch.stack([loss, correct]).tolist()
    return total / len(y), right / len(y)


def _forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def sync_every(device: torch.device) -> int:
    """Steps between host reads of a solo trial's losses: every step on the CPU, where reading is free."""
    return 1 if device.type == "cpu" else SYNC_EVERY


class Solo:
    """The loop's strategy for one trial: its torch model and its optimizer, stepped through a closure."""

    kind = "solo"

    def __init__(self, records: list[TrialRecord], models: list[torch.nn.Module], device: torch.device, data=None):
        from sensitivity import optim

        (record,) = records
        self.data, self.batch_size = data, record.batch_size
        self.name = record.optimizer
        self.model = models[0].to(device)
        self.opt = optim.create(record.optimizer, self.model.named_parameters(), **record.hyperparameters())
        self.every = sync_every(device)
        self.size = 1
        self.last: torch.Tensor | None = None  # this step's (1,) loss, once the closure ran
        self._logits: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def step(self, xb: torch.Tensor, yb: torch.Tensor, on_error) -> torch.Tensor:
        x, y = xb[0], yb[0]
        model, opt = self.model, self.opt
        self.last = None
        record: list[torch.Tensor] = []

        def closure():
            with torch.enable_grad():
                opt.zero_grad(set_to_none=True)
                out = model(x)
                loss = F.cross_entropy(out, y)
                loss.backward()
            if not record:  # an optimizer may call it more than once; the first call is the step's loss
                record.append(out.detach())
                self.last = loss.detach().view(1)
            return loss

        try:
            opt.step(closure)
        except Exception:
            if on_error(0):
                raise loop.Diverged from None
            raise
        if not record:
            raise RuntimeError(f"optimizer {self.name!r} did not call the closure passed to step()")
        self._logits.append(record[0])
        self._targets.append(y)
        return self.last

    def correct(self) -> torch.Tensor:
        logits, targets = torch.cat(self._logits), torch.cat(self._targets)
        self._logits, self._targets = [], []
        return (logits.argmax(1) == targets).sum().view(1)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> list[tuple[float, float]]:
        with loop.evaluation_point(self.model, [self.opt], self.data, self.batch_size, _forward):
            return [evaluate(self.model, x, y)]

    def lr_metrics(self) -> list[dict[str, float]]:
        return [curve_metrics(self.opt)]

    def decay(self, j: int, factor: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] *= factor

    def keep(self, index: list[int]) -> None:
        raise AssertionError("a solo trial ends when its member does")

    def member_state(self, j: int) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict()}

    def load(self, states: list[dict]) -> None:
        (state,) = states
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])


def run_trial(config: Mapping[str, Any] | TrialRecord, *, checkpoint_dir: str | None = None) -> TrialResult:
    """Train one configuration with one seed; never raises for a run that diverges.

    `config` is a trial config in any spelling (or its `TrialRecord`). With `checkpoint_dir`, the
    trial's state is saved there after every epoch (``<checkpoint_dir>/<trial_id>.pt``, written
    atomically) and a later call with the same trial resumes from it, also from a checkpoint its
    fused array wrote; the file is removed once the trial finishes. Bad configs raise ValueError;
    any other failure propagates (the sweep records it).
    """
    record = TrialRecord.from_config(config)
    (state,) = loop.load_checkpoints([record], checkpoint_dir)
    if loop.checkpoint_kind(state) == "stacked":  # it trained in an array last time: resume it there
        from sensitivity.fused.array import Stacked

        return loop.train([record], Stacked, checkpoint_dir=checkpoint_dir, states=[state])[0]
    return loop.train([record], Solo, checkpoint_dir=checkpoint_dir, states=[state])[0]
