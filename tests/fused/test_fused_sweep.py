"""Fused arrays in sweeps: cutting by fusion key, grid and Optuna runs, study `fuse:` and --fuse."""

from __future__ import annotations

import pandas as pd
import pytest

from sensitivity.fused import plan
from sensitivity.record import TrialRecord
from sensitivity.results import trial_id
from sensitivity.study import Study, StudyError
from sensitivity.sweep import run_study

TASK = {"dataset": "digits", "model": "mlp", "model_args": {"hidden": [16]}, "batch_size": 64, "epochs": 2,
        "device": "cpu"}


def _study(fuse, **extra) -> Study:
    return Study.from_dict({"name": "fused", "task": TASK, "seeds": 2, "fuse": fuse, **extra, "optimizers": [
        {"name": "sgd", "lr": [0.01, 0.1, 1.0e4]},
        {"name": "sgd", "lr": [0.1], "decay": {"every_epochs": 1, "factor": 0.5}},
        {"name": "adam-hd", "lr": [1.0e-3, 1.0e-2], "beta": [1.0e-7, 1.0e-5]},
    ]})


def test_cut_groups_by_fusion_key_and_caps():
    configs = _study("auto").trials()
    arrays, solo = plan.cut(configs, "auto", slots=1)
    assert not solo and len(arrays) == 2  # sgd with and without decay share one array; adam-hd another
    assert sorted(len(a) for a in arrays) == [8, 8]
    assert {c.optimizer for c in arrays[0]} in ({"sgd"}, {"adam-hd-sgd"})
    capped, solo = plan.cut(configs, 3, slots=1)
    assert all(2 <= len(a) <= 3 for a in capped) and not solo
    assert sorted(trial_id(c) for a in capped for c in a) == sorted(trial_id(c) for c in configs)
    assert plan.cut(configs, "off") == ([], configs)
    wide = [TrialRecord.from_config({**c.config(), "model_args": {"hidden": [1000, 1000]}, "device": "auto"})
            for c in configs]
    assert plan.cut(wide, "auto")[0] == []  # auto: a compute-bound model does not fuse on a CPU
    assert len(plan.cut(wide, "auto", gpus=1)[0]) == 2  # ... but it does on the workers' GPUs
    lenet = [TrialRecord.from_config({**c.config(), "dataset": "synthetic", "dataset_args": {"shape": [3, 32, 32]},
                                      "model": "lenet5", "model_args": {}, "batch_size": 256}) for c in configs]
    assert plan.cut(lenet, "auto")[0] == [] and len(plan.cut(lenet, 4)[0]) == 4


def _record(model: str, shape: list[int], batch: int, hidden: list[int] | None = None) -> TrialRecord:
    return TrialRecord.from_config({"dataset": "synthetic", "dataset_args": {"shape": shape}, "model": model,
                                    "model_args": {"hidden": hidden} if hidden else {}, "batch_size": batch,
                                    "optimizer": "sgd", "lr": 0.1, "device": "cpu"})


@pytest.mark.parametrize("model, shape, batch, hidden, fuses", [
    ("mlp", [1, 8, 8], 64, [64], True),  # the quickstart's task
    ("logreg", [1, 28, 28], 128, None, True),
    ("mlp", [1, 28, 28], 32, [100, 100], True),
    ("mlp", [1, 28, 28], 128, [100, 100], True),
    ("mlp", [1, 28, 28], 32, [256, 256], True),  # the MNIST MLP 256x256 (270k parameters) auto once ran alone
    ("mlp", [1, 28, 28], 64, [256, 256], False),  # 17M multiply-adds a step, for 270k parameters
    ("mlp", [1, 28, 28], 128, [256, 256], False),
    ("mlp", [1, 28, 28], 128, [1000, 1000], False),
    ("mlp", [1, 28, 28], 4, [1000, 1000], False),  # a small step, but 3 members fill an array's bytes
    ("lenet5", [1, 28, 28], 32, None, True),
    ("lenet5", [3, 32, 32], 128, None, True),
    ("lenet5", [1, 28, 28], 256, None, False),  # 2 members fill an array's bytes
    ("vgg16", [3, 32, 32], 32, None, False),
    ("resnet18", [3, 32, 32], 32, None, False),
])
def test_auto_fuses_on_a_cpu_where_the_benchmark_shows_it_pays(model, shape, batch, hidden, fuses):
    record = _record(model, shape, batch, hidden)
    assert plan.pays(record, "cpu") is fuses and plan.pays(record, "cuda")


def test_step_macs_count_linear_and_convolution_layers():
    assert plan.step_macs(_record("mlp", [1, 28, 28], 128, [256, 256])) == 128 * (784 * 256 + 256 * 256 + 256 * 10)
    conv = 28 * 28 * 6 * 25 + 10 * 10 * 16 * 6 * 25  # LeNet-5 pads MNIST to 32x32: 28x28x6 out, then 10x10x16
    assert plan.step_macs(_record("lenet5", [1, 28, 28], 32)) == 32 * (conv + 400 * 120 + 120 * 84 + 84 * 10)


def test_auto_cuts_smaller_arrays_on_a_cpu_where_a_large_one_would_be_slower():
    """64 trials of LeNet-5 on CIFAR-10 shapes at batch 64 (about 8.5 MiB a member): arrays of 32 ran at
    0.90x solo on a CPU, of 16 at 1.09x, of 8 at 1.38x; on a GPU they stay one array."""
    record = _record("lenet5", [3, 32, 32], 64)
    cap = plan.auto_cap(record, "cpu")
    assert plan.CPU_MIN_MEMBERS <= cap <= 12 and plan.auto_cap(record, "cuda") == plan.AUTO_MAX
    records = [TrialRecord.from_config({**record.config(), "lr": 0.01 * (1 + k), "device": "auto"}) for k in range(64)]
    arrays, solo = plan.cut(records, "auto", slots=1)
    assert not solo and len(arrays) == -(-64 // cap) and max(len(a) for a in arrays) <= cap
    assert [len(a) for a in plan.cut(records, "auto", slots=1, gpus=1)[0]] == [64]
    assert [len(a) for a in plan.cut(records, 64, slots=1)[0]] == [64]  # an explicit N is the user's


def test_fuse_setting_is_checked():
    with pytest.raises(StudyError, match="fuse"):
        _study(0)
    with pytest.raises(StudyError, match="fuse"):
        _study("always")
    study = _study("off")
    with pytest.raises(StudyError, match="--fuse"):
        study.set_fuse("sometimes")
    study.set_fuse("4")
    assert study.fuse == 4


def test_a_bare_yaml_off_means_off(tmp_path):
    from sensitivity.study import load_study

    path = tmp_path / "s.yaml"
    path.write_text("name: s\ntask: {dataset: digits, model: mlp}\nfuse: off\noptimizers:\n  - {name: sgd}\n")
    assert load_study(path).fuse == "off"  # YAML 1.1 reads `off` as false
    path.write_text(path.read_text().replace("fuse: off", "fuse: on"))
    with pytest.raises(StudyError, match="fuse"):
        load_study(path)


@pytest.mark.slow
def test_grid_study_runs_arrays_exactly_once_then_resumes(tmp_path, ray_local):
    study = _study("auto")
    summary = run_study(study, out=tmp_path, quiet=True)
    trials = pd.read_parquet(tmp_path / "fused" / "trials.parquet")
    curves = pd.read_parquet(tmp_path / "fused" / "curves.parquet")
    assert summary.missing == 0 and summary.ran == 16 and len(trials) == 16 and trials["trial_id"].is_unique
    assert set(trials["trial_id"]) == {trial_id(c) for c in study.trials()}
    assert (trials["array_size"] == 8).all() and trials["array_id"].nunique() == 2
    assert summary.fused == 16 and summary.arrays == 2
    assert set(trials.loc[trials["lr"] == 1.0e4, "status"]) == {"diverged"}
    per_trial = curves.groupby("trial_id").size()
    completed = trials.set_index("trial_id")["epochs_completed"]
    assert (per_trial.reindex(completed.index, fill_value=0) == completed).all()
    again = run_study(study, out=tmp_path, quiet=True)
    assert again.ran == 0


@pytest.mark.slow
def test_optuna_point_runs_its_seeds_as_one_array(tmp_path, ray_local):
    study = Study.from_dict({
        "name": "optuna-fused", "task": {**TASK, "epochs": 1}, "seeds": 3, "fuse": "auto",
        "optimizers": [{"name": "sgd"}],
        "search": {"trials": 2, "sampler": "random", "space": {"lr": {"low": 0.01, "high": 1.0, "log": True}}}})
    summary = run_study(study, out=tmp_path, quiet=True)
    trials = pd.read_parquet(tmp_path / "optuna-fused" / "trials.parquet")
    assert summary.missing == 0 and len(trials) == 6 and trials["trial_id"].is_unique
    assert (trials["array_size"] == 3).all()
    assert (trials.groupby("search_point")["array_id"].nunique() == 1).all()


def test_cli_rejects_a_bad_fuse_before_ray(tmp_path, capsys):
    import yaml

    from sensitivity.cli import main

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "task": TASK, "optimizers": [{"name": "sgd"}]}))
    assert main(["run", str(path), "--fuse", "0", "--out", str(tmp_path)]) == 2
    assert "--fuse" in capsys.readouterr().err


def test_the_plan_follows_the_workers_not_the_driver(monkeypatch):
    """A CPU head planning for GPU workers (the cluster.yaml layout): the driver never asks its own
    torch about CUDA; `auto` fuses by the kind of device the workers train on, which the study's
    resources say; a trial pinned to cuda is bad input only where no node of the cluster has a GPU."""
    import torch

    from sensitivity.preflight import plan_run
    from sensitivity.results import ResultsStore
    from sensitivity.sweep import driver

    def no_cuda(*args, **kwargs):
        raise AssertionError("the driver asked its own torch about CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", no_cuda)
    monkeypatch.setattr(torch.cuda, "mem_get_info", no_cuda)
    wide = {**TASK, "model_args": {"hidden": [1000, 1000]}}
    pinned = Study.from_dict({"name": "gpu", "task": {**wide, "device": "cuda"}, "seeds": 2, "fuse": "auto",
                              "resources": {"cpu": 1, "gpu": 1}, "optimizers": [{"name": "sgd", "lr": [0.01, 0.1]}]})
    arrays, solo = plan.cut(pinned.trials(), "auto", slots=1, gpus=1)
    assert len(arrays) == 1 and len(arrays[0]) == 4 and not solo  # cuda workers: every model fuses
    anywhere = [TrialRecord.from_config({**r.config(), "device": "auto"}) for r in pinned.trials()]
    assert len(plan.cut(anywhere, "auto", slots=1, gpus=1)[0]) == 1  # auto on GPU workers: as on cuda
    assert plan.cut(anywhere, "auto", slots=1, gpus=0)[0] == []  # auto on CPU workers: this MLP runs alone

    store = ResultsStore("/nonexistent/never-written")
    run_plan = plan_run(pinned, store, write=False)
    monkeypatch.setattr(driver, "launchable", lambda: {})
    monkeypatch.setattr(driver, "cluster_totals", lambda: (16.0, 4.0, 8.0, 1.0))  # CPU head, GPU workers
    driver.check_devices(pinned, run_plan)
    monkeypatch.setattr(driver, "cluster_totals", lambda: (2.0, 0.0, 2.0, 0.0))  # a laptop
    with pytest.raises(StudyError, match=r"^task\.device: cuda and resources\.gpu: 1 ask for a GPU but no node of the Ray"):
        driver.check_devices(pinned, run_plan)
