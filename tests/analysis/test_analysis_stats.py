"""Each statistic against a hand-built frame (assert_frame_equal), seaborn's way."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

import analysis

INF, NAN = math.inf, math.nan


def trial(optimizer, lr, seed, status, train, test=None, *, beta=None, decay=None, **extra):
    test = train if test is None else test
    return dict(trial_id=f"{optimizer}-{lr}-{beta}-{decay}-{seed}-{extra}", optimizer=optimizer, lr=lr, beta=beta,
                decay=decay, seed=seed, status=status, min_train_loss=train, min_test_loss=test, **extra)


@pytest.fixture
def trials():
    """sgd with an errored seed and a diverged (+inf) seed; sgd-hd over two β, one diverged finitely."""
    return pd.DataFrame([
        trial("sgd", 0.01, 0, "ok", 1.0, best_test_acc=0.5), trial("sgd", 0.01, 1, "error", INF, best_test_acc=NAN),
        trial("sgd", 0.1, 0, "ok", 0.5, best_test_acc=0.8), trial("sgd", 0.1, 1, "ok", 0.7, best_test_acc=0.9),
        trial("sgd", 1.0, 0, "diverged", INF, best_test_acc=0.1), trial("sgd", 1.0, 1, "ok", 2.0, best_test_acc=0.3),
        trial("sgd-hd", 0.01, 0, "ok", 0.4, beta=1e-4, best_test_acc=0.6),
        trial("sgd-hd", 0.01, 1, "ok", 0.6, beta=1e-4, best_test_acc=0.7),
        trial("sgd-hd", 0.1, 0, "ok", 0.3, beta=1e-4, best_test_acc=0.7),
        trial("sgd-hd", 0.1, 1, "ok", 0.5, beta=1e-4, best_test_acc=0.9),
        trial("sgd-hd", 0.01, 0, "ok", 0.2, beta=1e-3, best_test_acc=0.95),
        trial("sgd-hd", 0.01, 1, "ok", 0.2, beta=1e-3, best_test_acc=0.85),
        trial("sgd-hd", 0.1, 0, "diverged", 0.9, beta=1e-3, best_test_acc=0.2),
        trial("sgd-hd", 0.1, 1, "ok", 1.1, beta=1e-3, best_test_acc=0.4),
    ])


def frame(columns: str, rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns.split())


def test_sensitivity_table(trials):
    result = analysis.sensitivity_table(trials, metrics=("min_train_loss",))
    expected = frame("series label variant decay beta lr metric n n_diverged n_error mean se best_lr lr_ratio", [
        ("sgd", "sgd", "", None, NAN, 0.01, "min_train_loss", 1, 0, 1, 1.0, NAN, 0.1, 0.1),
        ("sgd", "sgd", "", None, NAN, 0.1, "min_train_loss", 2, 0, 0, 0.6, 0.1, 0.1, 1.0),
        ("sgd", "sgd", "", None, NAN, 1.0, "min_train_loss", 2, 1, 0, INF, NAN, 0.1, 10.0),
        ("sgd-hd", "sgd-hd", "", None, 1e-4, 0.01, "min_train_loss", 2, 0, 0, 0.5, 0.1, 0.1, 0.1),
        ("sgd-hd", "sgd-hd", "", None, 1e-4, 0.1, "min_train_loss", 2, 0, 0, 0.4, 0.1, 0.1, 1.0),
        ("sgd-hd", "sgd-hd", "", None, 1e-3, 0.01, "min_train_loss", 2, 0, 0, 0.2, 0.0, 0.01, 1.0),
        ("sgd-hd", "sgd-hd", "", None, 1e-3, 0.1, "min_train_loss", 2, 1, 0, 1.0, 0.1, 0.01, 10.0),
    ])
    assert_frame_equal(result, expected)


def test_sensitivity_table_matches_pandas_on_the_generated_study(results_dir):
    trials, _ = analysis.load(results_dir)
    table = analysis.sensitivity_table(trials)
    assert set(table["metric"]) == {"min_train_loss", "min_test_loss"}
    ok = trials[trials["status"] != "error"]
    direct = ok.groupby(["series", "beta", "lr"], dropna=False)["min_test_loss"].mean()
    mine = table[table["metric"] == "min_test_loss"].set_index(["series", "beta", "lr"])["mean"]
    assert_frame_equal(mine.sort_index().to_frame(), direct.rename("mean").sort_index().to_frame())
    # each (series, β) has its best lr at ratio 1 with the lowest finite mean
    at_best = table[table["lr_ratio"] == 1.0]
    lowest = table[np.isfinite(table["mean"])].groupby(["metric", "series", "beta"], dropna=False)["mean"].min()
    assert_frame_equal(at_best.set_index(["metric", "series", "beta"])["mean"].sort_index().to_frame(),
                       lowest.sort_index().to_frame())


def test_best_beta(trials):
    table = analysis.sensitivity_table(trials, metrics=("min_train_loss",))
    result = analysis.best_beta(table)
    # β=1e-3 reaches 0.2 < 0.4 of β=1e-4; rows without β all stay
    assert_frame_equal(result, table[table["beta"].isna() | (table["beta"] == 1e-3)].reset_index(drop=True))


def test_swept_keeps_series_with_two_lrs(trials):
    more = pd.concat([trials, pd.DataFrame([trial("adam", 1e-3, 0, "ok", 0.3)])], ignore_index=True)
    table = analysis.sensitivity_table(more)
    assert set(analysis.swept(table)["series"]) == {"sgd", "sgd-hd"}
    assert set(analysis.swept(table, min_lrs=1)["series"]) == {"sgd", "sgd-hd", "adam"}


def test_config_table_and_best_configs(trials):
    configs = analysis.config_table(trials, columns=["min_train_loss", "best_test_acc"])
    assert configs.columns.tolist() == [
        "method", "series", "label", "variant", "decay", "beta", "lr", "n_trials", "n_diverged", "n_error",
        "min_train_loss_mean", "min_train_loss_se", "best_test_acc_mean", "best_test_acc_se"]
    best = analysis.best_configs(trials, columns=["min_train_loss", "best_test_acc"])
    se_acc_sgd = np.std([0.8, 0.9], ddof=1) / math.sqrt(2)
    se_acc_hd = np.std([0.95, 0.85], ddof=1) / math.sqrt(2)
    expected = frame("method series label variant decay beta lr n_trials n_diverged n_error "
                     "min_train_loss_mean min_train_loss_se best_test_acc_mean best_test_acc_se", [
                         ("sgd", "sgd", "sgd", "", None, NAN, 0.1, 2, 0, 0, 0.6, 0.1, 0.85, se_acc_sgd),
                         ("sgd-hd", "sgd-hd", "sgd-hd", "", None, 1e-3, 0.01, 2, 0, 0, 0.2, 0.0, 0.9, se_acc_hd),
                     ])
    assert_frame_equal(best, expected)
    with pytest.raises(ValueError, match="metric must be one of min_train_loss, best_test_acc"):
        analysis.best_configs(trials, metric="accuracy", columns=["min_train_loss", "best_test_acc"])
    with pytest.raises(ValueError, match="by must be 'method' or 'series'"):
        analysis.best_configs(trials, by="label")


def test_best_configs_reports_a_method_that_only_diverged(trials):
    blown = pd.DataFrame([trial("adam", 1.0, s, "diverged", INF) for s in (0, 1)]
                         + [trial("adam", 10.0, 0, "error", INF)])
    best = analysis.best_configs(pd.concat([trials, blown], ignore_index=True), columns=["min_train_loss"])
    row = best[best["method"] == "adam"].iloc[0]
    assert math.isnan(row["lr"]) and math.isnan(row["min_train_loss_mean"])
    assert (row["n_trials"], row["n_diverged"], row["n_error"]) == (3, 2, 1)


def test_best_configs_by_method_lets_variants_compete():
    rows = [trial("adam-cam-hd", 1e-3, s, "ok", loss, beta=1e-8, gammas=g)
            for g, losses in (([0.5, 0.5], (0.4, 0.6)), ([0.2, 0.8], (0.3, 0.3))) for s, loss in enumerate(losses)]
    trials = pd.DataFrame(rows)
    by_method = analysis.best_configs(trials, columns=["min_train_loss"])
    assert by_method[["method", "series", "min_train_loss_mean"]].values.tolist() == [
        ["adam-cam-hd", "adam-cam-hd [gammas=[0.2, 0.8]]", 0.3]]
    assert len(analysis.best_configs(trials, by="series", columns=["min_train_loss"])) == 2
    chosen = analysis.best_trials(trials, by_method)
    assert sorted(chosen["trial_id"]) == sorted(trials["trial_id"][2:])


def test_t_quantile_matches_tables():
    for p, df, value in [(0.975, 1, 12.7062047), (0.975, 4, 2.7764451), (0.975, 30, 2.0422725),
                         (0.95, 10, 1.8124611), (0.025, 2, -4.3026527), (0.5, 3, 0.0)]:
        assert analysis.t_quantile(p, df) == pytest.approx(value, abs=1e-6)
    with pytest.raises(ValueError, match="0 < p < 1"):
        analysis.t_quantile(1.0, 3)


def test_curve_stats():
    trials = pd.DataFrame([trial("sgd", 0.1, s, "ok", 0.1) for s in (0, 1)] + [trial("adam", 0.1, 0, "ok", 0.1)])
    ids = trials["trial_id"].tolist()
    curves = pd.DataFrame({
        "trial_id": [ids[0], ids[0], ids[1], ids[1], ids[2]], "epoch": [1, 2, 1, 2, 1], "step": [5, 10, 5, 10, 5],
        "train_loss": [1.0, 0.5, 3.0, INF, 2.0],  # the second seed diverges at epoch 2
    })
    result = analysis.curve_stats(curves, trials, variables=["train_loss"])
    t1 = 12.706204736174707
    expected = frame("series variable epoch n mean se low high", [
        ("adam", "train_loss", 1, 1, 2.0, NAN, NAN, NAN),
        ("sgd", "train_loss", 1, 2, 2.0, 1.0, 2.0 - t1, 2.0 + t1),
        ("sgd", "train_loss", 2, 1, 0.5, NAN, NAN, NAN),
    ])
    assert_frame_equal(result, expected)
    default = analysis.curve_stats(curves, trials)
    assert set(default["variable"]) == {"train_loss"}  # step is an axis, not a variable


def test_threshold_table():
    trials = pd.DataFrame([
        trial("sgd", 0.1, 0, "ok", 0.1, **{"iters_to_0.5": 10.0, "iters_to_0.25": 30.0}),
        trial("sgd", 0.1, 1, "ok", 0.1, **{"iters_to_0.5": 20.0, "iters_to_0.25": NAN}),
        trial("sgd", 0.1, 2, "error", NAN, **{"iters_to_0.5": NAN, "iters_to_0.25": NAN}),
    ])
    expected = frame("series label variant decay beta lr threshold n n_reached iters_mean iters_se", [
        ("sgd", "sgd", "", None, NAN, 0.1, "0.25", 2, 1, 30.0, NAN),
        ("sgd", "sgd", "", None, NAN, 0.1, "0.5", 2, 2, 15.0, 5.0),
    ])
    assert_frame_equal(analysis.threshold_table(trials), expected)
    with pytest.raises(ValueError, match="no iters_to_<threshold> columns"):
        analysis.threshold_table(trials.drop(columns=["iters_to_0.5", "iters_to_0.25"]))


@pytest.mark.parametrize("as_text", [False, True])
def test_combination_table(as_text):
    rows = []
    for g_global, accs in ((0.0, (0.90, 0.92)), (0.5, (0.95, 0.97)), (1.0, (0.93, 0.93))):
        gammas, levels = [g_global, 1 - g_global], ["global", "unit"]  # global listed first on purpose
        for s, acc in enumerate(accs):
            rows.append(trial("adam-cam-hd", 1e-3, s, "ok", 0.1, beta=1e-8, final_test_acc=acc,
                              gammas=str(gammas) if as_text else gammas, levels=str(levels) if as_text else levels))
    rows.append(trial("adam", 1e-3, 0, "ok", 0.1, final_test_acc=0.9, gammas=None, levels=None))
    result = analysis.combination_table(pd.DataFrame(rows))
    se = np.std([0.90, 0.92], ddof=1) / math.sqrt(2)
    expected = frame("line label decay beta lr gamma n mean se", [
        ("adam-cam-hd", "adam-cam-hd", None, 1e-8, 1e-3, 0.0, 2, 0.91, se),
        ("adam-cam-hd", "adam-cam-hd", None, 1e-8, 1e-3, 0.5, 2, 0.96, se),
        ("adam-cam-hd", "adam-cam-hd", None, 1e-8, 1e-3, 1.0, 2, 0.93, 0.0),
    ])
    assert_frame_equal(result, expected)


def test_combination_table_is_empty_without_fixed_gammas(trials):
    assert analysis.combination_table(trials).empty


def test_accuracy_metrics_are_maximised(trials):
    assert analysis.higher_is_better("best_test_acc") and not analysis.higher_is_better("min_test_loss")
    table = analysis.sensitivity_table(trials, metrics=("best_test_acc",))
    sgd = table[table["series"] == "sgd"]
    assert sgd["best_lr"].unique().tolist() == [0.1]  # mean accuracy 0.85 beats 0.5 and 0.2
    assert analysis.best_beta(table).query("series == 'sgd-hd'")["beta"].unique().tolist() == [1e-3]
    best = analysis.best_configs(trials, metric="best_test_acc", columns=["best_test_acc"])
    assert best["method"].tolist() == ["sgd", "sgd-hd"]
    assert best["lr"].tolist() == [0.1, 0.01] and best["best_test_acc_mean"].tolist() == pytest.approx([0.85, 0.9])
