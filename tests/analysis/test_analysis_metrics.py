"""analysis.metrics_table: statistics over any swept axis with seed-bootstrap intervals, on tables whose answers
are known."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import analysis
from analysis.metrics import metrics_summary, metrics_table

L0 = 2.3


def _trials(points, *, optimizer="sgd", beta=None, l0=L0, axis="lr", lr=0.1, **fixed):
    """Trial rows from {axis value: [per-seed min_train_loss, ...]} (inf: diverged without a minimum)."""
    rows = []
    for value, values in points.items():
        for seed, v in enumerate(values):
            row = {"trial_id": f"{optimizer}-{beta}-{axis}{value}-{seed}", "optimizer": optimizer, "lr": lr,
                   "beta": beta, "decay": None, "seed": seed, **fixed,
                   "status": "diverged" if math.isinf(v) else "ok",
                   "min_train_loss": v, "min_test_loss": v + 0.1,
                   "init_train_loss": l0, "init_test_loss": l0 + 0.1,
                   "best_test_acc": 0.5, "final_test_acc": 0.5}
            row[axis] = value
            rows.append(row)
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
    assert table["resolved"].all() and (table["n_values"] == len(HALF_DECADES)).all() and (table["n_seeds"] == 3).all()
    assert set(table["axis"]) == {"lr"} and set(table["scale"]) == {"log"} and table["at_best"].all()
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


def test_bootstrap_interval_of_a_two_seed_point_is_the_t_interval():
    # best point: seeds 0 and 1 -> resampled means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4, an SE
    # of sqrt(1/8); √2·t(0.975, 1)·SE = t(0.975, 1)·s/√2, the textbook interval of a mean of two
    table = metrics_table(_trials({1e-3: [9.0, 9.0], 1e-2: [0.0, 1.0], 1e-1: [9.0, 9.0]}), n_boot=4000)
    best = _stat(table, "best_loss")
    half = 12.7062047361747 * math.sqrt(0.5) / math.sqrt(2)
    assert best["value"] == 0.5
    assert best["ci_low"] == 0.0  # 0.5 − 6.35, but a loss is never negative
    assert best["ci_high"] == pytest.approx(0.5 + half, rel=0.05)
    lr = _stat(table, "best_lr")
    assert lr["ci_low"] == lr["ci_high"] == pytest.approx(1e-2)  # every replicate's best is 1e-2
    assert not lr["resolved"]  # neighbours a whole decade away (> 0.5)


@pytest.mark.parametrize("seeds", [3, 5])
def test_intervals_cover_the_truth_about_95_percent_of_the_time(seeds):
    """300 independent lines (one task each) of loss 1 + 3 (x + 2)² + N(0, 0.1²) per seed: the best
    loss (truth 1) and the lr sensitivity (truth from the noise-free valley) are covered 95% ± 3
    binomial SEs of the time. A percentile interval covers at most 75% with 3 seeds."""
    rng = np.random.default_rng(seeds)
    xs = np.arange(-3.0, -0.99, 0.5)
    rows = [{"trial_id": f"{r}-{s}-{x}", "optimizer": "sgd", "lr": 10.0 ** x, "beta": None, "decay": None,
             "seed": s, "status": "ok", "min_train_loss": 1 + 3 * (x + 2) ** 2 + rng.normal(0, 0.1),
             "init_train_loss": L0, "dataset": f"task{r}"}
            for r in range(300) for s in range(seeds) for x in xs]
    table = metrics_table(pd.DataFrame(rows), axis="lr", metrics=("min_train_loss",), n_boot=400)
    truths = {"best_loss": 1.0, "lr_sensitivity": float(np.minimum(1 + 3 * (xs + 2) ** 2, L0).mean() - 1)}
    for statistic, truth in truths.items():
        rows = table[table["statistic"] == statistic]
        covered = ((rows["ci_low"] <= truth) & (truth <= rows["ci_high"])).mean()
        assert len(rows) == 300 and 0.91 <= covered <= 0.99, (statistic, covered)


def test_an_errored_run_off_the_best_leaves_the_interval_as_it_was():
    """The interval's n is the seeds the bootstrap draws, not the fewest at a grid point: one seed's
    run at the far end erroring changes the best loss's interval only by that point's absence."""
    rng = np.random.default_rng(3)
    noisy = {10.0 ** x: list(1 + (x + 2) ** 2 + rng.normal(0, 0.2, 3)) for x in HALF_DECADES}
    trials = _trials(noisy)
    errored = trials.copy()
    errored.loc[errored.index[-1], ["status", "min_train_loss"]] = ["error", math.nan]
    whole, less = (_stat(metrics_table(t, n_boot=500), "best_loss") for t in (trials, errored))
    assert less["n_seeds"] == 2 and whole["n_seeds"] == 3
    assert (less["ci_low"], less["ci_high"]) == pytest.approx((whole["ci_low"], whole["ci_high"]))


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
    assert set(table["axis"]) == {"lr", "beta", "momentum"}  # sgd-hd's β, sgdn-momentum's momentum
    summary = metrics_summary(table)
    assert len(summary) == table.groupby(["metric", "axis", "series", "at"]).ngroups
    assert list(summary.columns[:4]) == ["metric", "axis", "optimizer", "at"]
    generic = {"best_lr": "best", "best_beta": "best", "best_momentum": "best", "lr_sensitivity": "sensitivity",
               "beta_sensitivity": "sensitivity", "momentum_sensitivity": "sensitivity"}
    for r in table.itertuples(index=False):
        (text,) = summary.loc[(summary["metric"] == r.metric) & (summary["axis"] == r.axis)
                              & (summary["optimizer"] == r.series) & (summary["at"] == r.at),
                              generic.get(r.statistic, r.statistic)]
        assert text.startswith(f"{r.value:.3g} [") and text.endswith(" ?") != r.resolved


# ------------------------------------------------------------------------------- other axes
def _two_axes(values_of, lrs=(1e-3, 1e-2, 1e-1), *, axis, seeds=3, optimizer="sgdn"):
    """A label swept over lr × ``axis``: loss values_of(lr, value) on every seed."""
    frames = []
    for lr in lrs:
        points = {v: [values_of(lr, v)] * seeds for v in values_of.grid}
        frames.append(_trials(points, optimizer=optimizer, axis=axis, lr=lr))
    return pd.concat(frames, ignore_index=True)


def test_any_axis_gets_the_statistics_in_its_own_scale():
    # β of an HD rule, log-spaced: the parabola 1 + (log10 β + 4)^2 on every α0 line, best at β = 1e-4
    def hd(lr, beta):
        return 1 + (math.log10(beta) + 4) ** 2 + 10 * abs(math.log10(lr) + 2)
    hd.grid = [10.0 ** x for x in HALF_DECADES - 3]
    trials = _two_axes(hd, axis="beta", optimizer="sgd-hd")
    table = metrics_table(trials, axis="beta", n_boot=50)
    assert set(table["axis"]) == {"beta"} and set(table["scale"]) == {"log"}
    assert set(table["series"]) == {"sgd-hd"} and set(table["at"]) == {"lr=0.001", "lr=0.01", "lr=0.1"}
    best = table[table["at_best"]]
    assert set(best["at"]) == {"lr=0.01"} and (best["lr"] == 0.01).all() and best["beta"].isna().all()
    at = best[best["metric"] == "min_train_loss"].set_index("statistic")["value"]
    assert at["best_beta"] == pytest.approx(1e-4) and at["best_loss"] == pytest.approx(1.0)
    assert at["valley_width@rtol=0.1"] == pytest.approx(2 * 0.4 * 0.5)  # decades of β, as for α0
    y = 1 + (HALF_DECADES + 1) ** 2
    assert at["beta_sensitivity"] == pytest.approx(np.minimum(y, L0).mean() - 1.0)


def test_momentum_is_read_in_decades_of_one_minus_momentum():
    # loss 1 + (−log10(1 − m) − 2)^2: best at m = 0.99, one unit per decade of 1 − m
    def sgdn(lr, m):
        return 1 + (-math.log10(1 - m) - 2) ** 2 + abs(math.log10(lr) + 2)
    sgdn.grid = [0.0, 0.9, 0.99, 0.999, 0.9999]
    table = metrics_table(_two_axes(sgdn, axis="momentum"), axis="momentum", metrics=("min_train_loss",), n_boot=50)
    assert set(table["scale"]) == {"log1m"}
    at = table[table["at_best"]].set_index("statistic")["value"]
    assert at["best_momentum"] == pytest.approx(0.99)
    # within 0.05 of the best: (d − 2)^2 ≤ 0.05 between d = 2 and its neighbours a decade away (5 → 1 + 1)
    assert at["valley_width@atol=0.05"] == pytest.approx(2 * 0.05)
    assert at["momentum_sensitivity"] == pytest.approx(np.mean([min(1 + d * d, L0) for d in (-2, -1, 0, 1, 2)]) - 1)


def test_a_linear_axis_measures_widths_in_its_units_and_checks_only_its_edges():
    # warmup 0..400 steps, loss 1 + ((w − 200) / 100)^2: the valley within 10% spans ±√0.1·100 steps
    def schedule_free(lr, w):
        return 1 + ((w - 200) / 100) ** 2 + abs(math.log10(lr) + 2)
    schedule_free.grid = [0, 100, 200, 300, 400]
    trials = _two_axes(schedule_free, axis="warmup_steps", optimizer="schedule-free-sgd")
    table = metrics_table(trials, axis="warmup_steps", metrics=("min_train_loss",), n_boot=50)
    at = table[table["at_best"]].set_index("statistic")
    assert set(table["scale"]) == {"linear"} and table["max_gap"].isna().all()
    assert at.loc["best_warmup_steps", "value"] == 200
    assert at.loc["valley_width@rtol=0.1", "value"] == pytest.approx(2 * 100 * 0.1)  # linear interpolation
    assert at.loc["best_warmup_steps", "resolved"]  # gaps of 100 steps: no unit to call them wide


def test_an_axis_needs_three_values_and_a_number():
    def two(lr, m):
        return 1 + m + abs(math.log10(lr) + 2)
    two.grid = [0.5, 0.9]
    trials = _two_axes(two, axis="momentum")
    assert metrics_table(trials, axis="momentum").empty
    assert set(metrics_table(trials)["axis"]) == {"lr"}  # two momenta still split the lr series
    assert set(metrics_table(trials)["series"]) == {"sgdn [momentum=0.5]", "sgdn [momentum=0.9]"}
    with pytest.raises(ValueError, match="axis must be a numeric hyperparameter column of trials .*lr.*momentum"):
        metrics_table(trials.assign(betas="[0.9, 0.999]"), axis="betas")
    with pytest.raises(ValueError, match="got 'seed'"):
        metrics_table(trials, axis="seed")


def test_a_value_missing_in_older_rows_neither_splits_nor_crashes():
    # newer rows carry momentum 0.9 (the default filled in), older ones lack it: one series
    def sgdn(lr, m):
        return 1 + abs(math.log10(lr) + 2)
    sgdn.grid = [0.9]
    trials = _two_axes(sgdn, axis="momentum", lrs=(1e-3, 1e-2, 1e-1, 1.0))
    trials.loc[trials["lr"] < 0.05, "momentum"] = None
    table = metrics_table(trials, n_boot=20)
    assert set(table["series"]) == {"sgdn"} and (table["n_values"] == 4).all()
    assert metrics_table(trials, axis="momentum").empty


def test_each_axis_takes_the_scale_that_spaces_its_grid_evenly(results_dir):
    scale = analysis.axis_scale
    assert scale([1e-5, 1e-4, 1e-3]) == scale([32, 64, 128, 256]) == scale([1e-4, 1e-2]) == "log"
    assert scale([0.0, 0.5, 0.9, 0.99]) == scale([0.9, 0.99, 0.999]) == "log1m"
    assert scale([0.1, 0.2, 0.3]) == scale([0, 250, 500]) == scale([0, 1e-4, 1e-3]) == scale([0.5, 0.9]) == "linear"
    assert scale([0.1, 0.2], axis="lr") == "log"  # α0 is always read in decades
    trials, _ = analysis.load(results_dir)
    axes = analysis.swept_axes(trials)
    assert set(axes["axis"]) == {"lr", "beta", "momentum"}
    momentum = axes[axes["axis"] == "momentum"].iloc[0]
    assert (momentum["series"], momentum["scale"], momentum["n_lines"], momentum["n_values"]) == (
        "sgdn-momentum", "log1m", 4, 4)  # one line per α0, four momenta on each
    assert "sgdn-momentum [momentum=0.9]" in set(axes.loc[axes["axis"] == "lr", "series"])


def test_without_l0_a_diverged_point_counts_as_the_worst_finite_mean():
    """No init_* columns: the expected best counts a diverged α0 as the worst finite mean (2.0 at 1e-3),
    not the worst single run (3.0), as robustness.expected_best does."""
    trials = _trials({1e-3: [1.0, 3.0], 1e-2: [0.5, 0.7], 1e-1: [math.inf, math.inf]})
    trials = trials.drop(columns=["init_train_loss", "init_test_loss"])
    value = _stat(metrics_table(trials, n_boot=20), "expected_best@k=1")["value"]
    assert value == pytest.approx((2.0 + 0.6 + 2.0) / 3)
    table = analysis.sensitivity_table(trials)
    assert analysis.expected_best(table, metric="min_train_loss", k=[1])["expected"].iloc[0] == pytest.approx(value)


def test_a_series_that_diverged_everywhere_is_reported_and_ranks_last():
    """Every run of sgd diverged: metrics.csv lists it with a best loss of +inf (certain: every
    resample has it), the comparison with adam is significant, and the best-loss ranking puts it last."""
    adam = _trials(_parabola(HALF_DECADES), optimizer="adam")
    adam["min_train_loss"] += np.tile([0.0, 0.05, -0.05], len(HALF_DECADES))
    sgd = _trials({10.0 ** x: [math.inf] * 3 for x in HALF_DECADES})
    trials = pd.concat([adam, sgd], ignore_index=True)
    table = metrics_table(trials, axis="lr", metrics=("min_train_loss",), n_boot=200)
    diverged = table[table["series"] == "sgd"]
    assert diverged[["statistic", "value", "ci_low", "ci_high"]].values.tolist() == [
        ["best_loss", math.inf, math.inf, math.inf]]
    assert diverged["at_best"].all() and not diverged["resolved"].any()
    pairs = analysis.comparisons_table(trials, axis="lr", metrics=("min_train_loss",), n_boot=200)
    (pair,) = pairs[pairs["statistic"] == "best_loss"].itertuples(index=False)
    assert (pair.a, pair.b, pair.difference, pair.significant) == ("adam", "sgd", -math.inf, True)
    from analysis.comparisons import ranking_table
    ranking = ranking_table(table, pairs, axis="lr", statistic="best_loss")
    assert ranking["series"].tolist() == ["adam", "sgd"] and ranking["mark"].tolist() == ["<", ""]


def test_an_axis_scale_comes_from_the_lines_that_sweep_it():
    """adamw sweeps weight decay over 1e-4..1e-2 (log-even); an sgd entry fixed at weight_decay 0 does
    not sweep it, so its 0 neither makes the axis linear nor changes adamw's statistics."""
    adamw = _trials({1e-4: [1.0] * 3, 1e-3: [0.5, 0.51, 0.52], 1e-2: [1.0] * 3}, optimizer="adamw",
                    axis="weight_decay", lr=1e-3)
    sgd = _trials({0.0: [1.0] * 3}, optimizer="sgd", axis="weight_decay", lr=1e-2)
    alone = metrics_table(adamw, axis="weight_decay", n_boot=50)
    both = metrics_table(pd.concat([adamw, sgd], ignore_index=True), axis="weight_decay", n_boot=50)
    assert set(both["scale"]) == {"log"} and set(both["series"]) == {"adamw"}
    pd.testing.assert_frame_equal(both, alone)


def test_a_sensitivity_below_zero_keeps_its_interval_around_it():
    """Every point worse than L0 (2.3): min(loss, L0) − best is negative, and so may its interval be;
    losses and widths stay at least 0."""
    rng = np.random.default_rng(1)
    trials = _trials({10.0 ** x: list(3 + 0.1 * (x + 2) ** 2 + rng.normal(0, 0.05, 3)) for x in HALF_DECADES})
    table = metrics_table(trials, n_boot=300)
    sens = _stat(table, "lr_sensitivity")
    assert sens["value"] < 0 and sens["ci_low"] <= sens["value"] <= sens["ci_high"] < 0
    others = table[~table["statistic"].isin(["lr_sensitivity", "best_lr"])]
    assert (others["ci_low"] >= 0).all()


def test_the_expected_best_stand_in_is_the_worst_mean_of_the_whole_table():
    """No L0: sgd's diverged α0 counts as the table's worst finite mean, adam's single α0 at 5.0 (not a
    line, but a configuration of the table), as robustness.expected_best counts it."""
    sgd = _trials({1e-3: [1.0, 3.0], 1e-2: [0.5, 0.7], 1e-1: [math.inf, math.inf]})
    adam = _trials({1e-3: [5.0, 5.0]}, optimizer="adam")
    trials = pd.concat([sgd, adam], ignore_index=True).drop(columns=["init_train_loss", "init_test_loss"])
    value = _stat(metrics_table(trials, n_boot=20), "expected_best@k=1")["value"]
    assert value == pytest.approx((2.0 + 0.6 + 5.0) / 3)
    table = analysis.sensitivity_table(trials)
    expected = analysis.expected_best(table, metric="min_train_loss", k=[1])
    assert expected.set_index("series").loc["sgd", "expected"] == pytest.approx(value)
