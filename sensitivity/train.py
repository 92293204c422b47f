"""One training run: ``run_trial(config) -> TrialResult(row, curve)``.

A trial trains one model with one optimizer configuration and one seed, and reports
what happened as one row of ``trials.parquet`` and one curve row per epoch of
``curves.parquet`` (see the results contract in the design notes and the README).

Semantics, in the order they matter to a robustness study:

- **Seeding.** ``seed`` expands (numpy SeedSequence) into three independent streams:
  the initial weights (global torch RNG, model built on the CPU, then moved), the
  data order and augmentation (a ``torch.Generator`` on the device), and the global
  RNG during training (nothing draws from it today). No stream depends on the
  optimizer, so every optimizer starts from the same weights and sees the same
  batches for a given seed, and run_trial leaves the caller's RNG state untouched.
- **Losses.** ``train_loss`` of an epoch is the mean cross-entropy over its examples
  (minibatch losses weighted by batch size, measured before each step, in train mode);
  ``test_loss``/``test_acc`` are over the whole test split in eval mode, no grad.
  L0, the loss at initialization (Wortsman et al. 2023's lr sensitivity counts a diverged
  point as L0): ``init_train_loss`` is the first minibatch loss, measured before the first
  step; ``init_test_loss`` is the initial model's test-split loss.
- **Running training loss** (for ``iters_to_<t>``): the bias-corrected exponential
  moving average of the minibatch losses, ``ema_k = s·ema_{k−1} + (1−s)·loss_k``,
  ``running_k = ema_k / (1 − s^k)`` with ``s = loss_smoothing`` (default 0.98, a horizon
  of about 50 steps; 0 uses the raw minibatch loss). ``iters_to_<t>`` is the first step
  k (1-based, counted over the whole run) with ``running_k < t``, else null.
- **Divergence.** Step k diverges when its minibatch loss is NaN/inf or above
  ``divergence_factor × loss_1`` (default 10: for cross-entropy from a fresh network,
  about 23 nats on 10 classes, far above anything a training run recovers from).
  The run stops with status ``diverged``; ``steps`` is k; the partial epoch is not a
  curve row; the minima are those of the completed epochs (+inf when none completed);
  the final losses are +inf and ``final_test_acc`` null, since the run ended diverged;
  ``final_lr`` is the lr of the last completed epoch (α0 if none).
- **Host syncs.** The loop never waits on the device per step, except where the
  optimizer itself does. Minibatch losses stay on the device and are read in chunks:
  every step on the CPU (where reading is free) and every ``SYNC_EVERY`` steps on an
  accelerator. The chunk is then replayed on the host in step order, so divergence,
  the running loss and the thresholds are decided exactly as with a per-step check;
  on an accelerator a diverged run may just compute up to SYNC_EVERY−1 extra steps
  whose results are discarded.
- **Decay.** ``{"every_epochs": k, "factor": f}`` multiplies every param group's lr by
  f after each k-th epoch; ``{"milestones": [m, ...], "factor": f}`` after epoch m.
  For HD optimizers this scales the learned α (the rule then continues from there);
  CAM-HD's param-group lr is likewise multiplied (see the README).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Mapping, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from . import data as datamod
from . import models as modelmod
from .spec import CONFIG_KEYS, DEFAULTS, REQUIRED_KEYS, check_config, optimizer_hyperparameters

__all__ = ["CONFIG_KEYS", "REQUIRED_KEYS", "DEFAULTS", "TrialResult", "validate_config", "run_trial",
           "decay_label", "running_loss", "build_model", "SYNC_EVERY", "EVAL_BATCH"]

SYNC_EVERY = 32  # accelerator steps between reads of the minibatch losses
EVAL_BATCH = 1024  # test-set batch (eval mode: the result does not depend on it)


class TrialResult(NamedTuple):
    row: dict
    curve: list[dict]


# ---------------------------------------------------------------------------
# validation


def _resolve_device(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {value!r}")
    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise ValueError(f"device: {value!r} is not a torch device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {value!r} requested but torch sees no CUDA device; use 'auto' or 'cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device: {value!r} does not exist; torch sees {torch.cuda.device_count()} CUDA device(s)")
    return str(device)


_optimizer_hyperparameters = optimizer_hyperparameters  # its name before it moved to spec.py


def validate_config(config: Mapping[str, Any]) -> dict:
    """The config with defaults filled in and values normalised; ValueError naming the first bad key.

    `sensitivity.spec.check_config` (no torch), then what needs torch: the device, and the
    optimizer built once over a probe parameter, so that its own range checks name a bad
    hyperparameter now rather than in a worker hours later.
    """
    from sensitivity import optim

    cfg = check_config(config)
    probe = torch.nn.Parameter(torch.zeros(2, 2))
    optim.create(cfg["optimizer"], [("probe.weight", probe)], **optimizer_hyperparameters(cfg))
    cfg["device"] = _resolve_device(cfg["device"])
    return cfg


# ---------------------------------------------------------------------------
# pieces


def decay_label(decay: Mapping[str, Any] | None) -> str | None:
    """The `decay` column: None, 'step:25:0.5' or 'milestones:100+150:0.1'."""
    if decay is None:
        return None
    if "every_epochs" in decay:
        return f"step:{decay['every_epochs']}:{decay['factor']:g}"
    return f"milestones:{'+'.join(str(m) for m in decay['milestones'])}:{decay['factor']:g}"


def _decays_after(decay: Mapping[str, Any] | None, epoch: int) -> bool:
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


class _Tracker:
    """Host-side replay of the minibatch losses, step by step: divergence, running loss, thresholds."""

    def __init__(self, thresholds: list[float], factor: float, smoothing: float):
        self.smoothing, self.factor = smoothing, factor
        self.limit = math.inf  # divergence_factor x the first loss, once seen
        self.steps = 0
        self.ema = 0.0
        self.reached: dict[float, int | None] = {t: None for t in thresholds}
        self.epoch_sum, self.epoch_count = 0.0, 0
        self.diverged_at: int | None = None
        self.first_loss: float | None = None  # L0 on the training side: the loss before any step

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


def _seeds(seed: int) -> tuple[int, int, int]:
    """Independent (init, data order, training) seeds from one trial seed."""
    init, order, rest = np.random.SeedSequence(seed).generate_state(3)
    return int(init), int(order), int(rest)


def build_model(cfg: Mapping[str, Any], input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
    """The trial's initial model, on the CPU: a function of (model, model_args, data shape, seed) only."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(_seeds(cfg["seed"])[0])  # CPU only: the caller's CUDA RNG stays
        return modelmod.build(cfg["model"], input_shape, num_classes, cfg["model_args"])


def _lr_metrics(opt: torch.optim.Optimizer) -> dict[str, float]:
    if hasattr(opt, "curve_metrics"):
        return {k: float(v) for k, v in opt.curve_metrics().items()}
    lrs = [float(g["lr"]) for g in opt.param_groups]
    return {"lr": sum(lrs) / len(lrs)}


@torch.no_grad()
def _evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
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


def _hp_value(value: Any) -> Any:
    """Row value of a hyperparameter: sequences and mappings as JSON text (hashable for groupby)."""
    if isinstance(value, (list, tuple, Mapping)):
        return json.dumps(value, sort_keys=True)
    return value


def _trial_id(config: Mapping[str, Any]) -> str:
    from sensitivity.results import trial_id  # the one stable hash, owned by the results module

    return trial_id(config)


# ---------------------------------------------------------------------------
# the run


class _Diverged(Exception):
    pass


def _sync_every(device: torch.device) -> int:
    """Steps between host reads of the minibatch losses: reading is free on the CPU."""
    return 1 if device.type == "cpu" else SYNC_EVERY


def _train_epoch(model, opt, data, cfg, gen, tracker, device) -> tuple[float, float]:
    """One epoch; returns (mean train loss, train accuracy) or raises _Diverged."""
    x, y = data.train_x, data.train_y
    n, bs = len(y), cfg["batch_size"]
    perm = torch.randperm(n, generator=gen, device=device)
    batch: list[torch.Tensor] = []  # (xb, yb) of the current step, read by the closure
    record: list[torch.Tensor] = []  # (loss, logits) of the closure's first call in this step

    def closure():
        with torch.enable_grad():
            opt.zero_grad(set_to_none=True)
            out = model(batch[0])
            loss = F.cross_entropy(out, batch[1])
            loss.backward()
        if not record:  # an optimizer may call it more than once; the first call is the step's loss
            record.extend((loss.detach(), out.detach()))
        return loss

    every = _sync_every(device)
    losses, logits, sizes = [], [], []
    done = 0  # losses already replayed on the host
    model.train()
    try:
        for start in range(0, n, bs):
            idx = perm[start:start + bs]
            xb, yb = x[idx], y[idx]
            if cfg["augment"]:
                xb = datamod.augment(xb, gen, data.pad_value)
            batch[:] = (xb, yb)
            record.clear()
            opt.step(closure)
            if not record:
                raise RuntimeError(f"optimizer {cfg['optimizer']!r} did not call the closure passed to step()")
            losses.append(record[0])
            logits.append(record[1])
            sizes.append(len(yb))
            if len(losses) - done >= every or start + bs >= n:
                chunk = losses[done:]
                values = [chunk[0].item()] if len(chunk) == 1 else torch.stack(chunk).tolist()
                if tracker.replay(values, sizes[done:]):
                    raise _Diverged
                done = len(losses)
    except _Diverged:
        raise
    except Exception:
        # An optimizer may raise on the non-finite values of an already diverged run that the
        # chunked check has not read yet: replay what is pending, and re-raise only if it is clean.
        values, counts = losses[done:], sizes[done:]
        if record and (not losses or record[0] is not losses[-1]):  # the failing step's own loss
            values, counts = values + [record[0]], counts + [len(batch[1])]
        if values and tracker.replay(torch.stack(values).tolist(), counts):
            raise _Diverged from None
        raise
    correct = (torch.cat(logits).argmax(1) == y[perm]).sum().item()
    return tracker.end_epoch(), correct / n


def run_trial(config: Mapping[str, Any], *, checkpoint_dir: str | None = None) -> TrialResult:
    """Train one configuration with one seed; never raises for a run that diverges.

    With `checkpoint_dir`, the trial's state is saved there after every epoch
    (``<checkpoint_dir>/<trial_id>.pt``, written atomically) and a later call with the
    same config resumes from it; the file is removed once the trial finishes.
    Bad configs raise ValueError; any other failure propagates (the sweep records it).
    """
    from sensitivity import optim

    cfg = validate_config(config)
    tid = _trial_id(config)
    device = torch.device(cfg["device"])
    data = datamod.load(cfg["dataset"], data_dir=cfg["data_dir"], dataset_args=cfg["dataset_args"],
                        device=device, download=cfg["download"])
    data = datamod.train_subset(data, cfg["train_fraction"])

    model = build_model(cfg, data.input_shape, data.num_classes).to(device)
    opt = optim.create(cfg["optimizer"], model.named_parameters(), **optimizer_hyperparameters(cfg))
    _, order_seed, rest_seed = _seeds(cfg["seed"])
    gen = torch.Generator(device=device)
    gen.manual_seed(order_seed)
    tracker = _Tracker(cfg["thresholds"], cfg["divergence_factor"], cfg["loss_smoothing"])
    curve: list[dict] = []
    first_epoch, elapsed = 1, 0.0
    initial_lr = _lr_metrics(opt)["lr"]

    path = ckpt.path_for(checkpoint_dir, tid) if checkpoint_dir is not None else None
    state = ckpt.load(path) if path is not None else None
    cuda = [device] if device.type == "cuda" else []
    status = "ok"
    init_test_loss = None
    with torch.random.fork_rng(devices=cuda):  # restores the caller's RNG states afterwards
        torch.random.default_generator.manual_seed(rest_seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(rest_seed)  # the training device only
        if state is not None:
            if state["trial_id"] != tid or state["device_type"] != device.type:
                raise ValueError(f"checkpoint {path} belongs to trial {state['trial_id']} on {state['device_type']},"
                                 f" not {tid} on {device.type}; remove it to start over")
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            gen.set_state(state["data_rng"])
            torch.set_rng_state(state["torch_rng"])
            if cuda and state["cuda_rng"] is not None:
                torch.cuda.set_rng_state(state["cuda_rng"], device)
            tracker.load_state_dict(state["tracker"])
            curve, first_epoch, elapsed = list(state["curve"]), state["epoch"] + 1, state["wall_time_s"]
            init_test_loss = state.get("init_test_loss")
        else:  # L0: the initial model's test loss (eval mode, no RNG drawn), before any step
            init_test_loss = _evaluate(model, data.test_x, data.test_y)[0]

        started = time.perf_counter()
        for epoch in range(first_epoch, cfg["epochs"] + 1):
            try:
                train_loss, train_acc = _train_epoch(model, opt, data, cfg, gen, tracker, device)
            except _Diverged:
                status = "diverged"
                break
            test_loss, test_acc = _evaluate(model, data.test_x, data.test_y)
            curve.append({
                "trial_id": tid, "epoch": epoch, "step": tracker.steps,
                "train_loss": train_loss, "test_loss": test_loss if not math.isnan(test_loss) else math.inf,
                "train_acc": train_acc, "test_acc": test_acc, **_lr_metrics(opt),
            })
            if _decays_after(cfg["decay"], epoch):
                for group in opt.param_groups:
                    group["lr"] *= cfg["decay"]["factor"]
            if path is not None and epoch < cfg["epochs"]:
                ckpt.save(path, {
                    "version": 1, "trial_id": tid, "device_type": device.type, "epoch": epoch,
                    "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "data_rng": gen.get_state(), "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if cuda else None,
                    "tracker": tracker.state_dict(), "curve": curve, "init_test_loss": init_test_loss,
                    "wall_time_s": elapsed + time.perf_counter() - started,
                })
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed += time.perf_counter() - started

    row = _row(cfg, tid, status, curve, tracker, initial_lr, elapsed)
    row["init_train_loss"], row["init_test_loss"] = _loss_or_inf(tracker.first_loss), _loss_or_inf(init_test_loss)
    if path is not None:
        ckpt.remove(path)
    return TrialResult(row, curve)


def _loss_or_inf(value: float | None) -> float:
    """A loss column value: never NaN (the contract), +inf where none was measured or it was not finite."""
    return float(value) if value is not None and math.isfinite(value) else math.inf


def _row(cfg: dict, tid: str, status: str, curve: list[dict], tracker: _Tracker,
         initial_lr: float, elapsed: float) -> dict:
    last = curve[-1] if curve else None
    ok = status == "ok"
    row = {
        "trial_id": tid,
        "study": cfg["study"],
        "label": cfg["label"] or cfg["optimizer"],
        "dataset": cfg["dataset"],
        "dataset_args": _hp_value(cfg["dataset_args"]),
        "model": cfg["model"],
        "model_args": _hp_value(cfg["model_args"]),
        "optimizer": cfg["optimizer"],
        "lr": cfg["lr"],
        "beta": cfg["beta"],
        "decay": decay_label(cfg["decay"]),
        "seed": cfg["seed"],
        "batch_size": cfg["batch_size"],
        "epochs": cfg["epochs"],
        "weight_decay": cfg["weight_decay"],
    }
    for key, value in cfg["optimizer_args"].items():
        row[key] = _hp_value(value)
    row.update({
        "train_fraction": cfg["train_fraction"],
        "augment": cfg["augment"],
        "divergence_factor": cfg["divergence_factor"],
        "loss_smoothing": cfg["loss_smoothing"],
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
        row[f"iters_to_{t:g}"] = at
    row.update({"wall_time_s": elapsed, "error": None, "device": cfg["device"]})
    return row
