"""Paired comparisons of two series' sensitivity statistics (``comparisons.csv``), and the ranking.

Each series enters with its line through its best configuration (``at_best`` in ``metrics.csv``:
HD at its best β on the α0 axis, a momentum line at its best α0). For two series on the same task
(``analysis.columns.TASK_COLUMNS`` agree; a column missing in one agrees), axis and metric, and each
statistic, the difference a − b gets a bootstrap interval:

- *paired* by seed wherever both series ran that seed: one draw of those seeds serves both, so
  an effect a seed has on both (its initial weights, its data order) cancels in the difference;
- seeds only one of them ran are drawn for that one alone, so with no seed in common the
  bootstrap is independent;
- the interval is the difference ± a t critical value times the replicates' standard deviation
  (``analysis.bootstrap.t_interval``), with n the fewer seeds of the two, and ``significant``
  says it excludes 0: about 5% of pairs that do not differ are called significant.

``best_<axis>`` is not compared (a shift of the best value is no "less sensitive"); every other
statistic is. ``comparisons_table`` forms every pair; ``base`` marks the pairs of a series with
its base optimizer (``sgd-hd`` with ``sgd``, ``adam-cam-hd-2level`` with ``adam``: same decay,
no variant), where ``a`` is the series and ``b`` the base; elsewhere ``a`` sorts before ``b``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .axes import check_axis, same_task
from .bootstrap import rng_for, seed_counts, t_interval
from .columns import base_optimizer, prepare
from .grids import statistics
from .metrics import KS, MAX_GAP, TOLERANCES, Evaluated, check_settings, evaluate, evaluate_all
from .stats import LOSSES

__all__ = ["comparisons_table", "comparisons_from", "compare", "ranking_table", "neighbour_marks"]

COLUMNS = ["task", "axis", "metric", "statistic", "a", "b", "a_at", "b_at", "value_a", "value_b", "difference",
           "ci_low", "ci_high", "significant", "paired", "n_shared", "resolved", "base"]


def _paired_counts(ea: Evaluated, eb: Evaluated, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seed counts for a and b: shared seeds drawn once for both, the rest for each alone."""
    a, b = ea.grid, eb.grid
    shared = np.intersect1d(a.seeds, b.seeds)
    rng = rng_for(seed, "pair", a.ident["line"], b.ident["line"], a.metric)
    common = seed_counts(len(shared), n_boot, rng)
    out = []
    for grid in (a, b):
        counts = np.zeros((n_boot, len(grid.seeds)))
        mine = np.isin(grid.seeds, shared)
        counts[:, mine] = common[:, np.searchsorted(shared, grid.seeds[mine])]
        counts[:, ~mine] = seed_counts(int((~mine).sum()), n_boot, rng)
        out.append(counts)
    return out[0], out[1]


def _replicates(e: Evaluated, counts: np.ndarray) -> dict[str, np.ndarray]:
    return statistics(e.grid.x, e.grid.means(counts), **e.settings)


def _pair_rows(ea: Evaluated, eb: Evaluated, stats, *, n_boot: int, seed: int, base: bool,
               task: str) -> tuple[list[dict], np.ndarray]:
    """The rows of a − b for each of ``stats`` both lines have, without their intervals, and the
    differences' replicates (rows × n_boot; no columns where a line has no replicates)."""
    a, b = ea.grid, eb.grid
    n_shared = len(np.intersect1d(a.seeds, b.seeds))
    names = [s for s in stats if s in ea.point and s in eb.point]
    if not (ea.replicates and eb.replicates):
        diffs = np.full((len(names), n_boot), np.nan)
    else:
        same = (len(a.seeds) == len(b.seeds) and bool((a.seeds == b.seeds).all()) and a.task == b.task)
        if same:  # the lines' own counts come from one RNG key (task, seeds): their replicates are paired
            ra, rb = ea.replicates, eb.replicates
        else:
            ca, cb = _paired_counts(ea, eb, n_boot, seed)
            ra, rb = _replicates(ea, ca), _replicates(eb, cb)
        diffs = np.array([ra[s] - rb[s] for s in names]).reshape(len(names), n_boot)
    n = min(len(a.seeds), len(b.seeds)) if ea.replicates and eb.replicates else 1  # the seeds each draw resamples
    rows = [{"task": task, "axis": a.ident["axis"], "metric": a.metric, "statistic": name,
             "a": a.ident["series"], "b": b.ident["series"], "a_at": a.ident["at"], "b_at": b.ident["at"],
             "value_a": ea.point[name], "value_b": eb.point[name], "difference": ea.point[name] - eb.point[name],
             "paired": n_shared > 0, "n_shared": n_shared,
             "resolved": bool(ea.resolved.get(name) and eb.resolved.get(name)),
             "base": base, "_n": n} for name in names]
    return rows, diffs


def _is_base(derived: dict, base: dict) -> bool:
    """Whether ``base`` (a line's ident) is the base optimizer of ``derived``: sgd for sgd-hd."""
    name = base_optimizer(derived["label"])
    return (name != derived["label"] and base["label"] == name and base["decay"] == derived["decay"]
            and not base["variant"])


def _task_text(tasks: list[dict]) -> list[str]:
    """Each task named by the task columns whose values differ between them ("" for one task)."""
    differ = sorted({k for t in tasks for k in t if len({u.get(k) for u in tasks}) > 1})
    return [", ".join(f"{k}={t[k]}" for k in differ if k in t) for t in tasks]


def _stats_to_compare(axis: str, statistics_) -> list[str] | None:
    if statistics_ is None:
        return None
    names = [statistics_] if isinstance(statistics_, str) else list(statistics_)
    if f"best_{axis}" in names:
        raise ValueError(f"statistic best_{axis} is not compared (a shift of the best is no sensitivity)")
    return names


def comparisons_table(trials: pd.DataFrame, *, axis=None, metrics=LOSSES, statistic=None, pairs=None,
                      tolerances=TOLERANCES, ks=KS, max_gap: float = MAX_GAP, n_boot: int = 1000,
                      level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Every pair of series on the same task, axis and metric, per statistic; see the module docstring.

    ``axis`` as ``metrics_table`` (None: every axis); ``statistic`` one name or a list (None:
    every statistic but ``best_<axis>``); ``pairs`` a list of (a, b) series names to form instead
    of all. Columns: task, axis, metric, statistic, a, b, a_at, b_at (the lines' fixed α0/β),
    value_a, value_b, difference (a − b), ci_low, ci_high, significant, paired, n_shared (seeds
    both ran), resolved (both values are), base (b is a's base optimizer).
    """
    check_settings(metrics, level, n_boot, max_gap)
    evaluated = evaluate_all(trials, axis=axis, metrics=metrics, tolerances=tolerances, ks=ks, max_gap=max_gap,
                             n_boot=n_boot, seed=seed)
    return comparisons_from(evaluated, statistic=statistic, pairs=pairs, n_boot=n_boot, level=level, seed=seed)


def comparisons_from(evaluated: dict[tuple[str, str], list[Evaluated]], *, statistic=None, pairs=None,
                     n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """``comparisons_table`` of what ``metrics.evaluate_all`` returned (the same ``n_boot`` and ``seed``)."""
    wanted = None if pairs is None else {tuple(p) for p in pairs}
    rows, diffs = [], []
    for (name, metric), evaluations in evaluated.items():
        stats = _stats_to_compare(name, statistic)
        lines = sorted((e for e in evaluations if e.at_best), key=lambda e: e.grid.ident["series"])
        texts = _task_text([e.grid.task for e in lines])
        for i, ea in enumerate(lines):
            for eb in lines[i + 1:]:
                if not same_task(ea.grid.task, eb.grid.task):
                    continue
                first, second = (eb, ea) if _is_base(eb.grid.ident, ea.grid.ident) else (ea, eb)
                key = (first.grid.ident["series"], second.grid.ident["series"])
                if wanted is not None and key not in wanted:
                    if key[::-1] not in wanted:
                        continue
                    first, second = second, first
                names = stats or [s for s in first.point if s != f"best_{name}"]
                found, replicates = _pair_rows(first, second, names, n_boot=n_boot, seed=seed, task=texts[i],
                                               base=_is_base(first.grid.ident, second.grid.ident))
                rows += found
                diffs.append(replicates)
    table = pd.DataFrame(rows, columns=[*COLUMNS, "_n"])
    if rows:  # one interval computation for every row
        low, high = t_interval(table["difference"].to_numpy(float), np.vstack(diffs), level=level,
                               n=table["_n"].to_numpy())
        table["ci_low"], table["ci_high"] = low, high
        table["significant"] = (low > 0) | (high < 0)
    return table[COLUMNS].astype({c: bool for c in ("significant", "paired", "resolved", "base")})


def compare(trials: pd.DataFrame, *, a: str, b: str, axis: str = "lr", statistic=None, metrics=LOSSES,
            **kwargs) -> pd.DataFrame:
    """``comparisons_table``'s rows for series ``a`` against ``b`` (difference a − b) on ``axis``.

    Each series enters at its line through its best configuration; to compare other lines (HD at
    one β), filter ``trials`` first. Raises ValueError naming the series there are when ``a`` or
    ``b`` has no line on the axis, or when they are not on the same task.
    """
    trials = prepare(trials)
    check_axis(trials, axis)
    if a == b:
        raise ValueError(f"a and b must be two series; both are {a!r}")
    table = comparisons_table(trials, axis=axis, metrics=metrics, statistic=statistic, pairs=[(a, b)], **kwargs)
    if table.empty:
        known = sorted({e.grid.ident["series"] for m in metrics
                        for e in evaluate(trials, axis=axis, metric=m, n_boot=1)})
        for name, side in ((a, "a"), (b, "b")):
            if name not in known:
                raise ValueError(f"{side} must be a series with a line on axis {axis!r} ({', '.join(known)}); "
                                 f"got {name!r}")
        raise ValueError(f"{a!r} and {b!r} are not on the same task (the task columns differ)")
    return table.reset_index(drop=True)


def ranking_table(metrics: pd.DataFrame, comparisons: pd.DataFrame, *, axis: str = "lr",
                  statistic: str | None = None) -> pd.DataFrame:
    """Series ordered by a statistic per (metric, task), each with its difference to the next one.

    ``metrics`` and ``comparisons`` are ``metrics_table`` and ``comparisons_table`` outputs;
    ``statistic`` defaults to ``<axis>_sensitivity``. Columns: metric, task, rank, series, at,
    value, ci_low, ci_high, resolved, next, difference (value − next's), diff_low, diff_high,
    significant, mark ("<" significantly lower than the next series, "≈" not, "" for the last).
    """
    statistic = statistic or f"{axis}_sensitivity"
    rows = metrics[(metrics["axis"] == axis) & (metrics["statistic"] == statistic) & metrics["at_best"]]
    pairs = comparisons[(comparisons["axis"] == axis) & (comparisons["statistic"] == statistic)]
    # (metric, a, b) -> (a − b, low, high, significant), both ways round
    found = {}
    for r in pairs.itertuples(index=False):
        found[(r.metric, r.a, r.b)] = (r.difference, r.ci_low, r.ci_high, r.significant)
        found[(r.metric, r.b, r.a)] = (-r.difference, -r.ci_high, -r.ci_low, r.significant)
    tasks = {(r.metric, s): r.task for r in pairs.itertuples(index=False) for s in (r.a, r.b)}
    out = []
    for metric, group in rows.groupby("metric", sort=False):
        group = group.assign(task=[tasks.get((metric, s), "") for s in group["series"]])
        for task, ranked in group.groupby("task", sort=True):
            ranked = ranked.sort_values("value", kind="stable", na_position="last").reset_index(drop=True)
            for i, r in enumerate(ranked.itertuples(index=False)):
                row = {"metric": metric, "task": task, "rank": i + 1, "series": r.series, "at": r.at,
                       "value": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high, "resolved": r.resolved,
                       "next": "", "difference": np.nan, "diff_low": np.nan, "diff_high": np.nan,
                       "significant": False, "mark": ""}
                if i + 1 < len(ranked):
                    nxt = ranked["series"].iloc[i + 1]
                    d = found.get((metric, r.series, nxt))
                    row.update(next=nxt, mark="≈")
                    if d is not None:
                        row.update(difference=d[0], diff_low=d[1], diff_high=d[2], significant=bool(d[3]),
                                   mark="<" if d[3] and d[0] < 0 else "≈")
                out.append(row)
    columns = ["metric", "task", "rank", "series", "at", "value", "ci_low", "ci_high", "resolved", "next",
               "difference", "diff_low", "diff_high", "significant", "mark"]
    return pd.DataFrame(out, columns=columns)


def neighbour_marks(ranking: pd.DataFrame) -> pd.Series:
    """The ranking's order as text per (metric, task): "a < b ≈ c" (< where the gap is significant)."""
    def chain(g: pd.DataFrame) -> str:
        return " ".join(f"{s} {m}" if m else s for s, m in zip(g["series"], g["mark"])).strip()

    return ranking.groupby(["metric", "task"], sort=False).apply(chain, include_groups=False)
