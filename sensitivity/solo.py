"""The solo strategy of the trial loop (`sensitivity.loop`): one trial, its torch model and its optimizer.

:class:`Solo` trains a plain torch module with the optimizer `sensitivity.optim.create` builds,
stepped through a closure, exactly as a researcher writes a training loop; its numbers are the
reference a fused array's members are tested against. Data, seeding, evaluation points,
epochs, divergence, checkpoints and rows are the loop's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sensitivity import loop
from sensitivity.loop import EVAL_BATCH, SYNC_EVERY
from sensitivity.record import TrialRecord

__all__ = ["Solo", "curve_metrics", "evaluate", "sync_every"]


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


