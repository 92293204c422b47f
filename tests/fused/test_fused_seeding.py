"""Alone or in an array, a trial trains with the seeds `outcome.seeds` prescribes, CUDA's included.

Nothing in training draws from torch's global RNGs today, so no loss can show a missing seed
(`test_fused_cuda.py` compares losses): the seeds are read inside each run's first training
step instead. On a CPU the CUDA seeding is observed through stand-ins for torch.cuda's calls,
with `loop.seeded` told that the device it seeds is a GPU; with CUDA the real seeds are read.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from sensitivity import loop
from sensitivity.fused import run_fused
from sensitivity.fused.array import Stacked
from sensitivity.outcome import seeds
from sensitivity.solo import Solo
from sensitivity.train import run_trial

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = {"dataset": "synthetic", "dataset_args": {"shape": [1, 4, 4], "train_size": 32, "test_size": 8},
        "model": "mlp", "model_args": {"hidden": [8]}, "optimizer": "sgd-hd", "batch_size": 16, "epochs": 1}
SEEDS = (3, 11, 7)


def _cuda_calls(monkeypatch, as_gpu: bool) -> list[int]:
    """torch.cuda.manual_seed's calls, recorded instead of made; `as_gpu`: the loop seeds as for cuda:0."""
    calls: list[int] = []
    monkeypatch.setattr(torch.cuda, "manual_seed", calls.append)
    if as_gpu:
        fork, seeded = torch.random.fork_rng, loop.seeded
        monkeypatch.setattr(torch.random, "fork_rng", lambda devices=None, **kw: fork(devices=[], **kw))
        monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
        monkeypatch.setattr(loop, "seeded", lambda seed, device: seeded(seed, torch.device("cuda", 0)))
    return calls


@pytest.mark.parametrize("where", ["cpu", "cuda on a cpu", "cuda"])
def test_every_run_trains_with_its_prescribed_seeds(where, monkeypatch):
    if where == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    calls = None if where == "cuda" else _cuda_calls(monkeypatch, as_gpu=where == "cuda on a cpu")

    def cuda_seed():
        if calls is None:
            return torch.cuda.initial_seed()
        return calls[-1] if calls else None

    first_steps = []  # per run: (members, CPU seed, CUDA seed) at its first training step
    for cls in (Solo, Stacked):
        def step(self, *args, real=cls.step):
            if not getattr(self, "stepped", False):
                self.stepped = True
                first_steps.append((self.size, torch.initial_seed(), cuda_seed()))
            return real(self, *args)

        monkeypatch.setattr(cls, "step", step)
    orders = []  # each run's members' data-order seeds in its first epoch
    epoch = loop._Epochs.epoch

    def spied(self, active, number):
        if number == 1:
            orders.append([m.gen.initial_seed() for m in active])
        return epoch(self, active, number)

    monkeypatch.setattr(loop._Epochs, "epoch", spied)
    device = "cuda" if where == "cuda" else "cpu"
    configs = [{**BASE, "lr": 0.01 * (k + 1), "seed": s, "device": device} for k, s in enumerate(SEEDS)]
    torch.manual_seed(12345)
    before = torch.get_rng_state()

    results = run_fused(configs) + [run_trial(config) for config in configs]

    assert all(r.row["status"] == "ok" for r in results)
    on_gpu = where != "cpu"
    rest = [seeds(s)[2] for s in SEEDS]
    # the array: one global stream, the first member's (nothing draws from it; each member's own
    # data generator carries what differs); then each trial alone with its own
    assert first_steps == [(3, rest[0], rest[0] if on_gpu else None)] + [
        (1, r, r if on_gpu else None) for r in rest]
    assert orders == [[seeds(s)[1] for s in SEEDS]] + [[seeds(s)[1]] for s in SEEDS]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG state is left as it was
