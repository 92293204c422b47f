"""The torch-free catalog and config checks agree with the torch registry and trainer."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sensitivity import catalog, spec
from sensitivity.optim import available, create
from sensitivity.optim.registry import register
from sensitivity.train import validate_config


def test_catalog_and_registry_agree_on_every_name_and_field():
    registered = available()
    assert list(catalog.available()) == list(registered)
    fields = [f.name for f in dataclasses.fields(catalog.OptimizerSpec)]
    for name, info in registered.items():
        entry = catalog.available()[name]
        assert {f: getattr(entry, f) for f in fields} == {f: getattr(info, f) for f in fields}, name


def test_the_registry_refuses_an_optimizer_the_catalog_does_not_describe():
    with pytest.raises(ValueError, match="no entry in sensitivity/catalog.py"):
        register("sgd-new", lambda params, **hp: None)


CONFIGS = [
    {"dataset": "digits", "model": "mlp", "optimizer": "adam-hd"},
    {"dataset": "synthetic", "dataset_args": {"shape": [3, 32, 32]}, "model": "lenet5", "optimizer": "sgdn-cam-hd",
     "optimizer_args": {"gammas": [0.5, 0.5]}, "decay": {"milestones": [2, 4], "factor": 0.5}, "thresholds": 0.3},
    {"dataset": "mnist", "model": "logreg", "optimizer": "adam-l4", "lr": 0.2, "weight_decay": 1e-4},
]


@pytest.mark.parametrize("config", CONFIGS)
def test_check_config_is_validate_config_without_the_device(config):
    from sensitivity.record import TrialRecord

    full = validate_config(config)
    assert TrialRecord.from_config(spec.check_config(config)).config() == {**full, "device": "auto"}


@pytest.mark.parametrize("config, message", [
    ({"dataset": "digits", "model": "mlp", "optimizer": "adam", "optimizer_args": {"betas": [0.9]}},
     "betas must be 2 numbers"),
    ({"dataset": "digits", "model": "mlp", "optimizer": "sgd", "beta": 0.1}, "beta: only for hypergradient"),
    ({"dataset": "digits", "model": "vgg16", "optimizer": "sgd"}, "vgg16 needs image"),
])
def test_check_config_names_the_bad_key_without_torch(config, message):
    with pytest.raises(ValueError, match=message):
        spec.check_config(config)



@pytest.mark.parametrize("name, args, message", [
    ("sgd-hd", {"lr_min": "low"}, "sgd-hd: lr_min must be a number or null, got 'low'"),
    ("dog", {"init_eta": [1e-6]}, "dog: init_eta must be a number or null"),
    ("prodigy", {"decouple": "maybe"}, "prodigy: decouple must be True or False, got 'maybe'"),
    ("prodigy", {"safeguard_warmup": 1}, "prodigy: safeguard_warmup must be True or False"),
    ("schedule-free-sgd", {"warmup_steps": 2.5}, "schedule-free-sgd: warmup_steps must be an integer >= 0, got 2.5"),
    ("sgd-cam-hd", {"levels": "unit"}, "sgd-cam-hd: levels must be a non-empty list of level names"),
    ("sgd-cam-hd", {"gammas": "0.5"}, "sgd-cam-hd: gammas must be a list of numbers"),
    ("sgd-cam-hd", {"gammas": [0.5]}, r"sgd-cam-hd: gammas must hold one weight per level \(unit, global\), got \[0.5\]"),
    ("sgd-cam-hd", {"levels": ["layer", "global"], "gammas": [0.2, 0.3, 0.5]}, "one weight per level"),
    ("sgd-cam-hd", {"levels": ["unit"]}, r"gammas must hold one weight per level \(unit\), got \[0.2, 0.8\] \(the default\)"),
    ("sgd-cam-hd", {"levels": []}, "levels must be a non-empty list"),
])
def test_optimizer_hyperparameters_are_checked_for_type_without_torch(name, args, message):
    with pytest.raises(ValueError, match=message):
        catalog.check(name, args)


@pytest.mark.parametrize("name, args", [
    ("sgd-hd", {"lr_min": None, "lr_max": 0.5}), ("dog", {"init_eta": 1e-6}), ("prodigy", {"decouple": False}),
    ("schedule-free-sgd", {"warmup_steps": 3}), ("schedule-free-sgd", {"warmup_steps": 10.0}),
    ("sgd-cam-hd", {"levels": ["parameter", "layer", "global"], "gammas": [0.2, 0.3, 0.5]}),
    ("sgd-cam-hd", {"gammas": (0.5, 0.5)}),
])
def test_what_the_optimizers_accept_passes_the_type_checks(name, args):
    assert catalog.check(name, args) == args
    create(name, [torch.zeros(2, requires_grad=True)] if "cam" not in name else
           torch.nn.Linear(2, 2).named_parameters(), **args)

def test_missing_files_names_the_folder_and_the_ways_to_fix_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SENSITIVITY_DATA", str(tmp_path))
    message = spec.missing_files({"dataset": "cifar10"})
    assert message.startswith(f"dataset cifar10: 6 of its 6 files missing in {tmp_path / 'cifar-10-batches-py'}")
    assert spec.missing_files({"dataset": "cifar10", "download": True}) is None
    assert spec.missing_files({"dataset": "digits"}) is None
    for name in ("train_32x32.mat", "test_32x32.mat"):
        (tmp_path / name).write_bytes(b"")
    assert spec.missing_files({"dataset": "svhn", "data_dir": str(tmp_path)}) is None
