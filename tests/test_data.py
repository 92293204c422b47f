"""sensitivity.data: every loader on tiny files in each dataset's own on-disk format.

Budget: the whole file runs in about 10 s on one busy core.
"""

import math
import pickle
import struct

import numpy as np
import pytest
import torch

from sensitivity import data as D
from sensitivity import models as M
from sensitivity.train import run_trial


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _fresh_cache():
    D.clear_cache()
    yield
    D.clear_cache()


# ---------------------------------------------------------------------------
# writers of tiny files in the real formats


def _idx(path, array, magic_type=0x08):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", (magic_type << 8) | array.ndim) + b"".join(struct.pack(">I", s) for s in array.shape)
    path.write_bytes(header + array.tobytes())


def write_mnist(root, n_train=12, n_test=6, seed=0):
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        _idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        out[prefix] = (images, labels)
    return out


def write_cifar10(root, per_batch=2, n_test=4, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        images = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": images, "labels": labels, "batch_label": name}, f)
        out[name] = (images, labels)
    return out


def write_svhn(root, n_train=6, n_test=4, seed=0):
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # SVHN stores H, W, C, N
        y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)  # labels 1..10, 10 meaning digit 0
        savemat(str(root / f"{split}_32x32.mat"), {"X": x, "y": y})
        out[split] = (x, y)
    return out


# ---------------------------------------------------------------------------
# loaders


def test_digits_split_and_normalisation():
    d = D.load("digits")
    assert d.train_x.shape == (1437, 1, 8, 8) and d.test_x.shape == (360, 1, 8, 8)
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    assert d.train_y.dtype == torch.int64 and set(d.train_y.tolist()) == set(range(10))
    assert abs(d.train_x.mean().item()) < 1e-4 and abs(d.train_x.std(correction=0).item() - 1) < 1e-4
    again = D.load("digits")
    assert again is d  # loaded once per process
    D.clear_cache()
    fresh = D.load("digits")
    assert fresh is not d and torch.equal(fresh.train_x, d.train_x)  # a fixed split


def test_mnist_reads_idx_files(tmp_path):
    written = write_mnist(tmp_path)
    d = D.load("mnist", data_dir=tmp_path)
    assert d.train_x.shape == (12, 1, 28, 28) and d.test_x.shape == (6, 1, 28, 28)
    assert d.train_y.tolist() == written["train"][1].tolist()
    # the pixels survive up to the affine normalisation: same ordering, exact after the inverse map
    raw = torch.tensor(written["train"][0], dtype=torch.float32) / 255
    mean, std = raw.mean(), raw.std(correction=0)
    assert torch.allclose(d.train_x[:, 0] * std + mean, raw, atol=1e-5)
    assert torch.allclose(d.test_x[:, 0] * std + mean, torch.tensor(written["t10k"][0], dtype=torch.float32) / 255,
                          atol=1e-5)
    assert torch.allclose(d.pad_value, -mean / std)


def test_data_root_from_environment(tmp_path, monkeypatch):
    write_mnist(tmp_path / "env")
    monkeypatch.setenv("SENSITIVITY_DATA", str(tmp_path / "env"))
    assert D.data_root() == (tmp_path / "env").resolve()
    assert D.load("mnist").train_x.shape[0] == 12
    assert D.data_root(tmp_path / "explicit") == (tmp_path / "explicit").resolve()


def test_cifar10_reads_pickled_batches(tmp_path):
    written = write_cifar10(tmp_path)
    d = D.load("cifar10", data_dir=tmp_path)
    assert d.train_x.shape == (10, 3, 32, 32) and d.test_x.shape == (4, 3, 32, 32)
    expected = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert d.train_y.tolist() == expected
    raw = torch.tensor(np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)]),
                       dtype=torch.float32).reshape(-1, 3, 32, 32) / 255
    mean = raw.mean(dim=(0, 2, 3), keepdim=True)
    std = raw.std(dim=(0, 2, 3), keepdim=True, correction=0)
    assert torch.allclose(d.train_x * std + mean, raw, atol=1e-5)  # channel-major layout kept


def test_svhn_reads_mat_files(tmp_path):
    written = write_svhn(tmp_path)
    d = D.load("svhn", data_dir=tmp_path)
    assert d.train_x.shape == (6, 3, 32, 32) and d.test_x.shape == (4, 3, 32, 32)
    assert d.train_y.tolist() == [1, 2, 3, 4, 5, 6] and d.test_y.tolist() == [1, 2, 3, 4]
    x = written["train"][0]
    raw = torch.tensor(x, dtype=torch.float32).permute(3, 2, 0, 1) / 255  # H W C N -> N C H W
    mean, std = raw.mean(dim=(0, 2, 3), keepdim=True), raw.std(dim=(0, 2, 3), keepdim=True, correction=0)
    assert torch.allclose(d.train_x * std + mean, raw, atol=1e-5)


def test_svhn_label_ten_is_digit_zero(tmp_path):
    from scipy.io import savemat

    for split in ("train", "test"):
        savemat(str(tmp_path / f"{split}_32x32.mat"),
                {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[10], [3]], np.uint8)})
    assert D.load("svhn", data_dir=tmp_path).train_y.tolist() == [0, 3]


@pytest.mark.parametrize("name", ["mnist", "cifar10", "svhn"])
def test_missing_dataset_is_one_line(tmp_path, name):
    with pytest.raises(FileNotFoundError) as info:
        D.load(name, data_dir=tmp_path / "nowhere")
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "nowhere") in message and "download: true" in message


def test_dataset_sizes_and_args(tmp_path):
    write_mnist(tmp_path)
    d = D.load("mnist", data_dir=tmp_path, dataset_args={"train_size": 5, "test_size": 2})
    assert len(d.train_y) == 5 and len(d.test_y) == 2
    with pytest.raises(ValueError, match="dataset_args.train_size"):
        D.load("mnist", data_dir=tmp_path, dataset_args={"train_size": 13})
    with pytest.raises(ValueError, match="dataset_args.shape"):
        D.check_dataset_args("mnist", {"shape": [1, 2]})
    with pytest.raises(ValueError, match="dataset_args.train_size"):
        D.check_dataset_args("digits", {"train_size": 0})
    with pytest.raises(ValueError, match="dataset"):
        D.dataset_info("imagenet")


def test_synthetic_is_seeded_and_shaped():
    args = {"shape": [3, 4, 4], "num_classes": 3, "train_size": 30, "test_size": 9, "seed": 1}
    assert D.dataset_info("synthetic", args) == ((3, 4, 4), 3)
    a = D.load("synthetic", dataset_args=args)
    D.clear_cache()
    b = D.load("synthetic", dataset_args=args)
    assert a.train_x.shape == (30, 3, 4, 4) and a.test_y.shape == (9,)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    c = D.load("synthetic", dataset_args={**args, "seed": 2})
    assert not torch.equal(a.train_x, c.train_x)
    flat = D.load("synthetic", dataset_args={"shape": [5]})
    assert flat.train_x.shape == (1000, 5) and D.dataset_info("synthetic") == ((1, 8, 8), 10)
    for name in ("digits", "mnist", "cifar10", "svhn"):
        assert D.dataset_info(name)[1] == 10


def test_train_subset_is_fixed():
    d = D.load("digits")
    s = D.train_subset(d, 0.1)
    assert len(s.train_y) == round(0.1 * 1437) and torch.equal(s.test_x, d.test_x)
    assert torch.equal(D.train_subset(d, 0.1).train_x, s.train_x)
    assert D.train_subset(d, 1.0) is d
    with pytest.raises(ValueError, match="train_fraction"):
        D.train_subset(d, 0.0)


def test_augment_crops_and_flips_on_the_batch():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    pad_value = torch.tensor([-1.0, -2.0, -3.0])
    gen = torch.Generator().manual_seed(0)
    outs = [D.augment(x, gen, pad_value, pad=2) for _ in range(20)]
    for out in outs:
        assert out.shape == x.shape
        for i in range(2):
            padded = torch.nn.functional.pad(x[i] - pad_value.view(3, 1, 1), (2, 2, 2, 2)) + pad_value.view(3, 1, 1)
            windows = [padded[:, r:r + 5, c:c + 5] for r in range(5) for c in range(5)]
            windows += [w.flip(2) for w in windows]
            assert any(torch.equal(out[i], w) for w in windows)  # a crop of the padded image, maybe mirrored
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    again = torch.Generator().manual_seed(0)
    assert torch.equal(D.augment(x, again, pad_value, pad=2), outs[0])  # the generator decides


# ---------------------------------------------------------------------------
# every dataset x model pair that makes sense trains one step


def _fits(model, shape):
    try:
        M.check_input(model, shape)
    except ValueError:
        return False
    return True


_PAIRS = [(ds, m) for ds in ("digits", "mnist", "cifar10", "svhn", "synthetic") for m in M.MODELS
          if _fits(m, (3, 32, 32) if ds == "synthetic" and m in ("vgg16",) else D.dataset_info(ds)[0])]


@pytest.fixture(scope="module")
def _files(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    write_mnist(root, n_train=4, n_test=4)
    write_cifar10(root, per_batch=1, n_test=4)
    write_svhn(root, n_train=4, n_test=4)
    return root


@pytest.mark.parametrize("dataset,model", _PAIRS)
def test_every_dataset_model_pair_trains_one_step(_files, dataset, model):
    args = {"train_size": 4, "test_size": 4}
    if dataset == "synthetic":
        args["shape"] = [1, 28, 28] if model == "lenet5" else [3, 32, 32] if model == "vgg16" else [1, 8, 8]
    config = {"dataset": dataset, "model": model, "optimizer": "sgd", "lr": 0.01, "batch_size": 4, "epochs": 1,
              "dataset_args": args, "data_dir": str(_files), "augment": dataset in ("cifar10", "svhn")}
    result = run_trial(config)
    assert result.row["status"] == "ok" and result.row["steps"] == 1
    assert math.isfinite(result.row["min_train_loss"]) and math.isfinite(result.row["min_test_loss"])
    assert [c["epoch"] for c in result.curve] == [1]


def test_pairs_cover_every_dataset_and_model():
    assert {d for d, _ in _PAIRS} == set(D.DATASETS) and {m for _, m in _PAIRS} == set(M.MODELS)
    assert ("digits", "vgg16") not in _PAIRS and ("mnist", "vgg16") not in _PAIRS


def test_digits_split_is_kept_so_later_processes_skip_scikit_learn(tmp_path, monkeypatch):
    import sys

    from sensitivity import data as datamod

    monkeypatch.setenv("SENSITIVITY_DATA", str(tmp_path))
    first = datamod._digits()
    assert (tmp_path / "digits" / datamod.DIGITS_CACHE).is_file()
    monkeypatch.setitem(sys.modules, "sklearn", None)  # importing scikit-learn now fails
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    again = datamod._digits()
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(first, again))
    assert [len(p) for p in again] == [1437, 1437, 360, 360]
