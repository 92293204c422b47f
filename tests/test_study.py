"""Study files: validation (one-line errors naming the field), grid expansion, --smoke, Optuna plans.

Budget: a few seconds; no Ray, no training.
"""

from __future__ import annotations

import copy
import math

import pytest
import yaml

from sensitivity.results import trial_id
from sensitivity.study import Study, StudyError, load_study, runnable
from sensitivity.train import validate_config

TASK = {"dataset": "digits", "model": "mlp", "model_args": {"hidden": [16]}, "batch_size": 64, "epochs": 2}


def study(**fields):
    data = {"name": "t", "task": dict(TASK), "seeds": 2, "optimizers": [{"name": "sgd", "lr": [0.1, 0.01]}]}
    data.update(fields)
    return Study.from_dict(data)


def test_every_list_is_an_axis_and_counts_multiply():
    s = study(seeds=3, optimizers=[
        {"name": "sgd", "lr": [1e-3, 1e-2, 0.1]},
        {"name": "sgd", "lr": [1e-3, 1e-2], "decay": [{"every_epochs": 2, "factor": 0.5},
                                                     {"every_epochs": 1, "factor": 0.5}]},
        {"name": "sgd-hd", "lr": [1e-3, 1e-2], "beta": [1e-6, 1e-5, 1e-4]},
        {"name": "adam", "lr": 1e-3},
    ])
    assert s.counts() == [9, 12, 18, 3]
    trials = s.trials()
    assert len(trials) == 42 and len({trial_id(t) for t in trials}) == 42
    hd = [t for t in trials if t.optimizer == "sgd-hd-sgd"]
    assert {(t.lr, t.beta, t.seed) for t in hd} == {
        (lr, b, seed) for lr in (1e-3, 1e-2) for b in (1e-6, 1e-5, 1e-4) for seed in range(3)}
    assert all(t.beta is None for t in trials if t.optimizer != "sgd-hd-sgd")
    decays = {str(t.decay) for t in trials if t.optimizer == "sgd"}
    assert decays == {"None", str({"every_epochs": 1, "factor": 0.5}), str({"every_epochs": 2, "factor": 0.5})}
    for t in trials:  # every config is one run_trial accepts
        validate_config(t.config())


def test_sequence_hyperparameters_flat_list_is_one_value_list_of_lists_an_axis():
    s = study(seeds=1, optimizers=[{"name": "adam", "lr": 1e-3, "betas": [0.9, 0.99]},
                                   {"name": "adam", "lr": 1e-3, "betas": [[0.9, 0.999], [0.8, 0.9], [0.5, 0.9]]}])
    assert s.counts() == [1, 3]
    assert s.trials()[0].optimizer_args == {"betas": (0.9, 0.99), "eps": 1e-8}


def test_explicit_seed_list_task_overrides_and_labels():
    s = study(seeds=[3, 7], optimizers=[{"name": "sgd", "lr": 0.1, "label": "sgd-long", "task": {"epochs": 5}},
                                        {"name": "sgd", "lr": 0.1}])
    trials = s.trials()
    assert [t.seed for t in trials] == [3, 7, 3, 7]
    assert [t.epochs for t in trials] == [5, 5, 2, 2]
    assert [t.label for t in trials] == ["sgd-long"] * 2 + ["sgd"] * 2
    assert all(t.study == "t" for t in trials)


def test_lr_defaults_to_the_optimizers_default():
    (trial, *_) = study(seeds=1, optimizers=[{"name": "adam"}]).trials()
    assert trial.lr == pytest.approx(1e-3)


def test_smoke_shrinks_any_study_to_seconds():
    s = study(task={"dataset": "cifar10", "model": "vgg16", "batch_size": 128, "epochs": 200, "augment": True,
                    "data_dir": "/nonexistent"},
              seeds=5, optimizers=[{"name": "sgd", "lr": [1e-4, 1e-3, 1e-2, 0.1]},
                                   {"name": "sgd-hd", "lr": [1e-3, 1e-2], "beta": [1e-6, 1e-5, 1e-4],
                                    "decay": [None, {"every_epochs": 25, "factor": 0.5}]}])
    assert s.counts() == [20, 60]
    assert s.counts(smoke=True) == [2, 2]
    trials = s.trials(smoke=True)
    assert [t.lr for t in trials[:2]] == [1e-4, 0.1]  # the ends of the lr grid
    for t in trials:
        assert t.epochs == 1 and t.seed == 0 and t.batch_size <= 16
        assert t.dataset == "synthetic" and t.data_dir is None and not t.augment
        assert tuple(t.dataset_args["shape"]) == (3, 32, 32) and t.dataset_args["num_classes"] == 10
        assert t.dataset_args["train_size"] <= 64 and t.model == "vgg16"
        validate_config(t.config())


def test_relative_data_dir_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (trial, *_) = study(task={**TASK, "data_dir": "data"}).trials()
    assert trial.data_dir == str(tmp_path / "data")


def test_optuna_plan_counts_and_per_seed_configs():
    s = study(seeds=3, optimizers=[{"name": "sgd"}, {"name": "sgd-hd", "decay": [None, {"every_epochs": 1,
                                                                                      "factor": 0.5}]}],
              search={"trials": 10, "space": {"lr": {"low": 1e-4, "high": 10.0, "log": True},
                                              "beta": {"low": 1e-6, "high": 1e-2, "log": True}}})
    assert s.counts() == [30, 30] and s.counts(smoke=True) == [3, 3]
    plan = s.search_plan(1)
    assert set(plan["ranges"]) == {"lr", "beta"} and list(plan["choices"]) == ["decay"]
    assert set(s.search_plan(0)["ranges"]) == {"lr"}  # beta only where it is a hyperparameter
    configs = s.search_configs(1, {"lr": 0.5, "beta": 1e-3, "decay": None})
    assert [c.seed for c in configs] == [0, 1, 2] and {c.lr for c in configs} == {0.5}


def test_resolved_study_is_a_loadable_study_file(tmp_path):
    s = study()
    text = s.to_yaml(smoke=True)
    assert text.startswith("# resolved by sensitivity: smoke: true, trials: 2\n")
    path = tmp_path / "study.yaml"
    path.write_text(text)
    again = load_study(path)
    assert [trial_id(t) for t in again.trials()] == [trial_id(t) for t in s.trials()]


def test_yaml_floats_without_a_dot_are_numbers(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: t\ntask: {dataset: digits, model: mlp}\noptimizers:\n  - {name: sgd, lr: [1e-3, 5e-2]}\n")
    assert [t.lr for t in load_study(path).trials()] == [1e-3, 5e-2]


GOOD = {"name": "t", "task": dict(TASK), "seeds": 1, "optimizers": [{"name": "sgd", "lr": 0.1}]}


def bad(path, value):
    """GOOD with the field at `path` (dotted, [i] for list items) set to value (None: removed)."""
    data = copy.deepcopy(GOOD)
    *parents, last = path.replace("[", ".").replace("]", "").split(".")
    node = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is None:
        del node[last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return data


BAD = [
    # (what, study data, expected start of the message, text that must appear)
    ("unknown optimizer", bad("optimizers.0.name", "sgdx"), "optimizers[0].name: unknown optimizer 'sgdx'",
     "adam-hd"),
    ("negative lr", bad("optimizers.0.lr", [0.1, -0.5]), "optimizers[0].lr[1] must be > 0", "got -0.5"),
    ("zero lr", bad("optimizers.0.lr", 0), "optimizers[0].lr must be > 0", "got 0"),
    ("negative beta", bad("optimizers", [{"name": "sgd-hd", "beta": [0.0, -1e-4]}]), "optimizers[0].beta[1] must be >= 0",
     "got -0.0001"),
    ("string lr", bad("optimizers.0.lr", "0.1"), "optimizers[0].lr must be a number", "got '0.1'"),
    ("beta on non-HD", bad("optimizers.0.beta", 1e-4), "optimizers[0].beta: beta applies only to HD", "sgd-hd"),
    ("empty grid", bad("optimizers.0.lr", []), "optimizers[0].lr: empty grid", ""),
    ("empty decay grid", bad("optimizers.0.decay", []), "optimizers[0].decay: empty grid", ""),
    ("no optimizers", bad("optimizers", []), "optimizers:", "at least 1"),
    ("missing task", bad("task", None), "task: missing required field", ""),
    ("missing name", bad("name", None), "name: missing required field", ""),
    ("missing dataset", bad("task.dataset", None), "task.dataset: missing required field", ""),
    ("unknown dataset", bad("task.dataset", "imagenet"), "task.dataset: unknown dataset 'imagenet'", "mnist"),
    ("unknown model", bad("task.model", "vit"), "task.model: unknown model 'vit'", "resnet18"),
    ("unknown hyperparameter", bad("optimizers.0.momentumx", 0.9), "optimizers[0].momentumx: unknown hyperparameter",
     "lr"),
    ("wrong-typed hyperparameter", bad("optimizers", [{"name": "sgdn", "lr": 0.1, "momentum": "high"}]),
     "optimizers[0]:", "momentum must be a number, got 'high'"),
    ("unknown top-level field", bad("grid", 1), "grid: unknown field", "optimizers"),
    ("entry key in task", bad("task.lr", 0.1), "task.lr: set per optimizer entry", ""),
    ("bad task value", bad("task.epochs", 0), "task.epochs must be", ">= 1"),
    ("bad decay", bad("optimizers.0.decay", {"every_epochs": 0, "factor": 0.5}),
     "optimizers[0].decay.every_epochs must be an integer >= 1", "got 0"),
    ("bad decay factor", bad("optimizers.0.decay", {"every_epochs": 2, "factor": 0}),
     "optimizers[0].decay.factor must be > 0", "got 0"),
    ("bad milestone", bad("optimizers.0.decay", [None, {"milestones": [2, 0.5], "factor": 0.5}]),
     "optimizers[0].decay[1].milestones[1] must be an integer >= 1", "got 0.5"),
    ("bad seeds", bad("seeds", 0), "seeds:", ">= 1"),
    ("bad name", bad("name", "My Study"), "name: use only lowercase", ""),
    ("negative gpu", bad("resources", {"gpu": -1}), "resources.gpu:", "greater than or equal to 0"),
    ("bad bundle", bad("bundle", 0), "bundle:", "auto"),
    ("misspelt optimizers", {k: v for k, v in {**GOOD, "optimizer": GOOD["optimizers"]}.items() if k != "optimizers"},
     "optimizer: unknown field; choose from", "optimizers"),
    ("one label, two optimizers", bad("optimizers", [{"name": "sgd", "lr": 0.1},
                                                     {"name": "sgd-hd", "label": "sgd", "lr": 0.1}]),
     "optimizers[1].label: 'sgd' is also optimizers[0]'s (sgd)", "give this sgd-hd-sgd entry its own"),
    ("duplicate entries", bad("optimizers", [{"name": "sgd", "lr": 0.1},
                                             {"name": "sgd", "lr": [0.1, 1.0], "decay": [None]}]),
     "optimizers[1]: repeats trials of optimizers[0]", ""),
    ("log space from 0", {**GOOD, "search": {"trials": 2, "space": {"lr": {"low": 0, "high": 1, "log": True}}}},
     "search.space.lr.low (log: true) must be > 0", "got 0"),
    ("lr space from 0", {**GOOD, "search": {"trials": 2, "space": {"lr": {"low": 0, "high": 1}}}},
     "search.space.lr.low must be > 0", "got 0"),
    ("infinite space", {**GOOD, "search": {"trials": 2, "space": {"lr": {"low": 1e-3, "high": math.inf}}}},
     "search.space.lr.high must be a finite number", "got inf"),
    ("space for no entry", {**GOOD, "search": {"trials": 2, "space": {"beta": {"low": 1e-6, "high": 1e-3}}}},
     "optimizers[0]: none of search.space", "lr"),
    ("unknown metric", {**GOOD, "search": {"trials": 2, "metric": "accuracy",
                                           "space": {"lr": {"low": 1e-3, "high": 1}}}}, "search.metric:",
     "min_train_loss"),
    ("unknown space field", {**GOOD, "search": {"trials": 2, "space": {"lr": {"low": 1e-3, "high": 1, "lg": 1}}}},
     "search.space.lr.lg: unknown field", "low, high, log"),
]


@pytest.mark.parametrize("what,data,start,contains", BAD, ids=[b[0] for b in BAD])
def test_bad_study_is_one_line_naming_the_field(what, data, start, contains):
    with pytest.raises(StudyError) as info:
        Study.from_dict(data)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(start), message
    assert contains in message, message


def test_malformed_yaml_and_missing_file_are_one_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: t\noptimizers:\n  - {name: sgd, lr: [0.1\n")
    with pytest.raises(StudyError, match=r"broken.yaml: line \d+ column \d+: malformed YAML") as info:
        load_study(path)
    assert "\n" not in str(info.value)
    with pytest.raises(StudyError, match="cannot read study file"):
        load_study(tmp_path / "nope.yaml")
    path.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(StudyError, match="expected a mapping"):
        load_study(path)
