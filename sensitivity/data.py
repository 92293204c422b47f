"""Datasets as tensors on the training device, loaded once per process.

A :class:`Data` holds the whole train and test split as float tensors already on
the device, normalised per channel with the training split's mean and std.
Training draws minibatches by indexing these tensors with a ``torch.randperm``
made on the device (no DataLoader, no worker processes), and augmentation is a
batched tensor op (:func:`augment`).

Datasets:

- ``digits``: scikit-learn's bundled 8x8 digits, split 80/20 (stratified, fixed seed).
- ``mnist``, ``cifar10``, ``svhn``: read from their usual on-disk formats under the
  data root (``data_dir``, else ``$SENSITIVITY_DATA``, else ``~/.cache/sensitivity``);
  ``download=True`` lets torchvision fetch them into that root.
- ``synthetic``: class-conditional Gaussian data of any shape (tests, benchmarks, smoke runs).
"""

from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from . import checks
from .spec import DATASETS, FILES as _FILES, check_dataset_args, data_root, dataset_info

__all__ = [
    "DATASETS", "Data", "dataset_info", "check_dataset_args", "data_root", "load",
    "clear_cache", "train_subset", "augment",
]

@dataclass(frozen=True)
class Data:
    """One dataset on one device: normalised float inputs, int64 labels."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    pad_value: torch.Tensor  # (C,) a black pixel after normalisation, per channel (augmentation padding)


# ---------------------------------------------------------------------------
# validation


# ---------------------------------------------------------------------------
# readers: each returns uint8/float images (N, C, H, W) and int64 labels per split, on the CPU


DIGITS_CACHE = "digits-split-v1.npz"  # under the data root: the split below, so later processes skip scikit-learn


def _digits():
    """scikit-learn's digits with a stratified 80/20 split (fixed seed). The split is kept under the
    data root once made: importing scikit-learn costs every fresh worker process about 2 s."""
    cache = data_root() / "digits" / DIGITS_CACHE
    try:
        with np.load(cache) as saved:
            x, y, itr, ite = saved["x"], saved["y"], saved["train"], saved["test"]
    except (OSError, KeyError, ValueError):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        bunch = load_digits()
        x, y = bunch.images.astype(np.float32), bunch.target.astype(np.int64)
        itr, ite = (np.asarray(i) for i in train_test_split(range(len(y)), test_size=0.2, random_state=0,
                                                            stratify=bunch.target))
        _save_quietly(cache, x=x, y=y, train=itr, test=ite)
    x = torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1) / 16.0  # pixels are 0..16
    y = torch.from_numpy(np.ascontiguousarray(y))
    itr, ite = torch.from_numpy(itr), torch.from_numpy(ite)
    return x[itr], y[itr], x[ite], y[ite]


def _save_quietly(path: Path, **arrays) -> None:
    """Write an .npz atomically (temp file, rename); a cache that cannot be written is no error."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass


def _missing(name: str, root: Path) -> list[Path]:
    sub, files = _FILES[name]
    return [root / sub / f for f in files if not (root / sub / f).is_file()]


def _ensure_files(name: str, root: Path, download: bool) -> None:
    missing = _missing(name, root)
    if not missing:
        return
    if not download:
        raise FileNotFoundError(
            f"{name}: {missing[0]} not found; put the {name} files under {root / _FILES[name][0]}"
            f" (set data_dir or $SENSITIVITY_DATA to the folder that has them) or set download: true"
        )
    import torchvision.datasets as tvd

    root.mkdir(parents=True, exist_ok=True)
    if name == "mnist":
        tvd.MNIST(str(root), train=True, download=True)
    elif name == "cifar10":
        tvd.CIFAR10(str(root), train=True, download=True)
    else:
        for split in ("train", "test"):
            tvd.SVHN(str(root), split=split, download=True)


def _mnist(root: Path):
    import torchvision.datasets as tvd

    # torchvision reads the idx files (it checks only that they exist)
    train, test = tvd.MNIST(str(root), train=True), tvd.MNIST(str(root), train=False)
    return train.data.unsqueeze(1), train.targets.long(), test.data.unsqueeze(1), test.targets.long()


def _cifar10(root: Path):
    # Read the python pickles directly: torchvision's CIFAR10 md5-checks every file,
    # which would reject anything but the official archive (tests write tiny batches).
    folder = root / _FILES["cifar10"][0]

    def read(files):
        xs, ys = [], []
        for f in files:
            with open(folder / f, "rb") as handle:
                entry = pickle.load(handle, encoding="latin1")
            xs.append(torch.as_tensor(entry["data"], dtype=torch.uint8).reshape(-1, 3, 32, 32))
            ys.append(torch.as_tensor(entry.get("labels", entry.get("fine_labels")), dtype=torch.int64))
        return torch.cat(xs), torch.cat(ys)

    return (*read(_FILES["cifar10"][1][:5]), *read(_FILES["cifar10"][1][5:]))


def _svhn(root: Path):
    # scipy's loadmat, as torchvision's SVHN does, minus its md5 check (see _cifar10)
    from scipy.io import loadmat

    out = []
    for f in _FILES["svhn"][1]:
        mat = loadmat(str(root / f))
        x = torch.as_tensor(mat["X"], dtype=torch.uint8).permute(3, 2, 0, 1).contiguous()  # HWCN -> NCHW
        y = torch.as_tensor(mat["y"].astype("int64")).reshape(-1)
        out += [x, torch.where(y == 10, 0, y)]  # SVHN labels the digit 0 as 10
    return tuple(out)


def _synthetic(args: Mapping[str, Any]):
    """Class-conditional Gaussians: x = mu_y + noise, with |mu_c| about 3 (overlapping, learnable)."""
    shape, classes = tuple(args["shape"]), int(args["num_classes"])
    dim = math.prod(shape)
    gen = torch.Generator().manual_seed(int(args["seed"]))
    means = torch.randn(classes, dim, generator=gen) * (3.0 / math.sqrt(dim))

    def split(n):
        y = torch.randint(0, classes, (n,), generator=gen)
        x = means[y] + torch.randn(n, dim, generator=gen)
        return x.reshape(n, *shape), y

    return (*split(int(args["train_size"])), *split(int(args["test_size"])))


# ---------------------------------------------------------------------------
# loading


_CACHE: dict[tuple, Data] = {}


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def clear_cache() -> None:
    """Forget every loaded dataset (frees its device memory once unreferenced)."""
    _CACHE.clear()


def load(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    dataset_args: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    download: bool = False,
) -> Data:
    """Dataset `name` as tensors on `device`; cached per (name, root, args, device) in this process."""
    args = check_dataset_args(name, dataset_args)
    device = torch.device(device)
    root = data_root(data_dir) if name in _FILES else None
    key = (name, str(root), _freeze(args), str(device))
    if key in _CACHE:
        return _CACHE[key]

    if name == "digits":
        parts = _digits()
    elif name == "synthetic":
        parts = _synthetic(args)
    else:
        _ensure_files(name, root, download)
        parts = {"mnist": _mnist, "cifar10": _cifar10, "svhn": _svhn}[name](root)
    train_x, train_y, test_x, test_y = parts
    for key_, n, have in (("train_size", args.get("train_size"), len(train_y)),
                          ("test_size", args.get("test_size"), len(test_y))):
        if n is not None and n > have and name != "synthetic":
            raise ValueError(f"dataset_args.{key_}: {n} is more than the {have} examples {name} has")
    if "train_size" in args:
        train_x, train_y = train_x[: args["train_size"]], train_y[: args["train_size"]]
    if "test_size" in args:
        test_x, test_y = test_x[: args["test_size"]], test_y[: args["test_size"]]

    # convert on the device: uint8 travels 4x lighter than float32
    train_x, test_x = train_x.to(device), test_x.to(device)
    scale = 255.0 if train_x.dtype == torch.uint8 else 1.0
    train_x, test_x = train_x.float().div_(scale), test_x.float().div_(scale)
    if train_x.dim() == 4:  # per-channel statistics of the training split
        dims = (0, 2, 3)
        mean = train_x.mean(dim=dims, keepdim=True)
        std = train_x.std(dim=dims, keepdim=True, correction=0).clamp_min(1e-6)  # a 1-example split stays finite
    else:  # feature vectors / sequences: one mean and std overall
        mean, std = train_x.mean(), train_x.std(correction=0).clamp_min(1e-6)
    pad_value = (-mean / std).flatten()
    train_x, test_x = train_x.sub_(mean).div_(std), test_x.sub_(mean).div_(std)

    shape, classes = dataset_info(name, args)
    data = Data(
        name=name, train_x=train_x.contiguous(), train_y=train_y.to(device).long(),
        test_x=test_x.contiguous(), test_y=test_y.to(device).long(),
        input_shape=tuple(shape), num_classes=int(classes), pad_value=pad_value,
    )
    if tuple(data.train_x.shape[1:]) != data.input_shape:
        raise ValueError(f"{name}: files under {root} hold inputs of shape {tuple(data.train_x.shape[1:])},"
                         f" expected {data.input_shape}")
    _CACHE[key] = data
    return data


def train_subset(data: Data, fraction: float) -> Data:
    """The same data with a fixed random `fraction` of the training split (same for every seed)."""
    fraction = checks.number("train_fraction", fraction, low=0, high=1, low_open=True)
    if fraction == 1.0:
        return data
    n = len(data.train_y)
    k = max(1, round(fraction * n))
    # a fixed generator: every seed and optimizer trains on the same subset
    keep = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:k].sort().values.to(data.train_x.device)
    return replace(data, train_x=data.train_x[keep], train_y=data.train_y[keep])


def augment(x: torch.Tensor, generator: torch.Generator, pad_value: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random crop (after `pad` px of padding) and horizontal flip of an image batch (N, C, H, W).

    The padding is `pad_value` per channel (black after normalisation, as torchvision's
    RandomCrop before Normalize; a (C,) tensor on x's device), and all randomness comes from
    `generator` (on x's device), three draws per batch.
    """
    n, c, h, w = x.shape
    padded = x.new_empty(n, c, h + 2 * pad, w + 2 * pad)
    padded[:] = pad_value.view(1, -1, 1, 1)  # a device tensor: no host-to-device copy per batch
    padded[:, :, pad:pad + h, pad:pad + w] = x
    dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=x.device)
    flip = torch.rand(n, 1, generator=generator, device=x.device) < 0.5
    rows = dy + torch.arange(h, device=x.device)
    cols = dx + torch.arange(w, device=x.device)
    cols = torch.where(flip, cols.flip(1), cols)  # a flip reads the crop's columns backwards
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chan = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, chan, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
