"""Optuna mode: one OptunaSearch per optimizer entry, taking turns in one Tuner.

One Optuna trial runs a sampled point on every seed and reports the mean of the
metric (+inf when a seed has no finite value, never NaN); every seed is still a row.
"""

from __future__ import annotations

import hashlib
import json
import math
import time

from ray import tune
from ray.tune.search import Searcher

from sensitivity.progress import Progress
from sensitivity.results import ResultsStore, join, trial_id
from sensitivity.study import Study
from sensitivity.sweep.bundles import is_short
from sensitivity.sweep.tuner import Recorder, summarize, tuner_run
from sensitivity.sweep.worker import mean_metric, metric_value, payload, run_one, set_threads


def _choice_key(key: str) -> str:
    return f"{key}__choice"


def _point_values(study: Study, index: int, config: dict, smoke: bool) -> tuple[dict, str]:
    """Sampled config -> (hyperparameter values, canonical JSON of the point)."""
    plan = study.search_plan(index, smoke)
    values = {}
    for key in plan["ranges"]:
        values[key] = float(config[key])
    for key, options in plan["choices"].items():
        values[key] = options[int(config[_choice_key(key)])]
    point = json.dumps({k: config[k] for k in sorted(config)}, sort_keys=True)
    return values, point


def _optuna_space(study: Study, index: int, smoke: bool) -> dict:
    import optuna

    plan = study.search_plan(index, smoke)
    space = {}
    for key, rng in plan["ranges"].items():
        space[key] = optuna.distributions.FloatDistribution(rng.low, rng.high, log=rng.log)
    for key, options in plan["choices"].items():
        space[_choice_key(key)] = optuna.distributions.CategoricalDistribution(list(range(len(options))))
    return space



def search_task(config: dict, study: Study, smoke: bool, metric: str, done: dict,
                 checkpoint_root: str | None, cpu: float) -> None:
    """Ray Tune trainable of one Optuna trial: the sampled point on every seed, in turn."""
    set_threads(cpu)
    index = config["entry"]
    values, point = _point_values(study, index, config["point"], smoke)
    configs = study.search_configs(index, values, smoke)
    found = [done[trial_id(c)] for c in configs if trial_id(c) in done]  # seeds of an interrupted run
    todo = [{**c, "_extra": {"search_entry": index, "search_point": point}} for c in configs if trial_id(c) not in done]
    for row, curve, ckpt in _seed_results(study, todo, checkpoint_root):
        found.append(metric_value(row, metric))
        # every result carries the running mean: OptunaSearch reads the metric of each one
        tune.report({"objective": mean_metric(found), "payload": payload(row, curve, ckpt), "trials": 1})
    if not any(trial_id(c) not in done for c in configs):
        tune.report({"objective": mean_metric(found), "trials": 0})


def _seed_results(study: Study, configs: list[dict], checkpoint_root: str | None):
    """(row, curve, checkpoint) of each seed: one fused array when the study fuses them, else in turn."""
    if study.fuse != "off" and len(configs) > 1:
        from sensitivity.fused.plan import cut
        from sensitivity.fused.sweep import run_array

        arrays, solo = cut(configs, study.fuse)
        for array in arrays:
            yield from run_array(array, checkpoint_root)
        configs = solo
    for trial in configs:
        ckpt = join(checkpoint_root, trial_id(trial)) if checkpoint_root else None
        yield (*run_one(trial, ckpt), ckpt)


def _previous_points(store: ResultsStore, index: int, seeds: int, metric: str) -> tuple[list, list, dict]:
    """(complete points with their mean metric, partial points, done trial_id -> metric) of one entry."""
    trials = store.trials
    if trials is None or "search_entry" not in trials:
        return [], [], {}
    mine = trials[trials["search_entry"] == index]
    done = {r["trial_id"]: metric_value(r, metric) for r in mine.to_dict("records")}
    complete, partial = [], []
    for point, group in mine.groupby("search_point", sort=False):
        values = [metric_value(r, metric) for r in group.to_dict("records")]
        config = json.loads(point)
        (complete if len(group) >= seeds else partial).append((config, mean_metric(values)))
    return complete, [c for c, _ in partial], done


def _sampler(kind: str, seed: int):
    import optuna

    return optuna.samplers.RandomSampler(seed=seed) if kind == "random" else optuna.samplers.TPESampler(seed=seed)


class _Entries(Searcher):
    """One Tuner for all optimizer entries of a search.

    Each entry keeps its own OptunaSearch (its own space, behind its own ConcurrencyLimiter)
    and its own budget of points; entries take turns, so a cluster runs them side by side.
    """

    def __init__(self, searchers: dict[int, Searcher], budgets: dict[int, int]):
        super().__init__(metric="objective", mode="min")
        self.searchers, self.budgets = searchers, dict(budgets)
        self.owner: dict[str, int] = {}
        self.turn = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # every entry's space is already set

    def suggest(self, trial_id: str):
        open_ = [i for i in self.searchers if self.budgets[i] > 0]
        if not open_:
            return Searcher.FINISHED
        for k in range(len(open_)):
            index = open_[(self.turn + k) % len(open_)]
            point = self.searchers[index].suggest(trial_id)
            if point in (None, Searcher.FINISHED):
                continue  # this entry is at its concurrency limit
            self.turn += k + 1
            self.budgets[index] -= 1
            self.owner[trial_id] = index
            return {"entry": index, "point": point}
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.owner:
            self.searchers[self.owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.owner:
            self.searchers[self.owner[trial_id]].on_trial_complete(trial_id, result=result, error=error)


def run_search(study, store, smoke, resources, ray_storage, stamp, checkpoint_root, max_concurrent, quiet):
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.monotonic()
    search = study.search
    n_points, n_seeds = study.search_trials(smoke), len(study.seeds(smoke))
    total = sum(study.counts(smoke))
    # TPE's first 10 points are random anyway; after that, about a quarter of the points at once
    limit = search.max_concurrent or max(1, math.ceil(n_points / 4), min(n_points, 10))
    searchers, budgets, done, long = {}, {}, {}, False
    for index in range(len(study.entries)):
        complete, partial, done_here = _previous_points(store, index, n_seeds, search.metric)
        done.update(done_here)
        complete = complete[:n_points]
        budgets[index] = n_points - len(complete)
        if budgets[index] <= 0:
            continue
        seed = int(hashlib.sha1(f"{study.name}:{index}".encode()).hexdigest()[:8], 16) % 2**31
        searcher = OptunaSearch(space=_optuna_space(study, index, smoke), metric="objective", mode="min",
                                sampler=_sampler(search.sampler, seed),
                                points_to_evaluate=partial[:budgets[index]] or None)  # finish cut-off points
        for config, value in complete:
            searcher.add_evaluated_point(config, value)  # what earlier runs learnt
        searchers[index] = ConcurrencyLimiter(searcher, max_concurrent=limit)
        long = long or not is_short(study.entry_trials(index, smoke)[0])
    progress = Progress(total - len(done), name=study.name, quiet=quiet)
    recorder = Recorder(store, progress)
    errors = []
    if searchers:
        progress.show()
        trainable = tune.with_parameters(search_task, study=study, smoke=smoke, metric=search.metric, done=done,
                                         checkpoint_root=checkpoint_root if long else None, cpu=resources["cpu"])
        errors = tuner_run(trainable, resources=resources, storage=ray_storage, name=f"search-{stamp}",
                            callback=recorder, search_alg=_Entries(searchers, budgets),
                            num_samples=sum(budgets[i] for i in searchers), max_concurrent=max_concurrent)
        progress.show(final=True)
    counted = 0
    if store.trials is not None and "search_entry" in store.trials:
        counted = int(store.trials["search_entry"].notna().sum())
    return summarize(store, total, len(done), recorder, start, 1, errors, max(0, total - counted))
