"""Each figure function runs and draws the expected lines and markers (small Agg figures)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

import analysis
from analysis import curve_plots, plots, robustness_plots, style

INF, NAN = math.inf, math.nan


def axes(n=1):
    return Figure(figsize=(3, 2)).subplots(1, n, squeeze=False)[0]


def data_lines(ax):
    return [line for line in ax.lines if line.get_gid() is None]


def markers(ax, gid):
    return [(x, y) for line in ax.lines if line.get_gid() == gid for x, y in zip(*line.get_data())]


@pytest.fixture
def trials():
    rows = []

    def add(optimizer, lr, seed, loss, *, beta=None, decay=None):
        status = "error" if math.isnan(loss) else "diverged" if math.isinf(loss) else "ok"
        rows.append(dict(trial_id=f"{optimizer}{lr}{beta}{decay}{seed}", optimizer=optimizer, lr=lr, beta=beta,
                         decay=decay, seed=seed, status=status, min_train_loss=loss, min_test_loss=loss + 0.1,
                         best_test_acc=1 - loss / 4, final_test_acc=1 - loss / 4))

    for seed in (0, 1):
        for lr, loss in ((1e-3, 2.0), (1e-2, 1.0), (1e-1, 1.5), (1.0, INF)):
            add("sgd", lr, seed, loss + 0.01 * seed)
            add("sgd", lr, seed, loss - 0.2 + 0.01 * seed, decay="step:25:0.5")
        for lr, loss in ((1e-4, 1.2), (1e-3, 0.8), (1e-2, NAN)):
            add("adam", lr, seed, loss)
        for beta in (1e-5, 1e-4, 1e-3):
            for lr in (1e-3, 1e-2):
                add("sgd-hd", lr, seed, 1.0 + math.log10(beta) / 10 + lr, beta=beta)
    return pd.DataFrame(rows)


@pytest.fixture
def table(trials):
    return analysis.sensitivity_table(trials)


def test_valley_plot_draws_lines_and_marks_diverged_and_errored_points(table):
    ax = plots.valley_plot(table[table["label"] != "sgd-hd"], ax=axes()[0])
    assert [line.get_label() for line in data_lines(ax)] == ["adam", "sgd", "sgd (step:25:0.5)"]
    assert [len(line.get_xdata()) for line in data_lines(ax)] == [2, 3, 3]  # finite points only
    # one ▲ per diverged configuration (lr 1 of both sgd series, both best at lr 1e-2), one ✕ for
    # adam's all-errored lr; line i's markers sit STAGGER·i below the top so none hides another
    top = style.TOP
    assert markers(ax, "diverged") == [(100.0, top - style.STAGGER), (100.0, top - 2 * style.STAGGER)]
    assert markers(ax, "error") == [(pytest.approx(10.0), top)]
    assert ax.get_xscale() == "log"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "diverged (at top)" in legend and "all seeds errored (at top)" in legend


def test_a_finite_loss_far_above_l0_is_marked_at_the_top_and_does_not_flatten_the_panel(trials):
    """A run that blew up without diverging (min test loss 35 where L0 is about 2): the panel ends at
    ABOVE × the highest starting loss, the line stops at the edge, the point is marked there."""
    blown = trials[(trials["optimizer"] == "sgd") & trials["decay"].isna() & (trials["lr"] == 1e-1)].copy()
    blown["min_train_loss"] = 35.0
    rows = pd.concat([trials[~trials.index.isin(blown.index)], blown])
    table = analysis.sensitivity_table(rows)
    ax = plots.valley_plot(table[table["label"] == "sgd"], ax=axes()[0])
    starts = table[(table["label"] == "sgd") & (table["metric"] == "min_train_loss")].sort_values("lr")
    ceiling = style.ABOVE * starts.groupby("series")["mean"].first().max()
    assert ax.get_ylim()[1] == pytest.approx(ceiling)
    assert [x for x, _ in markers(ax, "above")] == [pytest.approx(10.0)]  # lr 0.1 / best lr 0.01
    assert max(max(line.get_ydata()) for line in data_lines(ax)) == pytest.approx(ceiling)
    assert "finite, above the panel (at top)" in [t.get_text() for t in ax.get_legend().get_texts()]
    ax = plots.valley_plot(analysis.sensitivity_table(trials)[lambda t: t["label"] == "sgd"], ax=axes()[0])
    assert markers(ax, "above") == []  # nothing far above L0: the panel is as matplotlib sizes it


def test_valley_plot_names_a_series_without_any_finite_point(table):
    blown = table[table["label"] == "sgd"].assign(mean=INF, best_lr=NAN, lr_ratio=NAN, series="blown")
    ax = plots.valley_plot(pd.concat([table[table["label"] == "adam"], blown]), ax=axes()[0])
    assert [line.get_label() for line in data_lines(ax)] == ["adam", "blown (no finite loss)"]


def test_valley_figure_has_train_and_test_panels_with_hd_at_its_best_beta(table):
    fig = analysis.valley_figure(table)
    panels = fig.axes
    assert [ax.get_ylabel() for ax in panels] == ["min train loss", "min test loss"]
    for ax in panels:
        assert len(data_lines(ax)) == 4  # adam, sgd, sgd (decay), sgd-hd at one β
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "sgd-hd, β=1e-05" in labels  # the lowest loss is at β = 1e-5


def _many_series(n_per_base=4):
    """A sensitivity table of 3 base optimizers × n_per_base labelled series (more than MAX_SERIES lines)."""
    rows = []
    for base in ("sgd", "sgdn", "adam"):
        for k in range(n_per_base):
            label = base if k == 0 else f"{base}-v{k}"
            for seed in (0, 1):
                for lr in (1e-3, 1e-2, 1e-1):
                    loss = 1.0 + abs(math.log10(lr) + 2) * (k + 1) / 4
                    rows.append(dict(trial_id=f"{label}{lr}{seed}", optimizer=base, label=label, lr=lr, beta=None,
                                     decay=None, seed=seed, status="ok", min_train_loss=loss,
                                     min_test_loss=loss + 0.1, best_test_acc=0.5, final_test_acc=0.5))
    return analysis.sensitivity_table(pd.DataFrame(rows))


def _styles_distinct(ax):
    from matplotlib.colors import to_rgb

    lines = data_lines(ax)
    for i, a in enumerate(lines):
        for b in lines[:i]:
            close = np.linalg.norm(np.subtract(to_rgb(a.get_color()), to_rgb(b.get_color()))) < style.CLOSE_RGB
            assert not (close and a.get_linestyle() == b.get_linestyle()), (a.get_label(), b.get_label())


def test_no_two_lines_of_a_panel_share_a_colour_and_a_line_style():
    table = _many_series(3)
    assert table["series"].nunique() == 9
    # 27 colours from three palettes: tab10's brown, red, ... come back in Set1 (the repeated-brown report)
    palette = style.palette_for(sorted(table["series"]))
    for i in range(len(palette)):
        fig = analysis.valley_figure(table, palette=dict(list(palette.items())[i:] + list(palette.items())[:i]),
                                     max_series=100)
        for ax in fig.axes:
            assert len(data_lines(ax)) == 9
            _styles_distinct(ax)
    six = table[table["series"].isin(sorted(palette)[:len(style.LINESTYLES)])]
    ax = plots.valley_plot(six, palette={name: "tab:brown" for name in palette}, ax=axes()[0])
    _styles_distinct(ax)
    assert len({line.get_linestyle() for line in data_lines(ax)}) == len(style.LINESTYLES)


def test_a_series_at_another_best_beta_in_the_test_panel_is_another_line_style(trials):
    # sgd-hd's best β is 1e-5 for the training loss and 1e-3 for the test loss: two legend
    # entries of one colour (the reported "same brown"), told apart by their style
    hd = trials["optimizer"] == "sgd-hd"
    trials.loc[hd & (trials["beta"] == 1e-3), "min_test_loss"] -= 1.0
    fig = analysis.valley_figure(analysis.sensitivity_table(trials))
    handles = dict(zip([t.get_text() for t in fig.legends[0].get_texts()], fig.legends[0].legend_handles))
    a, b = handles["sgd-hd, β=1e-05"], handles["sgd-hd, β=0.001"]
    assert a.get_color() == b.get_color() and a.get_linestyle() != b.get_linestyle()
    for ax in fig.axes:
        _styles_distinct(ax)


def test_valley_figure_facets_by_base_optimizer_beyond_max_series():
    table = _many_series(3)
    small = analysis.valley_figure(table[table["label"].map(plots.base_optimizer) != "adam"])
    assert len(small.axes) == 2  # 6 lines: train and test side by side
    fig = analysis.valley_figure(table)
    assert len(fig.axes) == 6  # train and test rows × adam, sgd, sgdn columns
    assert [ax.get_title() for ax in fig.axes[:3]] == ["adam", "sgd", "sgdn"]
    for ax in fig.axes:
        assert len(data_lines(ax)) == 3
        base = ax.get_title() or None
        if base:
            assert all(plots.base_optimizer(line.get_label()) == base for line in data_lines(ax))
    colors = {}
    for ax in fig.axes:
        for line in data_lines(ax):
            colors.setdefault(line.get_label(), line.get_color())
            assert colors[line.get_label()] == line.get_color()  # one colour per series across panels
    assert len(fig.legends[0].get_texts()) == 9


def test_valley_figure_rings_unresolved_points(table):
    unresolved = pd.DataFrame({"series": ["sgd", "adam"], "beta": [NAN, NAN], "metric": ["min_train_loss"] * 2,
                               "lr": [1e-2, 1e-3]})
    fig = analysis.valley_figure(table, unresolved=unresolved)
    train, test = fig.axes
    assert sorted(markers(train, "unresolved")) == [(1.0, pytest.approx(0.8)), (1.0, pytest.approx(1.005))]
    assert markers(test, "unresolved") == []
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts[-1] == style.MARKERS["unresolved"][1]


def test_decay_figure_has_a_panel_per_base_optimizer(table):
    assert plots.decay_labels(table) == ["sgd"]
    fig = analysis.decay_figure(table)
    assert len(fig.axes) == 2  # train and test rows, one column
    assert [len(data_lines(ax)) for ax in fig.axes] == [2, 2]
    with pytest.raises(ValueError, match="no label has both constant-step and decay runs"):
        analysis.decay_figure(table[table["decay"].isna()])


def test_hd_figure_draws_one_line_per_beta(table):
    assert plots.hd_series(table) == ["sgd-hd"]
    fig = analysis.hd_figure(table)
    assert [len(data_lines(ax)) for ax in fig.axes] == [3, 3]
    assert [line.get_label() for line in data_lines(fig.axes[0])] == ["β=1e-05", "β=0.0001", "β=0.001"]
    with pytest.raises(ValueError, match="no HD series"):
        analysis.hd_figure(table[table["beta"].isna()])


@pytest.fixture
def curve_stats():
    rows = []
    for series in ("sgd", "adam"):
        for epoch in (1, 2, 3):
            for variable in ("train_loss", "test_loss", "train_acc", "test_acc", "lr", "gamma_unit", "gamma_global"):
                band = series == "sgd"  # adam ran one seed: no band
                rows.append(dict(series=series, variable=variable, epoch=epoch, n=2 if band else 1, mean=1.0 / epoch,
                                 se=0.1 if band else NAN, low=1.0 / epoch - 0.2 if band else NAN,
                                 high=1.0 / epoch + 0.2 if band else NAN))
    return pd.DataFrame(rows)


def test_curve_plot_draws_a_line_per_series_and_bands_where_seeds_allow(curve_stats):
    ax = curve_plots.curve_plot(curve_stats, y="train_loss", ax=axes()[0])
    assert [line.get_label() for line in ax.lines] == ["sgd", "adam"]
    assert len(ax.collections) == 1  # sgd's band
    assert ax.get_yscale() == "log"
    assert curve_plots.curve_plot(curve_stats, y="test_acc", ax=axes()[0]).get_yscale() == "linear"


def test_curves_figure_gamma_figure(curve_stats):
    fig = analysis.curves_figure(curve_stats)
    assert [ax.get_ylabel() for ax in fig.axes] == ["train loss", "test loss", "train acc", "test acc"]
    assert all(len(ax.lines) == 2 for ax in fig.axes)
    lr = analysis.curves_figure(curve_stats, variables=["lr"])
    assert len(lr.axes) == 1 and lr.axes[0].get_yscale() == "log"
    gamma = analysis.gamma_figure(curve_stats)
    assert [ax.get_title() for ax in gamma.axes] == ["sgd", "adam"]
    assert [[line.get_label() for line in ax.lines] for ax in gamma.axes] == [["unit", "global"]] * 2
    with pytest.raises(ValueError, match="no curve data"):
        analysis.curves_figure(curve_stats, variables=["nothing"])


def test_combination_plot_draws_an_errorbar_line_per_label():
    table = pd.DataFrame({"line": ["a"] * 3 + ["b"] * 2, "gamma": [0.0, 0.5, 1.0, 0.0, 1.0],
                          "mean": [0.9, 0.95, 0.93, 0.8, 0.85], "se": [0.01, 0.01, NAN, 0.02, 0.02]})
    ax = curve_plots.combination_plot(table, ax=axes()[0])
    assert len(ax.containers) == 2
    assert [len(c.lines[0].get_xdata()) for c in ax.containers] == [3, 2]
    assert len(analysis.combination_figure(table).axes) == 1


def test_expected_best_and_importance_plots(table, trials):
    expected = analysis.expected_best(table)
    ax = robustness_plots.expected_best_plot(expected, ax=axes()[0])
    assert len(ax.lines) == expected["series"].nunique()
    assert max(len(line.get_xdata()) for line in ax.lines) == 6  # sgd-hd: 3 β × 2 lr configs
    both = pd.concat([expected, analysis.expected_best(table, metric="min_test_loss")])
    assert len(analysis.expected_best_figure(both).axes) == 2
    importance = analysis.importance(trials)
    ax = robustness_plots.importance_plot(importance, ax=axes()[0])
    assert sum(len(c) for c in ax.containers) == len(importance) == 2
    assert len(analysis.importance_figure(importance).axes) == 1


def test_palette_for_keeps_given_colours_and_fills_gaps():
    colors = style.palette_for(["a", "b", "a"], {"a": (1, 0, 0)})
    assert list(colors) == ["a", "b"] and colors["a"] == (1, 0, 0) and len(colors["b"]) == 3
    assert len(set(style.palette_for([f"s{i}" for i in range(12)]).values())) == 12
    assert np.allclose(style.palette_for(["x"], "viridis")["x"], style.palette_for(["y"], "viridis")["y"])


def test_a_one_epoch_curve_is_a_marker_and_bands_stay_where_values_can_be():
    # a --smoke run: one epoch, three seeds, bands that overshoot (acc above 1, loss below 0)
    rows = [dict(series=s, variable=v, epoch=1, n=3, mean=m, se=0.1, low=m - 0.3, high=m + 0.3)
            for s in ("sgd", "adam") for v, m in (("train_loss", 0.2), ("test_acc", 0.9))]
    fig = analysis.curves_figure(pd.DataFrame(rows))
    for ax in fig.axes:
        drawn = [line for line in ax.lines if line.get_label() in ("sgd", "adam")]
        assert len(drawn) == 2 and all(line.get_marker() == "o" and len(line.get_xdata()) == 1 for line in drawn)
        bars = np.concatenate([seg[:, 1] for c in ax.collections for seg in c.get_segments()])
        if ax.get_ylabel() == "test acc":
            assert bars.max() == pytest.approx(1.0) and bars.min() == pytest.approx(0.6)
        else:
            assert bars.min() == pytest.approx(0.1)  # clipped at half the smallest mean, above zero
        assert all(float(t).is_integer() for t in ax.get_xticks())


def test_bands_over_epochs_are_clipped_to_the_unit_interval_for_accuracy(curve_stats):
    stats = curve_stats.assign(high=curve_stats["high"] + 0.5, low=curve_stats["low"] - 2.0)
    ax = curve_plots.curve_plot(stats, y="test_acc", ax=axes()[0])
    ys = np.concatenate([path.vertices[:, 1] for c in ax.collections for path in c.get_paths()])
    assert ys.min() >= 0.0 and ys.max() <= 1.0
    ax = curve_plots.curve_plot(stats, y="train_loss", ax=axes()[0])
    ys = np.concatenate([path.vertices[:, 1] for c in ax.collections for path in c.get_paths()])
    assert ax.get_yscale() == "log" and ys.min() > 0
    assert all(float(t).is_integer() for t in ax.get_xticks())
