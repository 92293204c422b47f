"""analysis.load / prepare: the parquet contract, display columns, and one-line errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from synthetic_results import generate, write

import analysis
from analysis import ResultsError


def test_load_returns_tables_with_display_columns(results_dir):
    trials, curves = analysis.load(results_dir)
    assert {"label", "variant", "series", "method"} <= set(trials.columns)
    assert set(trials["status"]) == {"ok", "diverged", "error"}
    assert {"trial_id", "epoch", "gamma_unit", "lr_global"} <= set(curves.columns)
    series = set(trials["series"])
    assert {"sgd", "sgd (step:2:0.5)", "sgdn", "adam", "sgd-hd", "adam-cam-hd-2level"} <= series
    # the combination-ratio entry sweeps gammas inside one label: one series per fixed γ, one method
    ratio = trials[trials["label"] == "adam-cam-hd-ratio"]
    assert ratio["series"].nunique() == 5 and set(ratio["method"]) == {"adam-cam-hd-ratio"}
    assert "adam-cam-hd-ratio [gammas=[0.25, 0.75]]" in series
    # per-seed columns (node, wall_time_s) never split a configuration
    assert trials.groupby(["series", "beta", "lr"], dropna=False).size().eq(3).all()


def test_gammas_as_strings_or_lists_give_the_same_series(tmp_path):
    as_list = analysis.prepare(generate(gammas_as="list")[0])
    as_text = analysis.prepare(generate(gammas_as="str")[0])
    assert sorted(as_list["series"]) == sorted(as_text["series"])
    assert analysis.prepare(pd.DataFrame({"optimizer": ["a", "a"], "gammas": ["[0.0, 1.0]", "(0.5, 0.5)"],
                                          "lr": [1, 1], "beta": None, "decay": None,
                                          "status": "ok"}))["variant"].tolist() == ["gammas=[0, 1]",
                                                                                   "gammas=[0.5, 0.5]"]


def test_label_falls_back_to_optimizer(tmp_path):
    trials, curves = generate(with_label=False)
    trials, _ = analysis.load(write(tmp_path / "nolabel", trials, curves))
    assert (trials["label"] == trials["optimizer"]).all()
    partial = analysis.prepare(pd.DataFrame({"optimizer": ["sgd", "adam"], "label": ["mine", None], "lr": [1, 1],
                                             "beta": None, "decay": None, "status": "ok"}))
    assert partial["label"].tolist() == ["mine", "adam"]


def test_decay_and_variant_make_the_series_name():
    trials = pd.DataFrame({
        "optimizer": ["sgd", "sgd", "sgd", "sgdn", "sgdn"], "lr": [0.1] * 5, "beta": [np.nan] * 5,
        "decay": [None, "step:25:0.5", "milestones:150:0.1", None, None], "status": "ok",
        "momentum": [np.nan, np.nan, np.nan, 0.9, 0.5], "node": ["a", "b", "c", "d", "e"]})
    out = analysis.prepare(trials)
    assert out["series"].tolist() == ["sgd", "sgd (step:25:0.5)", "sgd (milestones:150:0.1)",
                                      "sgdn [momentum=0.9]", "sgdn [momentum=0.5]"]
    assert out["method"].tolist() == ["sgd", "sgd (step:25:0.5)", "sgd (milestones:150:0.1)", "sgdn", "sgdn"]
    assert out["decay"].tolist()[0] is None


def test_missing_directory(tmp_path):
    with pytest.raises(ResultsError, match="results directory not found") as info:
        analysis.load(tmp_path / "nope")
    assert "\n" not in str(info.value) and isinstance(info.value, ValueError)


def test_load_takes_the_uris_that_storage_takes(results_dir, tmp_path, s3):
    trials, curves = analysis.load(results_dir)
    # the local S3 server (tests/conftest.py), spelt as for MinIO or Ceph; file:// with a query
    uri = s3.upload(results_dir, f"{tmp_path.name}/fixture")
    table = s3.uri(f"{tmp_path.name}/fixture/trials.parquet")
    for location in (uri, table, f"file://{results_dir}?unused=1"):
        got_trials, got_curves = analysis.load(location)
        pd.testing.assert_frame_equal(got_trials, trials)
        pd.testing.assert_frame_equal(got_curves, curves)
    missing = s3.uri(f"{tmp_path.name}/nothing")
    with pytest.raises(ResultsError, match="^results directory not found: s3://.*/nothing\\?endpoint_override="):
        analysis.load(missing)
    with pytest.raises(ResultsError, match="^cannot use s3://b/x\\?bogus=1: .*'bogus'; expected s3://bucket/path") as info:
        analysis.load("s3://b/x?bogus=1")
    assert "\n" not in str(info.value)
    with pytest.raises(ResultsError, match="^s3://b/x carries credentials before its bucket; set them") as info:
        analysis.load("s3://AKID:SECRETX@b/x")  # refused, and never printed: messages name locations
    assert "SECRETX" not in str(info.value) and "AKID" not in str(info.value)
    with pytest.raises(ResultsError, match="^s3://b/x carries credentials") as info:
        analysis.load("s3://AKID:QZX/QZY@b/x")  # a secret with a "/" (about half of AWS's have one)
    assert "QZ" not in str(info.value)


def test_a_home_relative_results_directory_keeps_its_figures_there(results_dir, tmp_path, monkeypatch):
    from analysis.location import figures_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    home_copy = tmp_path / "r"
    home_copy.mkdir()
    for name in ("trials.parquet", "curves.parquet"):
        (home_copy / name).write_bytes((results_dir / name).read_bytes())
    assert figures_dir("~/r") == home_copy / "figures"  # not ./~/r/figures
    assert len(analysis.load("~/r")[0]) == len(analysis.load(results_dir)[0])


def test_missing_trials_file(tmp_path):
    with pytest.raises(ResultsError, match="no trials.parquet"):
        analysis.load(tmp_path)


def test_corrupt_parquet(tmp_path):
    (tmp_path / "trials.parquet").write_bytes(b"not a parquet file")
    with pytest.raises(ResultsError, match="cannot read") as info:
        analysis.load(tmp_path)
    assert "\n" not in str(info.value)


def test_missing_columns_are_named(tmp_path, results_dir):
    trials = pd.read_parquet(results_dir / "trials.parquet").drop(columns=["seed", "status"])
    trials.to_parquet(tmp_path / "trials.parquet")
    with pytest.raises(ResultsError, match="lacks column\\(s\\) seed, status"):
        analysis.load(tmp_path)
    curves = pd.read_parquet(results_dir / "curves.parquet").drop(columns=["test_acc"])
    pd.read_parquet(results_dir / "trials.parquet").to_parquet(tmp_path / "trials.parquet")
    curves.to_parquet(tmp_path / "curves.parquet")
    with pytest.raises(ResultsError, match="curves.parquet lacks column\\(s\\) test_acc"):
        analysis.load(tmp_path)


def test_outcomes_no_trial_wrote_are_missing_values(tmp_path, results_dir):
    # rows of errored workers carry no accuracies: the loss figures still come from the rest
    trials = pd.read_parquet(results_dir / "trials.parquet").drop(columns=["best_test_acc", "final_test_acc"])
    trials.to_parquet(tmp_path / "trials.parquet")
    loaded, _ = analysis.load(tmp_path)
    assert loaded["best_test_acc"].isna().all() and loaded["final_test_acc"].isna().all()
    assert loaded["min_train_loss"].notna().any()


def test_all_errored_trials_name_the_first_error(tmp_path, results_dir):
    trials = pd.read_parquet(results_dir / "trials.parquet").head(3)
    trials = trials.drop(columns=["best_test_acc", "final_test_acc"]).assign(status="error")
    trials["error"] = ["FileNotFoundError: mnist: /data/MNIST/raw/train-images-idx3-ubyte\n not found", None, "x"]
    trials.to_parquet(tmp_path / "trials.parquet")
    with pytest.raises(ResultsError) as info:
        analysis.load(tmp_path)
    assert str(info.value) == ("all 3 trials errored: FileNotFoundError: mnist: "
                               "/data/MNIST/raw/train-images-idx3-ubyte not found")


def test_a_table_path_means_its_directory_and_smoke_comes_from_study_yaml(tmp_path, results_dir):
    trials = pd.read_parquet(results_dir / "trials.parquet")
    trials.to_parquet(tmp_path / "trials.parquet")
    loaded, _ = analysis.load(tmp_path / "trials.parquet")
    assert len(loaded) == len(trials) and not loaded["smoke"].any()  # no study.yaml: not a smoke run
    (tmp_path / "study.yaml").write_text("# resolved by sensitivity: smoke: true, trials: 4\nname: x\n")
    assert analysis.load(tmp_path)[0]["smoke"].all()
    (tmp_path / "study.yaml").write_text("# resolved by sensitivity: smoke: false, trials: 4\nname: x\n")
    assert not analysis.load(tmp_path)[0]["smoke"].any()


def test_bad_status_names_the_allowed_values(tmp_path, results_dir):
    trials = pd.read_parquet(results_dir / "trials.parquet")
    trials.loc[0, "status"] = "exploded"
    trials.to_parquet(tmp_path / "trials.parquet")
    with pytest.raises(ResultsError, match="status has exploded; allowed: ok, diverged, error"):
        analysis.load(tmp_path)


def test_empty_trials_and_missing_curves(tmp_path, results_dir):
    trials = pd.read_parquet(results_dir / "trials.parquet")
    trials.iloc[:0].to_parquet(tmp_path / "trials.parquet")
    with pytest.raises(ResultsError, match="has no finished trials yet"):
        analysis.load(tmp_path)
    trials.to_parquet(tmp_path / "trials.parquet")  # no curves.parquet: an empty curves table
    _, curves = analysis.load(tmp_path)
    assert curves.empty and {"trial_id", "epoch", "train_loss"} <= set(curves.columns)


def test_every_column_but_outcomes_and_bookkeeping_is_a_hyperparameter():
    from analysis.columns import is_hyperparameter

    for column in ("momentum", "betas", "d_coef", "growth_rate", "warmup_steps", "weight_lr_power", "init_eta",
                   "reps_rel", "use_bias_correction", "batch_size", "model_args", "lr", "beta", "decay"):
        assert is_hyperparameter(column), column
    for column in ("status", "min_train_loss", "final_test_acc", "best_test_acc", "init_test_loss", "final_lr",
                   "epochs_completed", "steps", "iters_to_0.5", "wall_time_s", "error", "trial_id", "study", "label",
                   "device", "node", "host", "round", "array_size", "array_id", "search_entry", "search_point",
                   "smoke", "seed", "series", "variant", "method", "_scratch"):
        assert not is_hyperparameter(column), column


def test_new_optimizers_hyperparameters_split_series_and_bookkeeping_never_does():
    rows = []
    for i, (d_coef, growth) in enumerate([(0.5, "inf"), (1.0, "inf"), (2.0, "inf")]):
        for seed in (0, 1):
            rows.append({"optimizer": "prodigy", "lr": 1.0, "beta": None, "decay": None, "status": "ok",
                         "seed": seed, "d_coef": d_coef, "growth_rate": growth, "betas": "[0.9, 0.999]",
                         "host": f"h{seed}", "node": f"n{i}{seed}", "array_id": f"a{i}{seed}", "array_size": 2 + seed,
                         "round": seed, "search_point": f'{{"d_coef": {d_coef}, "seed": {seed}}}',
                         "wall_time_s": 1.0 + seed, "device": "cuda" if seed else "cpu", "init_train_loss": 2.3})
    out = analysis.prepare(pd.DataFrame(rows))
    assert sorted(set(out["series"])) == ["prodigy [d_coef=0.5]", "prodigy [d_coef=1]", "prodigy [d_coef=2]"]
    assert out.groupby("series").size().eq(2).all()  # the seeds stay together


def test_older_rows_without_a_value_and_an_older_optimizer_name_do_not_split_a_label():
    # older tables: no momentum column value (the default was not written) and the alias sgd-hd;
    # newer rows: momentum filled in and the canonical sgd-hd-sgd; an errored row lacks the task options
    trials = pd.DataFrame({
        "optimizer": ["sgd-hd", "sgd-hd-sgd", "sgd-hd-sgd", "sgd-hd-sgd"], "label": "sgd-hd",
        "lr": [0.1, 0.1, 0.01, 0.01], "beta": 1e-4, "decay": None, "status": ["ok", "ok", "ok", "error"],
        "seed": [0, 1, 0, 1], "momentum": [None, 0.0, 0.0, 0.0], "train_fraction": [1.0, 1.0, 1.0, None]})
    out = analysis.prepare(trials)
    assert set(out["series"]) == {"sgd-hd"} and set(out["variant"]) == {""}
    # two values set besides a missing one do split, and the missing one shows as None
    trials.loc[2:, "momentum"] = 0.9
    assert sorted(set(analysis.prepare(trials)["variant"])) == ["momentum=0", "momentum=0.9", "momentum=None"]


def test_a_null_setting_beside_a_value_at_the_same_points_is_a_variant_of_its_own():
    """lr_max: [null, 0.05] over the same α0 and seeds: two configurations, two series of 2 seeds each
    (a null there is a setting, not a value an older table left out)."""
    trials = pd.DataFrame([{"optimizer": "sgd-hd", "lr": lr, "beta": 1e-4, "decay": None, "status": "ok", "seed": seed,
                            "lr_max": lr_max, "min_train_loss": 1.0, "min_test_loss": 1.1}
                           for lr in (0.01, 0.1, 1.0) for lr_max in (None, 0.05) for seed in (0, 1)])
    out = analysis.prepare(trials)
    assert sorted(set(out["series"])) == ["sgd-hd [lr_max=0.05]", "sgd-hd [lr_max=None]"]
    assert out.groupby(["series", "lr"]).size().eq(2).all()
    table = analysis.sensitivity_table(trials)
    assert sorted(set(table["series"])) == ["sgd-hd [lr_max=0.05]", "sgd-hd [lr_max=None]"]
    frame = analysis.axes.axis_frame(trials, "lr")
    assert frame.groupby("line").size().eq(6).all() and frame["line"].nunique() == 2


def test_an_older_errored_row_without_task_options_does_not_split_a_two_axis_label():
    """sgd over lr × weight_decay; one older errored row lacks batch_size. Another row at its α0 and seed
    (at another weight decay) is not the same point, so the missing cell is no setting of its own."""
    rows = [{"optimizer": "sgd", "lr": lr, "beta": None, "decay": None, "seed": seed, "weight_decay": wd,
             "batch_size": 64, "status": "ok", "min_train_loss": 1.0, "min_test_loss": 1.1}
            for lr in (0.01, 0.1) for wd in (0.0, 1e-4) for seed in range(3)]
    rows[-1].update(batch_size=None, status="error")
    out = analysis.prepare(pd.DataFrame(rows))
    assert sorted(set(out["series"])) == ["sgd [weight_decay=0.0001]", "sgd [weight_decay=0]"]
    assert out.groupby("series").size().eq(6).all()
