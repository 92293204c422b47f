"""analysis.compare / comparisons_table: paired seed-bootstrap differences, calibrated on known answers."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import analysis
from analysis.comparisons import ranking_table

L0 = 2.3
XS = np.arange(-4.0, 0.01, 0.5)  # log10 α0


def _pair(reps=1, *, seeds=5, diff=0.0, shared=0.3, noise=0.05, b_seeds=None, seed=0, names=("adam-hd", "adam")):
    """Series a and b on ``reps`` tasks: loss = 1 + 0.3 (x + 2)² + seed effect (both series) + noise,
    plus ``diff``·|x + 2| for a (a steeper valley: larger lr sensitivity, the same best loss)."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(reps):
        effect = rng.normal(0, shared, seeds)
        for name, extra, ids in ((names[0], diff, range(seeds)), (names[1], 0.0, b_seeds or range(seeds))):
            for k, s in enumerate(ids):
                for x in XS:
                    loss = (1 + 0.3 * (x + 2) ** 2 + effect[k] * (1 + 0.2 * x) + rng.normal(0, noise)
                            + extra * abs(x + 2))
                    rows.append({"trial_id": f"{r}-{name}-{s}-{x}", "optimizer": name, "lr": 10.0 ** x, "beta": None,
                                 "decay": None, "seed": s, "status": "ok", "min_train_loss": loss,
                                 "init_train_loss": L0, "dataset": f"task{r}"})
    return pd.DataFrame(rows)


def _sensitivity(trials, series):
    """lr_sensitivity by hand: mean over α0 of min(mean loss, L0) minus the best mean."""
    means = trials[trials["optimizer"] == series].groupby("lr")["min_train_loss"].mean()
    return float(np.minimum(means, L0).mean() - means.min())


def test_a_known_difference_is_found_and_measured():
    trials = _pair(diff=0.2)
    table = analysis.compare(trials, a="adam-hd", b="adam", axis="lr", statistic="lr_sensitivity",
                             metrics=("min_train_loss",))
    (row,) = table.itertuples(index=False)
    assert list(table.columns) == ["task", "axis", "metric", "statistic", "a", "b", "a_at", "b_at", "value_a",
                                   "value_b", "difference", "ci_low", "ci_high", "significant", "paired", "n_shared",
                                   "resolved", "base"]
    assert row.difference == pytest.approx(_sensitivity(trials, "adam-hd") - _sensitivity(trials, "adam"))
    assert row.value_a == pytest.approx(_sensitivity(trials, "adam-hd"))
    # the true difference: 0.2 · mean |x + 2| over the grid
    truth = 0.2 * np.abs(XS + 2).mean()
    assert row.ci_low < truth < row.ci_high and row.ci_low > 0
    assert row.significant and row.paired and row.n_shared == 5 and row.base  # adam is adam-hd's base
    swapped = analysis.compare(trials, a="adam", b="adam-hd", statistic="lr_sensitivity", metrics=("min_train_loss",))
    assert swapped["difference"].iloc[0] == pytest.approx(-row.difference)


@pytest.mark.parametrize("seeds", [3, 8])
def test_a_null_pair_is_significant_in_about_five_percent_of_draws(seeds):
    # 300 independent draws at once: one task each, series a and b from the same distribution
    trials = _pair(300, seeds=seeds, seed=seeds)
    table = analysis.comparisons_table(trials, axis="lr", metrics=("min_train_loss",),
                                       statistic=["lr_sensitivity", "best_loss"], n_boot=400)
    assert len(table) == 600 and table["paired"].all()
    rate = table.groupby("statistic")["significant"].mean()
    assert (rate <= 0.09).all() and (rate >= 0.01).all(), rate  # 5% ± 3 binomial SEs


def test_pairing_narrows_the_interval_when_seed_effects_are_shared():
    paired = _pair(40, seeds=6, shared=0.5, seed=3)
    apart = _pair(40, seeds=6, shared=0.5, seed=3, b_seeds=range(100, 106))  # no seed in common
    kwargs = dict(axis="lr", metrics=("min_train_loss",), statistic="best_loss", n_boot=400)
    a, b = analysis.comparisons_table(paired, **kwargs), analysis.comparisons_table(apart, **kwargs)
    assert a["paired"].all() and (a["n_shared"] == 6).all()
    assert not b["paired"].any() and (b["n_shared"] == 0).all()
    np.testing.assert_allclose(a["difference"], b["difference"])  # the same data, only the pairing differs
    width_a, width_b = (a["ci_high"] - a["ci_low"]).median(), (b["ci_high"] - b["ci_low"]).median()
    assert width_a < 0.5 * width_b
    assert b["significant"].mean() <= 0.1  # the independent interval stays honest, only wider


def test_seeds_only_one_series_ran_are_drawn_for_it_alone():
    trials = _pair(seeds=5, b_seeds=[0, 1, 2, 3, 7], diff=0.2)
    (row,) = analysis.compare(trials, a="adam-hd", b="adam", statistic="lr_sensitivity",
                              metrics=("min_train_loss",)).itertuples(index=False)
    assert row.paired and row.n_shared == 4 and row.ci_low < row.difference < row.ci_high


def test_pairs_are_formed_within_a_task_and_name_their_lines(results_dir):
    trials, _ = analysis.load(results_dir)
    table = analysis.comparisons_table(trials, axis="lr", metrics=("min_train_loss",), n_boot=50)
    series = set(analysis.metrics_table(trials, axis="lr", metrics=("min_train_loss",), n_boot=10)["series"])
    n = len(series)
    assert len(table[["a", "b"]].drop_duplicates()) == n * (n - 1) // 2  # every pair once
    assert "best_lr" not in set(table["statistic"])
    hd = table[(table["a"] == "sgd-hd") & (table["b"] == "sgd")]
    assert hd["base"].all() and set(hd["a_at"]) == {"beta=0.0001"} and set(hd["b_at"]) == {""}
    assert table.loc[table["base"], "a"].map(lambda s: s.split()[0].split("-")[0]).eq(
        table.loc[table["base"], "b"]).all()
    # another batch size is another task: no pair; a task column missing in one row agrees with any value
    other = _pair(diff=0.2).assign(batch_size=64.0)
    other.loc[other["optimizer"] == "adam", "batch_size"] = 128
    assert analysis.comparisons_table(other, axis="lr", metrics=("min_train_loss",), n_boot=20).empty
    other.loc[other["optimizer"] == "adam", "batch_size"] = None
    assert len(analysis.comparisons_table(other, axis="lr", metrics=("min_train_loss",), n_boot=20)) > 0


def test_compare_names_bad_arguments():
    trials = _pair()
    with pytest.raises(ValueError, match=r"a must be a series with a line on axis 'lr' \(adam, adam-hd\); got 'sgd'"):
        analysis.compare(trials, a="sgd", b="adam")
    with pytest.raises(ValueError, match="a and b must be two series"):
        analysis.compare(trials, a="adam", b="adam")
    with pytest.raises(ValueError, match="best_lr is not compared"):
        analysis.compare(trials, a="adam-hd", b="adam", statistic="best_lr")
    with pytest.raises(ValueError, match="axis must be a numeric hyperparameter column"):
        analysis.compare(trials, a="adam-hd", b="adam", axis="momentum")


def test_the_ranking_orders_series_and_marks_significant_neighbours():
    a = _pair(diff=0.6, seed=1, names=("steep", "flat"))
    b = _pair(diff=0.01, seed=1, names=("flatter", "flat")).query("optimizer == 'flatter'")
    trials = pd.concat([a, b], ignore_index=True)
    metrics = analysis.metrics_table(trials, axis="lr", metrics=("min_train_loss",), n_boot=300)
    pairs = analysis.comparisons_table(trials, axis="lr", metrics=("min_train_loss",), n_boot=300)
    ranking = ranking_table(metrics, pairs)
    assert list(ranking["series"]) == ["flat", "flatter", "steep"] and list(ranking["rank"]) == [1, 2, 3]
    assert list(ranking["mark"]) == ["≈", "<", ""]  # flat and flatter do not differ; both beat steep
    expected = _sensitivity(trials, "flatter") - _sensitivity(trials, "steep")
    assert ranking["difference"].iloc[1] == pytest.approx(expected)


def test_an_errored_run_off_the_best_leaves_the_difference_interval_as_it_was():
    """n is the seeds drawn (5), not the fewest at a grid point: one run of a erroring at the far end
    leaves the best loss's difference and its interval nearly as they were (not 2x wider)."""
    trials = _pair(diff=0.2)
    errored = trials.copy()
    far = errored.index[(errored["optimizer"] == "adam-hd") & (errored["seed"] == 0) & (errored["lr"] == 1.0)]
    errored.loc[far, ["status", "min_train_loss"]] = ["error", np.nan]
    kw = dict(a="adam-hd", b="adam", statistic="best_loss", metrics=("min_train_loss",))
    whole, less = (analysis.compare(t, **kw).iloc[0] for t in (trials, errored))
    assert less["difference"] == pytest.approx(whole["difference"])
    assert less["ci_high"] - less["ci_low"] == pytest.approx(whole["ci_high"] - whole["ci_low"], rel=0.05)
