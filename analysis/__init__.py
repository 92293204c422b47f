"""Analysis of sensitivity studies: parquet tables in, statistics, figures and tables out.

Depends only on pandas, pyarrow, numpy, matplotlib, seaborn and optuna; never on torch, ray or
``sensitivity`` — the parquet schema (README.md, "The results tables") is the whole contract.

    trials, curves = analysis.load("results/quickstart")
    table = analysis.sensitivity_table(trials)
    analysis.valley_figure(table)
    analysis.metrics_table(trials, axis="beta")
    analysis.compare(trials, a="adam-hd", b="adam", axis="lr", statistic="lr_sensitivity")
"""
from ._io import ResultsError, StaleRowsWarning, load
from .axes import axis_frame, axis_scale, swept_axes
from .columns import hyperparameter_columns, is_hyperparameter, prepare
from .comparisons import compare, comparisons_table, ranking_table
from .curve_plots import combination_figure, combination_plot, curve_plot, curves_figure, gamma_figure
from .map_plots import heatmap_figure, heatmap_plot
from .maps import heatmap_table, map_axes
from .metrics import metrics_summary, metrics_table
from .plots import decay_figure, hd_figure, valley_figure, valley_plot
from .report import write_report
from .robustness import expected_best, expected_best_of, importance, valley_width
from .robustness_plots import (
    expected_best_figure, expected_best_plot, importance_figure, importance_plot, ranking_figure, ranking_plot,
)
from .stats import (
    best_beta, best_configs, best_trials, combination_table, config_table, curve_stats, sensitivity_table,
    higher_is_better, swept, t_quantile, threshold_table,
)
from .tables import best_config_summary, expected_best_summary, threshold_summary, to_markdown

__all__ = [
    "ResultsError", "StaleRowsWarning", "load", "prepare", "write_report",
    "is_hyperparameter", "hyperparameter_columns", "swept_axes", "axis_frame", "axis_scale",
    "higher_is_better", "sensitivity_table", "swept", "best_beta", "config_table", "best_configs", "best_trials",
    "curve_stats",
    "threshold_table", "combination_table", "t_quantile",
    "valley_width", "expected_best", "expected_best_of", "importance", "metrics_table", "metrics_summary",
    "compare", "comparisons_table", "ranking_table", "heatmap_table", "map_axes",
    "valley_plot", "valley_figure", "decay_figure", "hd_figure", "curve_plot", "curves_figure", "gamma_figure",
    "combination_plot", "combination_figure", "expected_best_plot", "expected_best_figure", "importance_plot",
    "importance_figure", "heatmap_plot", "heatmap_figure", "ranking_plot", "ranking_figure",
    "to_markdown", "best_config_summary", "threshold_summary", "expected_best_summary",
]
