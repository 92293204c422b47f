"""analysis.metrics_table: statistics with bootstrap intervals over seeds, on tables whose answers are known."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import analysis
from analysis.metrics import metrics_summary, metrics_table

L0 = 2.3


def _trials(points, *, optimizer="sgd", beta=None, l0=L0):
    """Trial rows from {lr: [per-seed min_train_loss, ...]} (inf: diverged without a minimum)."""
    rows = []
    for lr, values in points.items():
        for seed, v in enumerate(values):
            rows.append({"trial_id": f"{optimizer}-{beta}-{lr}-{seed}", "optimizer": optimizer, "lr": lr,
                         "beta": beta, "decay": None, "seed": seed,
                         "status": "diverged" if math.isinf(v) else "ok",
                         "min_train_loss": v, "min_test_loss": v + 0.1,
                         "init_train_loss": l0, "init_test_loss": l0 + 0.1,
                         "best_test_acc": 0.5, "final_test_acc": 0.5})
    return pd.DataFrame(rows)


def _parabola(xs, *, seeds=3):
    """loss = 1 + (log10 lr + 2)^2, the same on every seed: best α0 = 1e-2, best loss 1."""
    return {10.0 ** x: [1 + (x + 2) ** 2] * seeds for x in xs}


def _stat(table, statistic, metric="min_train_loss"):
    rows = table[(table["statistic"] == statistic) & (table["metric"] == metric)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


HALF_DECADES = np.arange(-4.0, 0.01, 0.5)


def test_known_values_of_a_noise_free_parabola():
    table = metrics_table(_trials(_parabola(HALF_DECADES)), n_boot=200)
    assert set(table["statistic"]) == {"best_lr", "best_loss", "valley_width@rtol=0.1", "valley_width@atol=0.05",
                                       "expected_best@k=1", "expected_best@k=4", "lr_sensitivity"}
    assert _stat(table, "best_lr")["value"] == pytest.approx(1e-2)
    assert _stat(table, "best_loss")["value"] == pytest.approx(1.0)
    # within 10%: (x+2)^2 <= 0.1, interpolated between x = -2 (1.0) and ±0.5 away (1.25): 0.4 of the way
    assert _stat(table, "valley_width@rtol=0.1")["value"] == pytest.approx(2 * 0.4 * 0.5)
    assert _stat(table, "valley_width@atol=0.05")["value"] == pytest.approx(2 * 0.2 * 0.5)
    y = 1 + (HALF_DECADES + 2) ** 2
    assert _stat(table, "lr_sensitivity")["value"] == pytest.approx(np.minimum(y, L0).mean() - 1.0)
    # one draw is any grid point: its expectation is the mean of the capped losses
    assert _stat(table, "expected_best@k=1")["value"] == pytest.approx(np.minimum(y, L0).mean())
    # identical seeds: every resample is the table itself
    assert np.allclose(table["ci_low"], table["value"], rtol=1e-12, atol=0)
    assert np.allclose(table["ci_high"], table["value"], rtol=1e-12, atol=0)
    assert table["resolved"].all() and (table["n_lr"] == len(HALF_DECADES)).all() and (table["n_seeds"] == 3).all()
    test = _stat(table, "best_loss", metric="min_test_loss")
    assert test["value"] == pytest.approx(1.1)


def test_lr_sensitivity_counts_a_diverged_point_as_l0():
    finite = _parabola(HALF_DECADES)
    diverged = {**finite, 1.0: [math.inf] * 3}  # 1 + 2^2 = 5 > L0: min(loss, L0) is L0 either way
    a = _stat(metrics_table(_trials(finite), n_boot=50), "lr_sensitivity")["value"]
    b = _stat(metrics_table(_trials(diverged), n_boot=50), "lr_sensitivity")["value"]
    assert a == pytest.approx(b)
    # without L0 in the rows there is no lr_sensitivity, and a diverged draw counts as the worst finite mean
    old = _trials(diverged).drop(columns=["init_train_loss", "init_test_loss"])
    table = metrics_table(old, n_boot=50)
    assert "lr_sensitivity" not in set(table["statistic"])
    y = 1 + (HALF_DECADES + 2) ** 2
    worst = y[:-1].max()
    assert _stat(table, "expected_best@k=1")["value"] == pytest.approx(np.append(y[:-1], worst).mean())


def test_bootstrap_interval_of_a_two_seed_point_is_exact():
    # best point: seeds 0 and 1 -> resampled means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4
    table = metrics_table(_trials({1e-3: [9.0, 9.0], 1e-2: [0.0, 1.0], 1e-1: [9.0, 9.0]}), n_boot=2000)
    best = _stat(table, "best_loss")
    assert (best["value"], best["ci_low"], best["ci_high"]) == (0.5, 0.0, 1.0)
    lr = _stat(table, "best_lr")
    assert lr["ci_low"] == lr["ci_high"] == pytest.approx(1e-2)
    assert not lr["resolved"]  # neighbours a whole decade away (> 0.5)


def test_intervals_are_reproducible_and_per_series():
    rng = np.random.default_rng(0)
    noisy = {10.0 ** x: list(1 + (x + 2) ** 2 + rng.normal(0, 0.2, 4)) for x in HALF_DECADES}
    one = _trials(noisy)
    first, again = metrics_table(one, n_boot=300), metrics_table(one, n_boot=300)
    pd.testing.assert_frame_equal(first, again)
    assert (first["ci_low"] <= first["value"] + 1e-12).all() and (first["value"] <= first["ci_high"] + 1e-12).all()
    assert (first["ci_high"] - first["ci_low"]).max() > 0
    other = metrics_table(one, n_boot=300, seed=1)
    assert not np.allclose(first["ci_low"], other["ci_low"])
    # another series in the table leaves this one's intervals alone
    both = metrics_table(pd.concat([one, _trials(noisy, optimizer="adam")]), n_boot=300)
    pd.testing.assert_frame_equal(both[both["series"] == "sgd"].reset_index(drop=True), first)


def test_resolved_needs_the_edges_on_a_fine_enough_grid():
    decades = metrics_table(_trials(_parabola(np.arange(-5.0, 0.01, 1.0))), n_boot=20)
    assert not _stat(decades, "valley_width@rtol=0.1")["resolved"]
    assert not _stat(decades, "best_lr")["resolved"]
    assert _stat(metrics_table(_trials(_parabola(np.arange(-5.0, 0.01, 1.0))), n_boot=20, max_gap=1.0),
                 "valley_width@rtol=0.1")["resolved"]
    # the loss still falls at the largest α0: the best and the valley's right edge are off the grid
    falling = metrics_table(_trials(_parabola(np.arange(-4.0, -1.99, 0.25))), n_boot=20)
    assert not _stat(falling, "best_lr")["resolved"] and not _stat(falling, "lr_sensitivity")["resolved"]
    assert not _stat(falling, "valley_width@rtol=0.1")["resolved"]
    assert not _stat(falling, "expected_best@k=4")["resolved"]


def test_one_seed_has_no_interval_and_single_lr_series_are_left_out():
    table = metrics_table(pd.concat([_trials(_parabola(HALF_DECADES, seeds=1)),
                                     _trials({1e-3: [1.0, 1.1]}, optimizer="adam")]), n_boot=50)
    assert set(table["series"]) == {"sgd"}
    assert table["ci_low"].isna().all() and table["ci_high"].isna().all() and table["value"].notna().all()


def test_errored_trials_are_no_seeds_and_bad_arguments_name_themselves():
    trials = _trials(_parabola(HALF_DECADES))
    errored = trials.iloc[[0]].assign(trial_id="x", seed=9, status="error", min_train_loss=math.inf)
    pd.testing.assert_frame_equal(metrics_table(pd.concat([trials, errored]), n_boot=20),
                                  metrics_table(trials, n_boot=20))
    with pytest.raises(ValueError, match="metrics must be loss columns"):
        metrics_table(trials, metrics=("best_test_acc",))
    with pytest.raises(ValueError, match="level"):
        metrics_table(trials, level=1.5)


def test_summary_and_public_name(results_dir):
    trials, _ = analysis.load(results_dir)
    table = analysis.metrics_table(trials, n_boot=50)
    assert set(table["metric"]) == {"min_train_loss", "min_test_loss"}
    summary = metrics_summary(table)
    assert len(summary) == table.groupby(["metric", "series", "beta"], dropna=False).ngroups
    assert list(summary.columns[:3]) == ["metric", "optimizer", "β"]
    for r in table.itertuples(index=False):
        beta = summary["β"].isna() if pd.isna(r.beta) else summary["β"] == r.beta
        (text,) = summary.loc[(summary["metric"] == r.metric) & (summary["optimizer"] == r.series) & beta,
                              r.statistic]
        assert text.startswith(f"{r.value:.3g} [") and text.endswith(" ?") != r.resolved
