"""``write_report``: every figure and table a results directory supports (``sensitivity plot``).

Figures go out as PNG (quantized to 256 colours: a third of the bytes, no visible change) and
PDF, tables as CSV (the tidy statistic) and markdown (the readable summary); ``metrics.csv`` holds
the sensitivity statistics over every swept axis with bootstrap intervals (``analysis.metrics``),
``comparisons.csv`` every paired comparison (``analysis.comparisons``), and ``report.html`` the
figures and the tables that matter on one self-contained page (``analysis.html``), each table capped
at ``html.MAX_ROWS`` rows with its CSV beside it. Anything the data cannot support is skipped with a
one-line note saying why.
"""
from __future__ import annotations

import io
import pathlib
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd

from . import (axes, comparisons, curve_plots, html, map_plots, maps, metrics, plots, robustness, robustness_plots,
               stats, tables)
from ._io import StaleRowsWarning, load
from .location import Location, figures_dir

__all__ = ["write_report", "VALLEY_TOLERANCES"]

# (rtol, atol) pairs reported for the valley width: within 10% of the best, within 0.05 nats
VALLEY_TOLERANCES = metrics.TOLERANCES


METRICS_NOTE = ("Per series and swept axis (α0, β, momentum, ...), on the line through the series' best "
                "configuration: the best value and its mean loss; the valley width within the tolerance of the best "
                "(decades on a log axis, the axis's units on a linear one); the expected best after k random draws; "
                "the sensitivity (Wortsman et al. 2023's lr sensitivity over that axis): the mean over the grid of "
                "min(loss, L0) minus the best, L0 the loss at initialization. Intervals resample seeds, each with "
                "all its runs. Every line, at every fixed α0/β, is in metrics.csv.")
RANKING_NOTE = ("Series ordered by lr sensitivity and by best loss over α0 (each HD series at its best β). "
                "'<': significantly lower than the next series (the paired difference's 95% interval excludes 0); "
                "'≈': not. All pairs, on every axis and statistic, are in comparisons.csv.")
BASE_NOTE = ("Each series against its base optimizer (sgd-hd against sgd, adam-cam-hd against adam), paired by seed, "
             "on its sensitivity over each axis and its best loss (every statistic is in comparisons.csv): a "
             "negative difference means the series is lower (less sensitive, or a lower loss).")
RANKED = ("lr_sensitivity", "best_loss")  # the ranking's statistics, on the α0 axis


class _Skip(Exception):
    """Raised by a report item whose data is absent; the message is the reason."""


class _Writer:
    def __init__(self, out: pathlib.Path, echo: Callable[[str], object], title: str):
        self.out, self.echo, self.title, self.paths = out, echo, title, []
        self.figures: list[tuple[str, pathlib.Path]] = []  # (name, png) for report.html

    def figure(self, name: str, fig) -> None:
        if fig.get_layout_engine() is None:  # a fixed layout (style.grid): the title at the top of its margin
            fig.suptitle(self.title, fontsize="small", y=1 - 0.1 / fig.get_figheight(), va="top")
        else:
            fig.suptitle(self.title, fontsize="small")
        paths = [self.out / f"{name}.png", self.out / f"{name}.pdf"]
        self.figures.append((name, paths[0]))
        _write_png(fig, paths[0], dpi=110)
        fig.set_layout_engine("none")  # keep the constrained layout just computed: no second pass
        fig.savefig(paths[1])
        self._wrote(paths)

    def table(self, name: str, frame: pd.DataFrame, summary: pd.DataFrame | None = None) -> None:
        paths = [self.out / f"{name}.csv", self.out / f"{name}.md"]
        frame.to_csv(paths[0], index=False)
        paths[1].write_text(f"# {name.replace('_', ' ')} — {self.title}\n\n"
                            + tables.to_markdown(frame if summary is None else summary))
        self._wrote(paths)

    def _wrote(self, paths) -> None:
        self.paths.extend(paths)
        self.echo("wrote " + " ".join(str(p) for p in paths))


def _write_png(fig, path: pathlib.Path, *, dpi: int) -> None:
    """The figure as a palette PNG: figures use few colours, so 256 lose nothing visible."""
    from PIL import Image  # matplotlib's own dependency

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    image = Image.open(buffer).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def write_report(results_dir, out_dir=None, *, echo: Callable[[str], object] = print) -> list[pathlib.Path]:
    """Write the study's figures and tables to ``out_dir`` (default ``<results_dir>/figures``, or
    ``<study>/figures`` in the working directory for a URI: ``location.figures_dir``).

    Returns the written paths. Raises ``analysis.ResultsError`` (one line) when the results
    directory is missing or corrupt.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StaleRowsWarning)  # said below, in the report's own words
        trials, curves = load(results_dir)
    if trials.attrs.get("stale_rows"):
        echo(f"left out {trials.attrs['stale_rows']} stale rows (an earlier version of the study; "
             f"analysis.load(..., include_stale=True) keeps them)")
    out = pathlib.Path(out_dir) if out_dir is not None else figures_dir(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    studies = trials["study"].dropna().unique() if "study" in trials else []
    title = ", ".join(map(str, studies)) or Location(results_dir).name
    if trials["smoke"].any():  # a --smoke run: 1 epoch on tiny stand-in data, no finding
        title += " (smoke run: 1 epoch, tiny data)"
    w = _Writer(out, echo, title)
    # one colour per name in every figure: methods first, so the main lines get the clearest colours
    methods = sorted(set(trials["method"]))
    palette = plots.palette_for(methods + sorted(set(trials["series"]) - set(methods)))

    table = stats.sensitivity_table(trials)
    valley = stats.swept(table)
    best = stats.best_configs(trials)
    chosen = stats.best_trials(trials, best)
    curve = stats.curve_stats(curves, chosen, hue="method") if len(curves) and len(chosen) else None
    study_text = _study_text(results_dir)
    max_gap = _max_gap(study_text)
    frames = axes.axis_frames(trials, axes.candidate_axes(trials))  # each axis's lines, made once
    with np.errstate(all="ignore"):
        evaluated = metrics.evaluate_all(trials, max_gap=max_gap, frames=frames)
        metric_table = metrics.metrics_from(evaluated, max_gap=max_gap)
        pairs = comparisons.comparisons_from(evaluated)
    ranking = pd.concat([comparisons.ranking_table(metric_table, pairs, statistic=s).assign(statistic=s)
                         for s in RANKED], ignore_index=True)
    lr_rows = metric_table[metric_table["axis"] == "lr"]
    unresolved = lr_rows[(lr_rows["statistic"] == "best_lr") & ~lr_rows["resolved"]]
    unresolved = unresolved[["series", "beta", "metric", "value"]].rename(columns={"value": "lr"})
    base = pairs[pairs["base"]]
    # the page: sensitivity and best loss against the base optimizer (every statistic is in comparisons.csv)
    headline = base[(base["statistic"] == base["axis"] + "_sensitivity") | (base["statistic"] == "best_loss")]

    def sensitivity():
        w.table("sensitivity", table)

    def valleys():
        if valley.empty:
            raise _Skip("no optimizer was run at two or more lr values")
        w.figure("valley", plots.valley_figure(valley, palette=palette, unresolved=unresolved))

    def sensitivity_metrics():
        if metric_table.empty:
            raise _Skip("no optimizer was run at two or more lr values (or three of another hyperparameter)")
        w.table("metrics", metric_table, metrics.metrics_summary(metric_table))

    def paired_comparisons():
        if pairs.empty:
            raise _Skip("no two series share a task and a swept axis")
        important = pd.concat([base, _neighbours(pairs, ranking)]).drop_duplicates()
        w.table("comparisons", pairs, tables.comparison_summary(important))

    def ranking_figure():
        if ranking.empty or ranking["series"].nunique() < 2:
            raise _Skip("fewer than two series were run at two or more lr values")
        w.figure("ranking", robustness_plots.ranking_figure(ranking))
        w.table("ranking", ranking, tables.ranking_summary(ranking))

    def heatmap():
        mapped = maps.map_axes(trials, frames=frames)
        if not mapped:
            raise _Skip("no series sweeps α0 together with a second hyperparameter")
        cells = pd.concat([maps.heatmap_table(trials, axis=a, frame=frames[a]) for a in mapped], ignore_index=True)
        w.figure("heatmap", map_plots.heatmap_figure(cells))
        w.table("heatmap", cells)

    def decay():
        if not plots.decay_labels(valley):
            raise _Skip("no optimizer has both constant-step and lr-decay runs over two or more lr values")
        w.figure("decay", plots.decay_figure(valley, palette=palette))

    def hd():
        if not plots.hd_series(table):
            raise _Skip("no HD optimizer (beta set) was run at two or more lr values")
        w.figure("hd", plots.hd_figure(table))

    def best_table():
        w.table("best_configs", best, tables.best_config_summary(best))

    def learning_curves():
        if curve is None or curve.empty:
            raise _Skip("curves.parquet has no rows for the best configurations")
        w.figure("curves", curve_plots.curves_figure(curve, hue="method", palette=palette))

    def learned_lr():
        if curve is None or not (curve["variable"] == "lr").any():
            raise _Skip("no lr in the curves of the best configurations")
        w.figure("lr", curve_plots.curves_figure(curve, variables=("lr",), hue="method", palette=palette))

    def gammas():
        if curve is None or not curve["variable"].str.startswith("gamma_").any():
            raise _Skip("no gamma_<level> curves (no CAM-HD runs)")
        g = curve[curve["variable"].str.startswith("gamma_")]
        spread = g.groupby(["method", "variable"])["mean"].agg(lambda m: m.max() - m.min())
        moving = spread[spread > 1e-12].index.get_level_values("method").unique()
        if moving.empty:
            raise _Skip("γ does not change over the recorded epochs of any CAM-HD run (delta = 0, or one epoch)")
        w.figure("gamma", curve_plots.gamma_figure(g[g["method"].isin(moving)], hue="method"))

    def combination():
        combo = stats.combination_table(trials)
        if combo.empty:
            raise _Skip("no CAM-HD label sweeps fixed gammas")
        w.figure("combination", curve_plots.combination_figure(combo))
        w.table("combination", combo)

    def thresholds():
        if not any(c.startswith("iters_to_") for c in trials.columns):
            raise _Skip("no iters_to_<threshold> columns (the study set no thresholds)")
        thr = stats.threshold_table(trials)
        w.table("thresholds", thr, tables.threshold_summary(thr))

    def valley_widths():
        if valley.empty:
            raise _Skip("no optimizer was run at two or more lr values")
        widths = pd.concat([robustness.valley_width(valley, metric=m, rtol=r, atol=a)
                            for m in stats.LOSSES for r, a in VALLEY_TOLERANCES], ignore_index=True)
        summary = widths[["metric", "series", "beta", "rtol", "atol", "best_lr", "best", "low_lr", "high_lr",
                          "width_decades", "censored"]].rename(columns={"series": "optimizer", "beta": "β"})
        w.table("valley_width", widths, summary)

    def expected():
        configs = table.groupby(["series", "metric"])["mean"].agg(lambda m: m.notna().sum())
        several = table[table.set_index(["series", "metric"]).index.isin(configs[configs >= 2].index)]
        if several.empty:
            raise _Skip("no optimizer has two or more configurations to draw from")
        eb = pd.concat([robustness.expected_best(several, metric=m) for m in stats.LOSSES
                        if (several["metric"] == m).any()], ignore_index=True)
        w.figure("expected_best", robustness_plots.expected_best_figure(eb, palette=palette))
        w.table("expected_best", eb, tables.expected_best_summary(eb))

    def importance():
        imp = robustness.importance(trials)
        if imp.empty:
            raise _Skip("no HD optimizer was swept over two or more values of both lr and beta")
        w.figure("importance", robustness_plots.importance_figure(imp))
        w.table("importance", imp)

    items = [sensitivity, valleys, ranking_figure, heatmap, decay, hd, best_table, learning_curves, learned_lr, gammas,
             combination, thresholds, valley_widths, expected, importance, sensitivity_metrics, paired_comparisons]
    notes = []
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        for item in items:
            try:
                item()
            except _Skip as skip:
                notes.append(f"{item.__name__.replace('_', ' ')}: {skip}")
                echo(f"skipped {notes[-1]}")
    summary = metrics.metrics_summary(metric_table[metric_table["at_best"]])
    chains = comparisons.neighbour_marks(ranking.assign(metric=ranking["metric"] + ", " + ranking["statistic"]))
    page = html.write_page(
        out / "report.html", title=title, facts=html.run_facts(trials), figures=w.figures,
        tables=[html.Table("Ranking over α0", tables.ranking_summary(ranking), RANKING_NOTE, "ranking.csv",
                           lines=[f"{key[0]}: {chain}" for key, chain in chains.items()]),
                html.Table("Against the base optimizer", tables.comparison_summary(headline), BASE_NOTE,
                           "comparisons.csv"),
                html.Table("Metrics (95% bootstrap intervals over seeds)", summary, METRICS_NOTE, "metrics.csv"),
                html.Table("Best configurations", tables.best_config_summary(best), None, "best_configs.csv")],
        notes=notes, study=study_text)
    w._wrote([page])
    echo(f"{len(w.paths)} files in {out}")
    return w.paths


def _neighbours(pairs: pd.DataFrame, ranking: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``pairs`` that compare two neighbours of the ranking."""
    keys = {(r.metric, r.statistic, *sorted((r.series, r.next))) for r in ranking.itertuples() if r.next}
    mine = [(m, s, *sorted((a, b))) in keys and axis == "lr"
            for m, s, a, b, axis in zip(pairs["metric"], pairs["statistic"], pairs["a"], pairs["b"], pairs["axis"])]
    return pairs[mine]


def _study_text(results_dir) -> str | None:
    return Location(results_dir).read_text("study.yaml")


def _max_gap(study_text: str | None) -> float:
    """The study's refine.resolution (decades) where it has one, else ``metrics.MAX_GAP``."""
    if not study_text:
        return metrics.MAX_GAP
    import yaml  # lazily, and only for the study file written beside the tables

    try:
        refine = (yaml.safe_load(study_text) or {}).get("refine") or {}
        return float(refine.get("resolution", metrics.MAX_GAP))
    except (yaml.YAMLError, AttributeError, TypeError, ValueError):
        return metrics.MAX_GAP
