"""Robustness metrics on inputs with known answers."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

import analysis

INF, NAN = math.inf, math.nan


def table_of(curves: dict[str, tuple], *, beta=None) -> pd.DataFrame:
    """A sensitivity table from one seed per lr: {optimizer: (log10 lrs, losses)}; inf diverged, NaN errored."""
    rows = []
    for optimizer, (xs, ys) in curves.items():
        for x, y in zip(xs, ys):
            status = "error" if math.isnan(y) else "diverged" if math.isinf(y) else "ok"
            rows.append(dict(trial_id=f"{optimizer}{x}", optimizer=optimizer, lr=10.0 ** x, beta=beta, decay=None,
                             seed=0, status=status, min_train_loss=y, min_test_loss=y))
    return analysis.sensitivity_table(pd.DataFrame(rows))


def width_row(series, best_lr, best, threshold, low, high, censored, *, rtol, atol, beta=NAN):
    return dict(series=series, label=series, variant="", decay=None, beta=beta, metric="min_train_loss",
                rtol=rtol, atol=atol, best_lr=best_lr, best=best, threshold=threshold, low_lr=10 ** low,
                high_lr=10 ** high, width_decades=high - low, censored=censored)


def test_parabola_valley_width_is_analytic_when_the_crossings_are_grid_points():
    x = np.arange(-5, 1.001, 0.25)
    table = table_of({"sgd": (x, (x + 2) ** 2 + 1)})  # best 1 at lr 1e-2
    # within 25%: (x + 2)^2 <= 0.25, i.e. half a decade either side
    result = analysis.valley_width(table, rtol=0.25)
    expected = pd.DataFrame([width_row("sgd", 1e-2, 1.0, 1.25, -2.5, -1.5, False, rtol=0.25, atol=0.0)])
    assert_frame_equal(result, expected)


@pytest.mark.parametrize("rtol, atol", [(0.0, 0.3), (0.2, 0.1), (0.5, 0.0)])
def test_parabola_valley_width_converges_to_the_analytic_width(rtol, atol):
    x = np.arange(-6, 2.0001, 0.01)
    a, y0 = 0.7, 0.4
    table = table_of({"adam": (x, a * (x + 3) ** 2 + y0)})
    result = analysis.valley_width(table, rtol=rtol, atol=atol).iloc[0]
    analytic = 2 * math.sqrt((atol + rtol * y0) / a)
    assert result["width_decades"] == pytest.approx(analytic, abs=1e-4)
    assert result["best_lr"] == pytest.approx(1e-3) and not result["censored"]


def test_valley_width_with_diverged_and_errored_points_and_grid_edges():
    table = table_of({
        # diverged left neighbour ends the valley at the point inside; NaN (errored) lr is skipped
        "a": ([-3, -2, -1.5, -1, 0], [INF, 1.0, NAN, 1.05, 3.0]),
        "b": ([-2, -1, 0], [1.0, 1.02, 2.0]),  # the valley runs into the grid's left edge
        "c": ([-2, -1], [INF, INF]),  # never finite
    })
    result = analysis.valley_width(table, rtol=0.1)
    frac_a = (1.1 - 1.05) / (3.0 - 1.05)
    frac_b = (1.1 - 1.02) / (2.0 - 1.02)
    expected = pd.DataFrame([
        width_row("a", 1e-2, 1.0, 1.1, -2.0, -1.0 + frac_a, False, rtol=0.1, atol=0.0),
        width_row("b", 1e-2, 1.0, 1.1, -2.0, -1.0 + frac_b, True, rtol=0.1, atol=0.0),
        dict(series="c", label="c", variant="", decay=None, beta=NAN, metric="min_train_loss", rtol=0.1, atol=0.0,
             best_lr=NAN, best=NAN, threshold=NAN, low_lr=NAN, high_lr=NAN, width_decades=NAN, censored=False),
    ])
    assert_frame_equal(result, expected)


def test_valley_width_is_per_beta_and_checks_its_arguments():
    table = pd.concat([table_of({"sgd-hd": ([-2, -1, 0], [2.0, 1.0, 2.0])}, beta=1e-4),
                       table_of({"sgd-hd": ([-2, -1, 0], [1.5, 1.0, 1.5])}, beta=1e-3)], ignore_index=True)
    result = analysis.valley_width(table, rtol=0.0, atol=0.25)
    assert result["beta"].tolist() == [1e-4, 1e-3]
    assert result["width_decades"].tolist() == pytest.approx([0.5, 1.0])
    with pytest.raises(ValueError, match="rtol and atol must be >= 0"):
        analysis.valley_width(table, rtol=-1)
    with pytest.raises(ValueError, match="metric must be one of min_test_loss, min_train_loss"):
        analysis.valley_width(table, metric="acc")


def test_expected_best_on_a_uniform_grid():
    # losses 1..4, one per grid point: P(min of k >= j) = ((5 - j)/4)^k
    assert analysis.expected_best_of([4, 1, 3, 2], [1, 2, 3]) == pytest.approx([2.5, 1.875, 1.5625])
    assert analysis.expected_best_of([4, 1, 3, 2], [1, 2, 3], best="max") == pytest.approx([2.5, 3.125, 3.4375])
    assert analysis.expected_best_of(np.arange(1.0, 11.0), [200])[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="best must be 'min' or 'max'"):
        analysis.expected_best_of([1.0], [1], best="median")


def test_expected_best_matches_enumerating_every_draw():
    values = np.array([0.3, 1.7, 0.9, 0.9, 2.5])
    for k in (1, 2, 3):
        draws = list(itertools.product(values, repeat=k))
        assert analysis.expected_best_of(values, [k])[0] == pytest.approx(np.mean([min(d) for d in draws]))
        assert analysis.expected_best_of(values, [k], best="max")[0] == pytest.approx(np.mean([max(d) for d in draws]))


def test_expected_best_table_caps_diverged_configs_and_skips_errored_ones():
    table = table_of({"a": ([-2, -1, 0, 1], [1.0, 2.0, INF, NAN]), "b": ([-2, -1], [0.5, 3.0])})
    result = analysis.expected_best(table)
    # a draws from (1, 2, cap = 3), the worst finite mean in the table; b from (0.5, 3)
    expected = pd.DataFrame({
        "series": ["a"] * 3 + ["b"] * 3, "label": ["a"] * 3 + ["b"] * 3, "variant": [""] * 6, "decay": [None] * 6,
        "metric": ["min_train_loss"] * 6, "n_configs": [3] * 3 + [2] * 3, "k": [1, 2, 3] * 2,
        "expected": [2.0, 14 / 9, 4 / 3, 1.75, 1.125, 0.8125],
    })
    assert_frame_equal(result, expected)
    capped = analysis.expected_best(table, k=[1], cap=10.0)
    assert capped["expected"].tolist() == pytest.approx([13 / 3, 1.75])


def test_importance_attributes_a_loss_that_depends_on_lr_only():
    rng = np.random.default_rng(0)
    rows = []
    for lr, beta, seed in itertools.product([1e-4, 1e-3, 1e-2, 1e-1, 1.0], [1e-6, 1e-5, 1e-4, 1e-3], [0, 1]):
        loss = (math.log10(lr) + 2) ** 2 + rng.normal(0, 0.01)
        status, loss = ("diverged", INF) if lr == 1.0 and seed == 0 else ("ok", loss)
        rows.append(dict(trial_id=f"{lr}{beta}{seed}", optimizer="sgd-hd", lr=lr, beta=beta, decay=None, seed=seed,
                         status=status, min_train_loss=loss, min_test_loss=loss))
    rows += [dict(trial_id=f"sgd{lr}", optimizer="sgd", lr=lr, beta=None, decay=None, seed=0, status="ok",
                  min_train_loss=lr, min_test_loss=lr) for lr in (0.1, 1.0)]
    result = analysis.importance(pd.DataFrame(rows))
    assert result.columns.tolist() == ["series", "label", "variant", "decay", "metric", "param", "importance",
                                       "n_trials"]
    assert result["series"].unique().tolist() == ["sgd-hd"]  # sgd has no β to weigh
    scores = result.set_index("param")["importance"]
    assert scores["lr"] > 0.9 and scores["lr"] + scores["beta"] == pytest.approx(1.0)
    assert (result["n_trials"] == 40).all()


def test_accuracy_valleys_and_expected_best_are_maximised():
    rows = [dict(trial_id=str(x), optimizer="sgd", lr=10.0 ** x, beta=None, decay=None, seed=0, status="ok",
                 min_train_loss=0.1, min_test_loss=0.1, best_test_acc=acc)
            for x, acc in ((-3, 0.5), (-2, 0.9), (-1, 0.8), (0, 0.1))]
    table = analysis.sensitivity_table(pd.DataFrame(rows), metrics=("best_test_acc",))
    width = analysis.valley_width(table, metric="best_test_acc", rtol=0.0, atol=0.15).iloc[0]
    # acc >= 0.75: from 0.375 of the way left of 1e-2 to 1/14 of the way right of 1e-1
    assert (width["best"], width["threshold"]) == pytest.approx((0.9, 0.75))
    assert width["width_decades"] == pytest.approx(0.375 + 1 + 0.05 / 0.7)
    expected = analysis.expected_best(table, metric="best_test_acc", k=[1, 2])
    assert expected["expected"].tolist() == pytest.approx(
        analysis.expected_best_of([0.5, 0.9, 0.8, 0.1], [1, 2], best="max"))


def test_expected_best_of_takes_one_set_of_values_per_row():
    rows = np.array([[3.0, 1.0, 2.0], [5.0, 4.0, 9.0]])
    both = analysis.expected_best_of(rows, [1, 2])
    assert both.shape == (2, 2)
    for r, values in enumerate(rows):
        np.testing.assert_allclose(both[:, r], analysis.expected_best_of(values, [1, 2]))
