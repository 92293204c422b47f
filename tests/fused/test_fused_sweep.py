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
    lenet = [TrialRecord.from_config({**c.config(), "dataset": "synthetic", "dataset_args": {"shape": [1, 12, 12]},
                                      "model": "lenet5", "model_args": {}}) for c in configs]
    assert plan.cut(lenet, "auto")[0] == [] and len(plan.cut(lenet, 4)[0]) == 4


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
