"""What the driver needs torch for, measured without importing torch into it.

Planning arrays (`sensitivity.fused.plan`) needs each model's size (parameters, activations and
multiply-adds of one example, from a forward pass on the meta device) and whether each optimizer
has a member-axis form; a run's start builds each distinct optimizer configuration once for its own
range checks (`Study.check_optimizers`). All of it needs torch, and torch costs a process about
480 MB and two seconds of CPU. So a process that has not imported torch (the driver) asks one
short child process for all of it at once (`learn`), while Ray starts; a process that has torch
(a worker, a test, a benchmark) measures in-process. Answers are kept per distinct model and
optimizer, so a million-trial study with four models asks once.

    python -m sensitivity.fused.facts   # the child (`main`): a JSON request on stdin, the answers on stdout
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, Iterable, Mapping

from sensitivity.record import TrialRecord

__all__ = ["model_key", "per_example", "fusable", "learn", "answer"]

_MODELS: dict[str, tuple[int, int, int]] = {}  # model_key -> (parameters, activations, multiply-adds) of one example
_FUSABLE: dict[str, bool] = {}  # optimizer name -> has a member-axis form
CHILD_TIMEOUT_S = 300


def model_key(record: TrialRecord) -> str:
    """What a model's size depends on: the dataset's shapes and the model's own arguments (as the
    record's canonical JSON, kept: no encoding per record)."""
    return "\t".join(record.encoded(k) for k in ("dataset", "dataset_args", "model", "model_args"))


def _with_torch() -> bool:
    return "torch" in sys.modules


def per_example(record: TrialRecord) -> tuple[int, int, int]:
    """(parameters, activations, multiply-adds of the linear and convolution layers) of one example."""
    key = model_key(record)
    if key not in _MODELS:
        learn([record])
    return _MODELS[key]


def fusable(name: str) -> bool:
    """Whether the optimizer has a member-axis form (every optimizer this package registers has)."""
    if name not in _FUSABLE:
        learn([], optimizers=[name])
    return _FUSABLE[name]


def learn(records: Iterable[TrialRecord], configs: list[Mapping[str, Any]] = (),
          optimizers: Iterable[str] = ()) -> list[dict | None]:
    """Measure the models and optimizers of `records` not known yet and check `configs` (trial
    configs, built once each); returns each config's error (None where it passed): in-process when
    torch is loaded here, else in one child process."""
    models, names = {}, set(optimizers)
    for record in records:
        models.setdefault(model_key(record), record)
        names.add(record.optimizer)
    request = {"models": {k: r.config() for k, r in models.items() if k not in _MODELS},
               "optimizers": sorted(n for n in names if n not in _FUSABLE),
               "configs": [dict(c) for c in configs]}
    if not any(request.values()):
        return []
    reply = answer(request) if _with_torch() else _ask_child(request)
    _MODELS.update({k: tuple(v) for k, v in reply["models"].items()})
    _FUSABLE.update(reply["optimizers"])
    return reply["configs"]


def _ask_child(request: dict) -> dict:
    """`answer` in a child interpreter that imports what this process would (its own sys.path: not the
    working directory, where a user's `random.py` or another checkout would come first)."""
    code = f"import sys; sys.path[:] = {sys.path!r}; from sensitivity.fused.facts import main; main()"
    try:
        done = subprocess.run([sys.executable, "-c", code], input=json.dumps(request), capture_output=True,
                              text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"measuring the study's models and checking its optimizers took more than "
                           f"{CHILD_TIMEOUT_S} s (a child process importing torch); try again") from None
    lines = done.stdout.strip().splitlines()  # the answer is the last line (a library may print before it)
    try:
        if done.returncode == 0 and lines:
            return json.loads(lines[-1])
    except ValueError:
        pass
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"measuring the study's models and checking its optimizers failed in a child process "
                       f"(exit {done.returncode}): {last[:500]}")


def answer(request: Mapping[str, Any]) -> dict:
    """The answers to a request (torch imported here)."""
    from sensitivity.optim import available
    from sensitivity.study import runnable
    from sensitivity.train import validate_config

    registry = available()
    models = {k: _measure(TrialRecord.from_config(config)) for k, config in request.get("models", {}).items()}
    optimizers = {name: name in registry and registry[name].members is not None
                  for name in request.get("optimizers", [])}
    configs = []
    for config in request.get("configs", []):
        try:
            validate_config(runnable(dict(config)))
            configs.append(None)
        except Exception as exc:  # handed back to the caller, who names the study key
            configs.append({"value_error": isinstance(exc, ValueError), "type": type(exc).__name__,
                            "message": str(exc)})
    return {"models": models, "optimizers": optimizers, "configs": configs}


def _measure(record: TrialRecord) -> list[int]:
    """(parameters, activations, multiply-adds) from a forward pass of two examples on the meta device."""
    import torch

    from sensitivity import models
    from sensitivity.spec import dataset_info

    shape, classes = dataset_info(record.dataset, dict(record.dataset_args))
    outputs, macs = [], []

    def hook(module, _inputs, out):
        outputs.append(out.numel() // 2)
        if isinstance(module, torch.nn.Linear):
            macs.append(out.numel() // 2 * module.in_features)
        elif isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            macs.append(out.numel() // 2 * module.in_channels // module.groups * kh * kw)

    with torch.device("meta"):
        model = models.build(record.model, shape, classes, dict(record.model_args))
        hooks = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
        model(torch.zeros(2, *shape))  # two examples: batch norm needs more than one in training mode
        for h in hooks:
            h.remove()
    return [sum(p.numel() for p in model.parameters()), sum(outputs), sum(macs)]


def main() -> None:
    """The child: a request as JSON on stdin, its answer as the last line of stdout."""
    print(json.dumps(answer(json.load(sys.stdin))))


if __name__ == "__main__":
    main()
