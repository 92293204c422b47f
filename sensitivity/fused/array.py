"""``run_fused(configs)``: K trial configs trained as one fused array, each member as if alone.

How the array keeps each member's run identical to ``run_trial`` of its config:

- **Weights.** Each member's solo model is built exactly as ``run_trial`` builds it (its own
  seed), then the K models are fused (``models.fuse``): the fused tensors hold the same numbers.
- **Data.** Each member has its own data-order generator seeded from its seed, draws its own
  permutation each epoch and its own augmentation, in the solo order; step s of the array
  gathers member k's batch s as its solo run does.
- **Forward/backward.** One pass of the fused model; the loss is the sum of the members' mean
  cross-entropies, so each member's gradient is that of its own loss (no operator mixes members).
- **Update.** Each member has its own α, hypergradient, lr-optimizer state and γ, and no member
  reads another's numbers, with one copy of every formula (``optim.py``): sgd, sgdn, adam and the
  nine HD optimizers run their functional core along the member axis, updating the fused tensors
  at once with per-member (K,) hyperparameters; the others (RAdam, CAM-HD, L4, AdaBound) run the
  unchanged solo optimizer on views of each member's slices.
- **Bookkeeping.** Each member has its own ``_Tracker`` (divergence, running loss, thresholds),
  decay schedule, curve and row, computed by the same code as solo (``sensitivity.train``).
- **Isolation.** A member that diverges is recorded at the step where its own run would stop
  and is dropped from the array (every fused tensor is sliced) at the next read of the losses
  (every ``SYNC_EVERY`` steps), so it soon costs no more compute.

Rows carry two extra columns: ``array_size`` (members at the start) and ``array_id``.
``wall_time_s`` is each member's share of the array's time (time while it ran / members running).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from sensitivity import checkpoint as ckpt
from sensitivity import data as datamod
from sensitivity import train
from sensitivity.train import TrialResult

from .models import fuse
from .optim import MemberOptimizers

__all__ = ["SHARED_KEYS", "fusion_key", "run_fused", "array_id"]

# What every member of an array shares; everything else (lr, beta, weight_decay, decay, seed,
# thresholds, divergence settings, optimizer hyperparameters) may differ per member.
SHARED_KEYS = ("dataset", "dataset_args", "data_dir", "download", "train_fraction", "model", "model_args",
               "batch_size", "epochs", "augment", "optimizer", "optimizer_args.levels", "device")


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _key_of(cfg: dict) -> tuple:
    out = []
    for key in SHARED_KEYS:
        if key == "optimizer_args.levels":
            out.append((key, _canon(cfg["optimizer_args"].get("levels"))))
        else:
            out.append((key, _canon(cfg[key])))
    return tuple(out)


def fusion_key(config: Mapping[str, Any]) -> tuple:
    """A hashable key: configs with equal keys may train in one array (ValueError for a bad config)."""
    return _key_of(train.validate_config(config))


def array_id(trial_ids: list[str]) -> str:
    return "a" + hashlib.sha1("\n".join(trial_ids).encode()).hexdigest()[:15]


class _Member:
    """One trial of the array: its config, optimizer, data generator, tracker and curve."""

    def __init__(self, cfg: dict, tid: str):
        self.cfg, self.tid = cfg, tid
        _, order_seed, self.rest_seed = train._seeds(cfg["seed"])
        self.gen = None
        self.order_seed = order_seed
        self.tracker = train._Tracker(cfg["thresholds"], cfg["divergence_factor"], cfg["loss_smoothing"])
        self.curve: list[dict] = []
        self.status: str | None = None  # None while training
        self.wall = 0.0
        self.opt = None  # its own optimizer, or
        self.group = None  # its param group of the shared one (see optim.py)
        self.params: list[torch.Tensor] = []
        self.initial_lr = math.nan
        self.init_test_loss: float | None = None  # L0 on the test split, as run_trial scores it


def _check_shared(cfgs: list[dict]) -> None:
    first = _key_of(cfgs[0])
    for i, cfg in enumerate(cfgs[1:], start=1):
        for (key, a), (_, b) in zip(first, _key_of(cfg)):
            if a != b:
                raise ValueError(f"run_fused: configs 0 and {i} differ in {key} ({a} vs {b}); "
                                 "members of one array must share it")


def _attach(model, members: list[_Member]) -> list[torch.Tensor]:
    """Point each member's parameter and gradient views at its slices of the fused tensors.

    The fused gradients are allocated once and zeroed before each backward, which accumulates
    into them in place, so the members' gradient views stay valid from step to step.
    """
    fused = [p for _, p in model.named_parameters()]
    for p in fused:
        p.grad = torch.zeros_like(p)
    for j, m in enumerate(members):
        for view, p in zip(m.params, fused):
            view.data = p.data[j]
            view.grad = p.grad[j]
    return fused


@torch.no_grad()
def _evaluate(model, x: torch.Tensor, y: torch.Tensor) -> list[tuple[float, float]]:
    """Per member (mean cross-entropy, accuracy) over (x, y) in eval mode; one host sync."""
    k = model.size
    model.eval()
    loss = torch.zeros(k, dtype=torch.float64, device=x.device)
    correct = torch.zeros(k, dtype=torch.float64, device=x.device)
    step = max(128, train.EVAL_BATCH // k)  # bounded activations; eval mode: no dependence on it
    for i in range(0, len(y), step):
        xb, yb = x[i:i + step], y[i:i + step]
        out = model(xb.unsqueeze(0).expand(k, *xb.shape))
        loss += _member_losses(out, yb.expand(k, -1)).sum(1).double()
        correct += (_predictions(out) == yb).sum(1)
    model.train()
    values = torch.stack([loss, correct]).tolist()
    return [(lo / len(y), c / len(y)) for lo, c in zip(*values)]


def _member_losses(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy (K, N) of logits (K, N, C) against labels (K, N).

    Computed over the (K, C, N) view: torch's CPU log-softmax vectorises along the innermost
    dimension, which there holds the N examples instead of the few classes (about 10x faster).
    """
    return F.cross_entropy(out.transpose(1, 2), y, reduction="none")


def _predictions(out: torch.Tensor) -> torch.Tensor:
    """argmax over the classes of logits (K, N, C), the first maximum as argmax takes it. The fused
    model's logits are a transposed view, where ``max`` is ten times faster than ``argmax``."""
    return out.max(-1).indices


def _ckpt_path(checkpoint_dir, aid: str):
    return ckpt.path_for(checkpoint_dir, aid) if checkpoint_dir is not None else None


def run_fused(configs: list[Mapping[str, Any]], *, checkpoint_dir: str | None = None) -> list[TrialResult]:
    """Train `configs` as one array; returns, in order, what ``run_trial(config)`` returns for each.

    The configs must share :data:`SHARED_KEYS` (ValueError naming the first that differs).
    With `checkpoint_dir`, the array's state is saved there once per epoch as one file
    (``<checkpoint_dir>/<array_id>.pt``) and a later call with the same configs resumes from it.
    """
    if not configs:
        return []
    cfgs = [train.validate_config(c) for c in configs]
    _check_shared(cfgs)
    tids = [train._trial_id(c) for c in configs]
    if len(set(tids)) != len(tids):
        raise ValueError("run_fused: the same trial appears twice in one array")
    aid = array_id(tids)
    first = cfgs[0]
    device = torch.device(first["device"])
    data = datamod.load(first["dataset"], data_dir=first["data_dir"], dataset_args=first["dataset_args"],
                        device=device, download=first["download"])
    data = datamod.train_subset(data, first["train_fraction"])

    members = [_Member(cfg, tid) for cfg, tid in zip(cfgs, tids)]
    model = fuse([train.build_model(cfg, data.input_shape, data.num_classes) for cfg in cfgs]).to(device)
    path = _ckpt_path(checkpoint_dir, aid)
    state = ckpt.load(path) if path is not None else None
    if state is not None and (state["trial_ids"] != tids or state["device_type"] != device.type):
        raise ValueError(f"checkpoint {path} belongs to another array or device; remove it to start over")
    first_epoch = 1
    if state is not None:
        for m, ms in zip(members, state["members"]):
            m.status, m.curve, m.wall = ms["status"], list(ms["curve"]), ms["wall"]
            m.initial_lr = ms["initial_lr"]
            m.init_test_loss = ms.get("init_test_loss")
            m.tracker.load_state_dict(ms["tracker"])
        active = [m for m in members if m.status is None]
        model.keep([members.index(m) for m in active])
        model.load_state_dict(state["model"])
        first_epoch = state["epoch"] + 1
    active = [m for m in members if m.status is None]
    opts = MemberOptimizers(first["optimizer"], active, model)
    for m in active:
        m.gen = torch.Generator(device=device)
        m.gen.manual_seed(m.order_seed)
        if state is None:
            m.initial_lr = opts.lr_metrics(m)["lr"]
        else:
            m.gen.set_state(state["members"][members.index(m)]["data_rng"])
    if state is not None:
        opts.load_state_dict(state["optimizers"], active)

    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # nothing in training draws from it; seeded as solo
        torch.random.default_generator.manual_seed(members[0].rest_seed)
        if state is not None:
            torch.set_rng_state(state["torch_rng"])
        else:  # L0: each initial model's test loss (eval mode, no RNG drawn), before any step
            for m, (loss, _) in zip(members, _evaluate(model, data.test_x, data.test_y)):
                m.init_test_loss = loss
        runner = _Runner(model, data, first, device, opts)
        for epoch in range(first_epoch, first["epochs"] + 1):
            if not active:
                break
            active = runner.epoch(active, epoch)
            if path is not None and epoch < first["epochs"] and active:
                ckpt.save(path, {
                    "version": 1, "trial_ids": tids, "device_type": device.type, "epoch": epoch,
                    "model": model.state_dict(), "torch_rng": torch.get_rng_state(),
                    "members": [{
                        "status": m.status, "curve": m.curve, "wall": m.wall, "initial_lr": m.initial_lr,
                        "init_test_loss": m.init_test_loss,
                        "tracker": m.tracker.state_dict(),
                        "data_rng": m.gen.get_state() if m.status is None else None,
                    } for m in members], "optimizers": opts.state_dict(active),
                })
        for m in active:
            m.status = "ok"

    results = []
    for m in members:
        row = train._row(m.cfg, m.tid, m.status, m.curve, m.tracker, m.initial_lr, m.wall)
        row["init_train_loss"] = train._loss_or_inf(m.tracker.first_loss)
        row["init_test_loss"] = train._loss_or_inf(m.init_test_loss)
        row.update({"array_size": len(members), "array_id": aid})
        results.append(TrialResult(row, m.curve))
    if path is not None:
        ckpt.remove(path)
    return results


class _Runner:
    """The array's epoch loop: fused forward/backward, per-member optimizer steps and bookkeeping."""

    def __init__(self, model, data, cfg: dict, device: torch.device, opts: MemberOptimizers):
        self.model, self.data, self.cfg, self.device, self.opts = model, data, cfg, device, opts
        # host reads of the losses: every step costs a python pass over the members, so an array
        # reads them every SYNC_EVERY steps on the CPU too (a diverged member runs a few steps more)
        self.every = train.SYNC_EVERY
        self.opts = opts
        self.fused: list[torch.Tensor] | None = None  # the fused parameters, once gradients are attached
        # HD optimizers keep the previous step's gradient tensor (solo runs get new ones each
        # step): give them new gradients too rather than zeroing the fused ones in place; so do
        # the member axis's baselines, which saves the zeroing and the accumulation passes
        from sensitivity.optim import available

        self.fresh_grads = available()[cfg["optimizer"]].is_hd or opts.mode == "axis"
        self.clock = time.perf_counter()

    def _share_time(self, active: list[_Member]) -> None:
        """Add the time since the last call to the running members, in equal shares."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        for m in active:
            m.wall += (now - self.clock) / len(active)
        self.clock = now

    def _drop(self, active: list[_Member], gone: set[int]) -> list[_Member]:
        keep = [j for j in range(len(active)) if j not in gone]
        if keep:
            self.model.keep(keep)
            self.opts.drop(active, keep, self.model)
            kept = [active[j] for j in keep]
            self.fused = _attach(self.model, kept)
            return kept
        return []

    def epoch(self, active: list[_Member], epoch: int) -> list[_Member]:
        """Train one epoch of every running member; returns the members still running."""
        cfg, data, model, device = self.cfg, self.data, self.model, self.device
        x, y = data.train_x, data.train_y
        n, bs = len(y), cfg["batch_size"]
        self.clock = time.perf_counter()
        perms = torch.stack([torch.randperm(n, generator=m.gen, device=device) for m in active])
        correct = torch.zeros(len(active), dtype=torch.long, device=device)
        if self.fused is None:
            self.fused = _attach(model, active)
        fused = self.fused
        grads = [p.grad for p in fused]
        pending: list[torch.Tensor] = []
        sizes: list[int] = []
        halted: set[int] = set()  # members whose optimizer raised on an already diverged run
        model.train()
        for start in range(0, n, bs):
            idx = perms[:, start:start + bs]
            # index_select over the flat indices: several times faster than x[idx] on CPU
            flat = idx.reshape(-1)
            xb = x.index_select(0, flat).view(*idx.shape, *x.shape[1:])
            yb = y.index_select(0, flat).view(idx.shape)
            if cfg["augment"]:
                xb = torch.stack([datamod.augment(xb[j], m.gen, data.pad_value) for j, m in enumerate(active)])
            if self.fresh_grads:
                for p in fused:
                    p.grad = None
            else:
                torch._foreach_zero_(grads)
            with torch.enable_grad():
                out = model(xb)
                losses = _member_losses(out, yb).mean(1)
                losses.sum().backward()
            losses = losses.detach()
            if self.fresh_grads:
                for j, m in enumerate(active):
                    for view, p in zip(m.params, fused):
                        view.grad = p.grad[j]
            correct += (_predictions(out.detach()) == yb).sum(1)
            pending.append(losses)
            sizes.append(idx.shape[1])

            def on_error(j: int) -> bool:
                # as solo: an optimizer may raise on the non-finite values of an already diverged run
                return active[j].tracker.replay(torch.stack(pending)[:, j].tolist(), sizes)

            halted |= self.opts.step(active, losses, on_error, skip=halted)
            last = start + bs >= n
            if len(pending) >= self.every or last:
                values = torch.stack(pending).T.tolist()  # (members, steps)
                gone = set(halted)
                for j, m in enumerate(active):
                    if j not in halted and m.tracker.replay(values[j], sizes):
                        gone.add(j)
                pending.clear()
                sizes.clear()
                halted.clear()
                if gone:
                    self._share_time(active)
                    for j in gone:
                        active[j].status = "diverged"
                    keep = [j for j in range(len(active)) if j not in gone]
                    active = self._drop(active, gone)
                    if not active:
                        return []
                    perms, correct = perms[keep], correct[keep]
                    fused = self.fused
                    grads = [p.grad for p in fused]
        accs = (correct.double() / n).tolist()
        evals = _evaluate(model, data.test_x, data.test_y)
        for m, acc, (test_loss, test_acc) in zip(active, accs, evals):
            m.curve.append({
                "trial_id": m.tid, "epoch": epoch, "step": m.tracker.steps,
                "train_loss": m.tracker.end_epoch(), "train_acc": acc,
                "test_loss": test_loss if not math.isnan(test_loss) else math.inf,
                "test_acc": test_acc, **self.opts.lr_metrics(m),
            })
            if train._decays_after(m.cfg["decay"], epoch):
                self.opts.decay(m, m.cfg["decay"]["factor"])
        self._share_time(active)
        return active
