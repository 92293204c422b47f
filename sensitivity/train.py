"""One training run: ``run_trial(config) -> TrialResult(row, curve)``.

A trial trains one model with one optimizer configuration and one seed, and reports what
happened as one row of ``trials.parquet`` and one curve row per epoch of ``curves.parquet``
(the results contract in the README). The loop itself is `sensitivity.loop`, shared with fused
arrays; its solo strategy (`sensitivity.solo.Solo`: the plain torch model and the optimizer
`sensitivity.optim.create` builds, stepped through a closure, exactly as a researcher writes a
training loop) trains the trial, unless its checkpoint was written in an array, which it then
resumes as an array of one (`sensitivity.fused.array.strategy_groups` decides which).

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

from sensitivity import loop
from sensitivity.fused.array import strategy_groups
from sensitivity.loop import EVAL_BATCH, SYNC_EVERY, TrialResult, build_model  # noqa: F401 (importable from here)
from sensitivity.outcome import decay_label, running_loss  # noqa: F401 (importable from here)
from sensitivity.record import TrialRecord
from sensitivity.solo import Solo, curve_metrics, evaluate, sync_every  # noqa: F401 (importable from here)
from sensitivity.spec import CONFIG_KEYS, DEFAULTS, REQUIRED_KEYS, check_config, optimizer_hyperparameters  # noqa: F401

__all__ = ["CONFIG_KEYS", "REQUIRED_KEYS", "DEFAULTS", "TrialResult", "Solo", "validate_config", "run_trial",
           "decay_label", "running_loss", "build_model", "curve_metrics", "evaluate", "sync_every", "SYNC_EVERY",
           "EVAL_BATCH"]


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
    ((strategy, _),) = strategy_groups([state], fresh=Solo)  # an array's checkpoint resumes as an array of one
    return loop.train([record], strategy, checkpoint_dir=checkpoint_dir, states=[state])[0]
