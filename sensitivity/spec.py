"""A trial config checked without torch: keys and defaults, dataset and model names, shapes, data files.

`check_config` is everything `sensitivity.train.validate_config` checks except what needs torch
(the device, and building the optimizer over a probe parameter to run its own range checks).
`sensitivity validate` and `sensitivity optimizers` import only this, the optimizer catalog and
the study file reader, so they answer without importing torch or ray.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from sensitivity import catalog, checks

__all__ = ["CONFIG_KEYS", "REQUIRED_KEYS", "DEFAULTS", "DATASETS", "MODELS", "FILES", "check_config",
           "check_dataset_args", "dataset_info", "data_root", "missing_files", "check_model_args", "check_input"]

DATASETS = ("digits", "mnist", "cifar10", "svhn", "synthetic")

# (input shape as C, H, W; number of classes) of the fixed datasets
_INFO = {
    "digits": ((1, 8, 8), 10),
    "mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "svhn": ((3, 32, 32), 10),
}
SYNTHETIC_DEFAULTS = {"shape": (1, 8, 8), "num_classes": 10, "train_size": 1000, "test_size": 200, "seed": 0}
# every dataset takes train_size/test_size (keep the first n examples); synthetic also shapes itself
_DATASET_ARGS = {name: ("train_size", "test_size") for name in _INFO} | {"synthetic": tuple(SYNTHETIC_DEFAULTS)}

# file datasets: (folder under the data root, the files it must hold)
FILES = {
    "mnist": ("MNIST/raw", ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                            "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")),
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)),
    "svhn": (".", ("train_32x32.mat", "test_32x32.mat")),
}


# ---------------------------------------------------------------------------
# trial config keys

REQUIRED_KEYS = ("dataset", "model", "optimizer")
DEFAULTS: dict[str, Any] = {
    "dataset_args": {},
    "data_dir": None,
    "download": False,
    "model_args": {},
    "label": None,
    "lr": None,  # None: the optimizer's default
    "beta": None,  # None: the HD optimizer's default; must stay None for the others
    "optimizer_args": {},
    "weight_decay": 0.0,
    "decay": None,
    "batch_size": 128,
    "epochs": 10,
    "seed": 0,
    "train_fraction": 1.0,
    "augment": False,
    "thresholds": [],
    "divergence_factor": 10.0,
    "loss_smoothing": 0.98,
    "device": "auto",
    "study": None,
}
CONFIG_KEYS = REQUIRED_KEYS + tuple(DEFAULTS)
_TOP_LEVEL_HP = ("lr", "beta", "weight_decay")  # never inside optimizer_args


# ---------------------------------------------------------------------------
# datasets

def check_dataset_args(name: str, args: Mapping[str, Any] | None) -> dict:
    """Normalised `dataset_args` for dataset `name` (synthetic gets its defaults filled in)."""
    if name not in DATASETS:
        raise ValueError(f"dataset: unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        raise ValueError(f"dataset_args must be a mapping, got {type(args).__name__}")
    unknown = sorted(set(args) - set(_DATASET_ARGS[name]))
    if unknown:
        raise ValueError(f"dataset_args.{unknown[0]}: not an option of {name}; valid: {', '.join(_DATASET_ARGS[name])}")
    out = dict(SYNTHETIC_DEFAULTS) if name == "synthetic" else {}
    out.update(args)
    for key in ("train_size", "test_size", "num_classes"):
        if key in out:
            out[key] = checks.integer(f"dataset_args.{key}", out[key], low=1)
    if name == "synthetic":
        if out["num_classes"] < 2:
            raise ValueError(f"dataset_args.num_classes must be at least 2, got {out['num_classes']}")
        shape = out["shape"]
        if isinstance(shape, int) and not isinstance(shape, bool):
            shape = (shape,)
        if not isinstance(shape, (list, tuple)) or not 1 <= len(shape) <= 3:
            raise ValueError(f"dataset_args.shape must be a list of 1 to 3 positive integers, got {shape!r}")
        out["shape"] = tuple(checks.integer("dataset_args.shape", s, low=1) for s in shape)
        out["seed"] = checks.integer("dataset_args.seed", out["seed"], low=0)
    return out


def dataset_info(name: str, dataset_args: Mapping[str, Any] | None = None) -> tuple[tuple[int, ...], int]:
    """(input shape, number of classes) of a dataset, without loading it."""
    args = check_dataset_args(name, dataset_args)
    if name == "synthetic":
        return tuple(args["shape"]), int(args["num_classes"])
    return _INFO[name]


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """Where the file datasets live: `data_dir`, else $SENSITIVITY_DATA, else ~/.cache/sensitivity."""
    root = data_dir or os.environ.get("SENSITIVITY_DATA") or "~/.cache/sensitivity"
    return Path(os.path.expanduser(os.fspath(root))).resolve()


def missing_files(config: Mapping[str, Any]) -> str | None:
    """One line naming what a file dataset lacks under its data root, else None.

    None as well for datasets that need no files and for ``download: true`` (torchvision fetches them).
    """
    name = config.get("dataset")
    if name not in FILES or config.get("download") or "://" in str(config.get("data_dir") or ""):
        return None  # nothing to read, torchvision fetches them, or not a local folder
    root = data_root(config.get("data_dir"))
    sub, files = FILES[name]
    absent = [f for f in files if not (root / sub / f).is_file()]
    if not absent:
        return None
    return (f"dataset {name}: {len(absent)} of its {len(files)} files missing in {(root / sub)} (e.g. {absent[0]}); "
            f"set task.data_dir or $SENSITIVITY_DATA to the folder that holds them, or set download: true")


# ---------------------------------------------------------------------------
# models

MODELS = ("logreg", "mlp", "lenet5", "vgg16", "resnet18", "resnet34")

_MODEL_ARGS = {"logreg": {}, "mlp": {"hidden": [100, 100]}, "lenet5": {}, "vgg16": {}, "resnet18": {}, "resnet34": {}}
# smallest image side each convolutional model can take (pooling must leave at least 1 px)
_MIN_SIDE = {"lenet5": 12, "vgg16": 32, "resnet18": 1, "resnet34": 1}


def check_model_args(name: str, args: Mapping[str, Any] | None) -> dict:
    """Normalised `model_args` of model `name` (defaults filled in)."""
    if name not in MODELS:
        raise ValueError(f"model: unknown model {name!r}; choose from {', '.join(MODELS)}")
    args = {} if args is None else args
    if not isinstance(args, Mapping):
        raise ValueError(f"model_args must be a mapping, got {type(args).__name__}")
    unknown = sorted(set(args) - set(_MODEL_ARGS[name]))
    if unknown:
        valid = ", ".join(_MODEL_ARGS[name]) or "none"
        raise ValueError(f"model_args.{unknown[0]}: not an option of {name}; valid: {valid}")
    out = {**_MODEL_ARGS[name], **args}
    if name == "mlp":
        hidden = out["hidden"]
        if isinstance(hidden, int) and not isinstance(hidden, bool):
            hidden = [hidden]
        if not isinstance(hidden, (list, tuple)):
            raise ValueError(f"model_args.hidden must be a list of positive integers, got {out['hidden']!r}")
        out["hidden"] = [checks.integer(f"model_args.hidden[{i}]", h, low=1) for i, h in enumerate(hidden)]
    return out


def check_input(name: str, input_shape: tuple[int, ...]) -> None:
    """Raise ValueError when model `name` cannot take inputs of `input_shape` (C, H, W or flat)."""
    if name in _MIN_SIDE:
        if len(input_shape) != 3:
            raise ValueError(f"model: {name} needs image inputs (C, H, W), the dataset gives shape {tuple(input_shape)}")
        side = min(input_shape[1:])
        if side < _MIN_SIDE[name]:
            raise ValueError(f"model: {name} needs images of at least {_MIN_SIDE[name]}x{_MIN_SIDE[name]} px,"
                             f" the dataset gives {input_shape[1]}x{input_shape[2]}")


# ---------------------------------------------------------------------------
# values

def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return bool(value)


def _check_decay(decay: Any) -> dict | None:
    if decay is None:
        return None
    if not isinstance(decay, Mapping):
        raise ValueError("decay must be null, {every_epochs: k, factor: f} or {milestones: [m, ...], factor: f};"
                         f" got {decay!r}")
    unknown = sorted(set(decay) - {"every_epochs", "milestones", "factor"})
    if unknown:
        raise ValueError(f"decay.{unknown[0]}: unknown key; valid: every_epochs or milestones, and factor")
    if ("every_epochs" in decay) == ("milestones" in decay):
        raise ValueError("decay: give exactly one of every_epochs or milestones")
    if "factor" not in decay:
        raise ValueError("decay.factor: missing (the lr multiplier, e.g. 0.5)")
    out = {"factor": checks.number("decay.factor", decay["factor"], low=0.0, low_open=True)}
    if "every_epochs" in decay:
        out["every_epochs"] = checks.integer("decay.every_epochs", decay["every_epochs"], low=1)
    else:
        ms = decay["milestones"]
        if not isinstance(ms, (list, tuple)) or not ms:
            raise ValueError(f"decay.milestones must be a non-empty list of epochs, got {ms!r}")
        ms = [checks.integer("decay.milestones", m, low=1) for m in ms]
        if ms != sorted(set(ms)):
            raise ValueError(f"decay.milestones must be strictly increasing, got {ms!r}")
        out["milestones"] = ms
    return out


def check_config(config: Mapping[str, Any]) -> dict:
    """The config with defaults filled in and values normalised; ValueError naming the first bad key.

    Optimizer hyperparameters are checked against the catalog (names, types); their ranges are the
    optimizer's own business (`sensitivity.train.validate_config` builds it once to ask).
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"config must be a mapping, got {type(config).__name__}")
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown config key; valid keys: {', '.join(CONFIG_KEYS)}")
    for key in REQUIRED_KEYS:
        if key not in config:
            raise ValueError(f"{key}: missing (required keys: {', '.join(REQUIRED_KEYS)})")
    cfg = {**DEFAULTS, **{k: v for k, v in config.items()}}
    for key in ("dataset_args", "model_args", "optimizer_args"):
        if cfg[key] is None:
            cfg[key] = {}

    if cfg["dataset"] not in DATASETS:
        raise ValueError(f"dataset: unknown dataset {cfg['dataset']!r}; choose from {', '.join(DATASETS)}")
    cfg["dataset_args"] = check_dataset_args(cfg["dataset"], cfg["dataset_args"])
    input_shape, _ = dataset_info(cfg["dataset"], cfg["dataset_args"])
    if cfg["model"] not in MODELS:
        raise ValueError(f"model: unknown model {cfg['model']!r}; choose from {', '.join(MODELS)}")
    cfg["model_args"] = check_model_args(cfg["model"], cfg["model_args"])
    check_input(cfg["model"], input_shape)

    infos = catalog.available()
    name = cfg["optimizer"]
    if name not in infos:
        raise ValueError(f"optimizer: unknown optimizer {name!r}; choose from {', '.join(sorted(infos))}")
    info = infos[name]
    if cfg["lr"] is None:
        cfg["lr"] = info.hyperparameters.get("lr")
    cfg["lr"] = checks.number("lr", cfg["lr"], low=0.0)
    if cfg["beta"] is not None:
        if not info.is_hd:
            raise ValueError(f"beta: only for hypergradient optimizers, and {name!r} is not one")
        cfg["beta"] = checks.number("beta", cfg["beta"], low=0.0)
    elif info.is_hd:
        cfg["beta"] = info.hyperparameters.get("beta")
    cfg["weight_decay"] = checks.number("weight_decay", cfg["weight_decay"], low=0.0)
    if not isinstance(cfg["optimizer_args"], Mapping):
        raise ValueError(f"optimizer_args must be a mapping, got {cfg['optimizer_args']!r}")
    cfg["optimizer_args"] = dict(cfg["optimizer_args"])
    for key in cfg["optimizer_args"]:
        if key in _TOP_LEVEL_HP:
            raise ValueError(f"optimizer_args.{key}: set {key} at the top level of the config")
    catalog.check(name, optimizer_hyperparameters(cfg))

    cfg["decay"] = _check_decay(cfg["decay"])
    if cfg["decay"] is not None and info.needs_closure:
        # L4 recomputes its step size from the loss every step, so a multiplied lr would be overwritten.
        raise ValueError(f"decay: {name!r} sets its own step size every step; use decay: null")
    cfg["batch_size"] = checks.integer("batch_size", cfg["batch_size"], low=1)
    cfg["epochs"] = checks.integer("epochs", cfg["epochs"], low=1)
    cfg["seed"] = checks.integer("seed", cfg["seed"], low=0)
    cfg["train_fraction"] = checks.number("train_fraction", cfg["train_fraction"], low=0.0, high=1.0, low_open=True)
    cfg["augment"] = _flag("augment", cfg["augment"])
    if cfg["augment"] and len(input_shape) != 3:
        raise ValueError(f"augment: needs image inputs (C, H, W), {cfg['dataset']} gives shape {input_shape}")
    thresholds = cfg["thresholds"]
    if thresholds is None:
        thresholds = []
    if checks.is_number(thresholds):
        thresholds = [thresholds]
    if not isinstance(thresholds, (list, tuple)):
        raise ValueError(f"thresholds must be a list of training losses, got {thresholds!r}")
    values = [checks.number("thresholds", t, low=0.0, low_open=True) for t in thresholds]
    columns: dict[str, float] = {}
    for t in values:  # each threshold is a column iters_to_<t:g>: two that print alike would share one
        name = f"{t:g}"
        if name in columns:
            same = "is given twice" if columns[name] == t else f"and {columns[name]!r} both print as {name}"
            raise ValueError(f"thresholds: {t!r} {same} (column iters_to_{name}); give distinct values that "
                             f"differ within 6 significant digits")
        columns[name] = t
    cfg["thresholds"] = values
    cfg["divergence_factor"] = checks.number("divergence_factor", cfg["divergence_factor"], low=1.0, low_open=True,
                                             finite=False)
    cfg["loss_smoothing"] = checks.number("loss_smoothing", cfg["loss_smoothing"], low=0.0, high=1.0, high_open=True)
    if not isinstance(cfg["device"], str):
        raise ValueError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {cfg['device']!r}")
    cfg["download"] = _flag("download", cfg["download"])
    if cfg["data_dir"] is not None and not isinstance(cfg["data_dir"], (str, bytes)) and not hasattr(cfg["data_dir"], "__fspath__"):
        raise ValueError(f"data_dir must be a path, got {cfg['data_dir']!r}")
    for key in ("study", "label"):
        if cfg[key] is not None and not isinstance(cfg[key], str):
            raise ValueError(f"{key} must be a string, got {cfg[key]!r}")
    return cfg


def optimizer_hyperparameters(cfg: dict) -> dict:
    """Keyword arguments for sensitivity.optim.create, from a checked config."""
    hp = {"lr": cfg["lr"], "weight_decay": cfg["weight_decay"], **cfg["optimizer_args"]}
    if cfg["beta"] is not None:
        hp["beta"] = cfg["beta"]
    return hp
