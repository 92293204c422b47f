"""The driver plans arrays and checks optimizers without importing torch (`fused.facts`).

Budget: about 10 s (two child interpreters, each importing torch once for its answers).
"""

from __future__ import annotations

import json
import subprocess
import sys

import torch  # noqa: F401  (this process measures in-process, as a worker does)

from sensitivity.fused import facts, plan
from sensitivity.study import Study

TASK = {"dataset": "digits", "model": "mlp", "model_args": {"hidden": [16]}, "batch_size": 32, "epochs": 1,
        "device": "cpu"}
OPTIMIZERS = [{"name": "sgd", "lr": [0.01, 0.1]}, {"name": "adam-hd", "lr": [1e-3], "beta": [1e-7, 1e-5]},
              {"name": "sgd", "lr": [0.1], "task": {"model": "lenet5", "model_args": {}, "dataset": "mnist"}},
              {"name": "adam", "lr": [1e-3], "task": {"model_args": {"hidden": [512, 512]}, "batch_size": 128}}]

# a driver: load the study, check its optimizers, cut its trials into arrays; torch never imported
DRIVER = """
import json, sys
from sensitivity.study import Study
from sensitivity.fused import facts, plan
study = Study.from_dict(json.loads(sys.argv[1]))
try:
    study.check_optimizers()
    error = None
except Exception as exc:
    error = f"{type(exc).__name__}: {exc}"
records = study.trials()
arrays, solo = plan.cut(records, "auto", slots=2)
sizes = {r.trial_id: list(facts.per_example(r)) for r in records}
print(json.dumps({"torch": "torch" in sys.modules, "error": error, "facts": sizes,
                  "arrays": sorted(sorted(r.trial_id for r in a) for a in arrays),
                  "solo": sorted(r.trial_id for r in solo)}))
"""


def _driver(data: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(data)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def _error(study: Study) -> str | None:
    try:
        study.check_optimizers()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def test_a_driver_plans_as_a_process_with_torch_does_without_importing_it():
    data = {"name": "facts", "task": TASK, "seeds": 6, "optimizers": OPTIMIZERS}
    got = _driver(data)
    assert got["torch"] is False and got["error"] is None
    study = Study.from_dict(data)  # here torch is loaded: measured in-process
    records = study.trials()
    arrays, solo = plan.cut(records, "auto", slots=2)
    assert got["arrays"] == sorted(sorted(r.trial_id for r in a) for a in arrays) and got["arrays"]
    assert got["solo"] == sorted(r.trial_id for r in solo) and got["solo"]  # the wide MLP runs alone on a CPU
    assert got["facts"] == {r.trial_id: list(facts.per_example(r)) for r in records}
    assert plan.param_count(records[0]) == 64 * 16 + 16 + 16 * 10 + 10  # digits: 8x8 pixels, 10 classes


def test_an_optimizers_own_range_check_fails_alike_with_and_without_torch():
    data = {"name": "facts", "task": TASK, "optimizers": [{"name": "sgd", "lr": [0.1]},
                                                          {"name": "adam", "betas": [1.5, 0.9]}]}
    got = _driver(data)
    assert got["torch"] is False
    assert got["error"] == _error(Study.from_dict(data)) == \
        "StudyError: optimizers[1].betas[0] must be in [0, 1), got 1.5"


def test_answers_are_kept_per_model_and_optimizer(monkeypatch):
    study = Study.from_dict({"name": "facts", "task": TASK, "seeds": 3, "optimizers": OPTIMIZERS[:2]})
    facts.learn(study.trials())
    asked = []
    monkeypatch.setattr(facts, "answer", lambda request: asked.append(request))
    assert facts.learn(study.trials()) == [] and asked == []  # nothing new: nothing measured again


def test_a_process_with_torch_measures_in_process(monkeypatch):
    def child(request):
        raise AssertionError("a child process started where torch is loaded (each worker would start one)")

    monkeypatch.setattr(facts, "_ask_child", child)
    monkeypatch.setattr(facts, "_MODELS", {})
    record = Study.from_dict({"name": "facts", "task": {**TASK, "model_args": {"hidden": [7]}},
                              "optimizers": [{"name": "sgd"}]}).trials()[0]
    assert plan.param_count(record) == 64 * 7 + 7 + 7 * 10 + 10


def test_the_child_imports_what_the_driver_imports_not_the_working_directorys_files(tmp_path):
    (tmp_path / "random.py").write_text("raise ImportError('a random.py of the working directory was imported')\n")
    script = ("import sys; sys.path.pop(0)\n"  # a console script: the working directory is not on its path
              "from sensitivity.study import Study\n"
              f"Study.from_dict({{'name': 'f', 'task': {TASK!r}, 'optimizers': [{{'name': 'sgd'}}]}}).check_optimizers()\n"
              "print('torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-2000:]
