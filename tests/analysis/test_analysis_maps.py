"""Two-axis maps (heatmap_table, heatmap_figure) and the ranking figure, on tables whose answers are known."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

import analysis
from analysis import map_plots, plots, robustness_plots, style


def axes(n=1):
    return Figure(figsize=(3, 2)).subplots(1, n, squeeze=False)[0]


def _marks(ax, gid):
    return [(x, y) for line in ax.lines if line.get_gid() == gid for x, y in zip(*line.get_data())]


@pytest.fixture
def momentum_trials():
    """sgdn over α0 × momentum, best at (0.01, 0.9); lr 1 with momentum 0.99 diverges; HD over α0 × β × momentum."""
    rows = []
    for lr in (1e-3, 1e-2, 1e-1, 1.0):
        for m in (0.0, 0.9, 0.99):
            for seed in (0, 1):
                loss = math.inf if (lr, m) == (1.0, 0.99) else 1 + abs(math.log10(lr) + 2) + abs(m - 0.9)
                rows.append(dict(trial_id=f"sgdn{lr}{m}{seed}", optimizer="sgdn", lr=lr, beta=None, decay=None,
                                 seed=seed, momentum=m, status="diverged" if math.isinf(loss) else "ok",
                                 min_train_loss=loss, min_test_loss=loss + 0.1, init_train_loss=2.3,
                                 init_test_loss=2.4))
                for beta in (1e-4, 1e-3):  # β = 1e-3 is better everywhere: the map is the β = 1e-3 slice
                    hd = loss - (0.5 if beta == 1e-3 else 0.0)
                    rows.append(dict(trial_id=f"hd{lr}{m}{beta}{seed}", optimizer="sgdn-hd", lr=lr, beta=beta,
                                     decay=None, seed=seed, momentum=m, status="diverged" if math.isinf(hd) else "ok",
                                     min_train_loss=hd, min_test_loss=hd + 0.1, init_train_loss=2.3,
                                     init_test_loss=2.4))
    return pd.DataFrame(rows)


def test_heatmap_table_has_a_cell_per_configuration_and_marks_the_best(momentum_trials):
    assert analysis.map_axes(momentum_trials) == ["beta", "momentum"]
    cells = analysis.heatmap_table(momentum_trials, axis="momentum")
    train = cells[cells["metric"] == "min_train_loss"]
    assert set(train["series"]) == {"sgdn", "sgdn-hd"}
    sgdn = train[train["series"] == "sgdn"]
    assert len(sgdn) == 12 and (sgdn["n"] == 2).all() and set(sgdn["scale"]) == {"log1m"}
    (best,) = sgdn[sgdn["best"]].itertuples(index=False)
    assert (best.lr, best.value, best.mean) == (1e-2, 0.9, 1.0)
    blown = sgdn[(sgdn["lr"] == 1.0) & (sgdn["value"] == 0.99)]
    assert np.isinf(blown["mean"]).all() and (blown["n_diverged"] == 2).all()
    hd = train[train["series"] == "sgdn-hd"]
    assert set(hd["at"]) == {"beta=0.001"} and len(hd) == 12  # the slice through the best cell
    assert hd.loc[hd["best"], "mean"].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="axis must be the second axis of the map"):
        analysis.heatmap_table(momentum_trials, axis="lr")



def test_the_best_cell_of_an_accuracy_map_is_its_highest(momentum_trials):
    """Accuracy 1 − loss/10: the best cell is the loss map's best, (0.01, 0.9), not the worst finite one."""
    trials = momentum_trials.assign(best_test_acc=1 - momentum_trials["min_train_loss"] / 10)
    trials.loc[~np.isfinite(trials["min_train_loss"]), "best_test_acc"] = 0.1
    cells = analysis.heatmap_table(trials, axis="momentum", metrics=("best_test_acc",))
    best = cells[cells["best"] & (cells["series"] == "sgdn")]
    assert best[["lr", "value"]].values.tolist() == [[0.01, 0.9]]

def test_heatmap_plot_marks_the_best_and_the_diverged_cells(momentum_trials):
    cells = analysis.heatmap_table(momentum_trials, axis="momentum")
    ax = map_plots.heatmap_plot(cells, series="sgdn", ax=axes()[0])
    assert _marks(ax, "best") == [(1e-2, 0.9)]
    assert _marks(ax, "diverged") == [(1.0, 0.99)]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "function"  # momentum in decades of 1 − m
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "0.9", "0.99"]
    (mesh, *_) = ax.collections
    assert mesh.get_cmap().name == map_plots.CMAP == "cividis"
    with pytest.raises(ValueError, match="series must be one of sgdn, sgdn-hd; got 'adam'"):
        map_plots.heatmap_plot(cells, series="adam", ax=axes()[0])


def test_heatmap_figure_gives_every_map_one_colour_scale(momentum_trials):
    cells = pd.concat([analysis.heatmap_table(momentum_trials, axis=a) for a in ("beta", "momentum")])
    fig = analysis.heatmap_figure(cells)
    maps = [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.collections]
    # over β, one map per momentum (a variant of the HD series there); over momentum, sgdn and sgdn-hd at its best β
    titles = {ax.get_title().split("\n")[0] for ax in maps}
    assert titles == {"sgdn-hd [momentum=0]", "sgdn-hd [momentum=0.9]", "sgdn-hd [momentum=0.99]", "sgdn",
                      "sgdn-hd @ beta=0.001"}
    assert len(maps) == 10  # train and test each
    norms = {(m.collections[0].norm.vmin, m.collections[0].norm.vmax) for m in maps}
    assert len(norms) == 1
    low, high = norms.pop()
    assert low == pytest.approx(0.5) and high <= 2.4  # the best mean up to at most L0
    assert sum(ax.get_label() == "<colorbar>" for ax in fig.axes) == 1
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["best cell", "diverged ▲", "all seeds errored"]


def test_ranking_plot_puts_the_lowest_on_top_and_marks_significant_neighbours():
    ranking = pd.DataFrame({"metric": "m", "task": "", "rank": [1, 2, 3], "series": ["a", "b", "c"],
                            "at": ["", "beta=0.1", ""], "value": [0.1, 0.2, 0.9], "ci_low": [0.05, 0.15, 0.8],
                            "ci_high": [0.15, 0.25, 1.0], "resolved": True, "next": ["b", "c", ""],
                            "difference": [-0.1, -0.7, np.nan], "diff_low": [-0.2, -0.8, np.nan],
                            "diff_high": [0.05, -0.6, np.nan], "significant": [False, True, False],
                            "mark": ["≈", "<", ""]})
    ax = robustness_plots.ranking_plot(ranking, ax=axes()[0])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b @ beta=0.1", "c"]
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # rank 1 at the top
    assert [t.get_text() for t in ax.texts] == ["≈", "<"]
    fig = robustness_plots.ranking_figure(pd.concat([ranking.assign(statistic="lr_sensitivity"),
                                                     ranking.assign(statistic="best_loss")]))
    assert len(fig.axes) == 2 and fig.get_layout_engine() is None  # a fixed layout: no label measuring


def test_many_panels_wrap_and_take_a_fixed_layout():
    rows = []
    for k in range(8):  # eight base optimizers: more than MAX_COLUMNS columns of panels
        for lr in (1e-3, 1e-2, 1e-1):
            for seed in (0, 1):
                for label in (f"opt{k}", f"opt{k}-v1"):
                    rows.append(dict(trial_id=f"{label}{lr}{seed}", optimizer=label, label=label, lr=lr, beta=None,
                                     decay=None, seed=seed, status="ok", min_train_loss=1 + abs(math.log10(lr) + 2),
                                     min_test_loss=1.1, best_test_acc=0.5, final_test_acc=0.5))
    fig = analysis.valley_figure(analysis.sensitivity_table(pd.DataFrame(rows)))
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == 16 and len(fig.axes) == 4 * plots.MAX_COLUMNS  # two blocks of train/test rows
    assert [ax.get_title() for ax in fig.axes[:plots.MAX_COLUMNS]] == [f"opt{k}" for k in range(plots.MAX_COLUMNS)]
    assert fig.get_layout_engine() is None and len(shown) > style.CONSTRAINED_PANELS
    assert len(fig.legends) == 1 and len(fig.legends[0].get_texts()) == 16
