"""The torch-free catalog and config checks agree with the torch registry and trainer."""

from __future__ import annotations

import dataclasses

import pytest

from sensitivity import catalog, spec
from sensitivity.optim import available
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


def test_missing_files_names_the_folder_and_the_ways_to_fix_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SENSITIVITY_DATA", str(tmp_path))
    message = spec.missing_files({"dataset": "cifar10"})
    assert message.startswith(f"dataset cifar10: 6 of its 6 files missing in {tmp_path / 'cifar-10-batches-py'}")
    assert spec.missing_files({"dataset": "cifar10", "download": True}) is None
    assert spec.missing_files({"dataset": "digits"}) is None
    for name in ("train_32x32.mat", "test_32x32.mat"):
        (tmp_path / name).write_bytes(b"")
    assert spec.missing_files({"dataset": "svhn", "data_dir": str(tmp_path)}) is None
