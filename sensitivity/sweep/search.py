"""Optuna mode: one OptunaSearch per optimizer entry, taking turns in one Tuner (points: `points`; Optuna journal: `journal`).

One Optuna trial runs a sampled point on every seed and reports the mean of the
metric (+inf when a seed has no finite value, never NaN); every seed is still a row.
"""

from __future__ import annotations

import json
import math
import time

from ray import tune
from ray.tune.search import Searcher

from sensitivity.progress import Progress
from sensitivity.results import join
from sensitivity.study import Study
from sensitivity.sweep.bundles import is_short
from sensitivity.sweep.journal import known_points, optuna_storage, optuna_study_name
from sensitivity.sweep.points import optuna_space, point_values, plan_entries
from sensitivity.sweep.tuner import Recorder, remove_dir, summarize, tuner_run
from sensitivity.sweep.worker import Reported, Unit, mean_metric, metric_value, payload, run_unit, set_threads


def search_task(config: dict, study: Study, smoke: bool, metric: str, done: dict,
                checkpoint_root: str | None, cpu: float, gpus: float = 0.0, exits_root: str | None = None) -> None:
    """Ray Tune trainable of one Optuna trial: the sampled point on every seed, in turn (or as one array);
    a worker that dies leaves a record of how under `exits_root` (`exits`)."""
    set_threads(cpu)
    index = config["entry"]
    values, point = point_values(study, index, config["point"], smoke)
    records = study.search_configs(index, values, smoke)
    reported = Reported(len(records))  # a retried Ray trial skips the seeds the driver holds
    found = [done[r.trial_id] if r.trial_id in done else reported.values[r.trial_id]
             for r in records if r.trial_id in done or r.trial_id in reported]  # seeds run before
    todo = [r for r in records if r.trial_id not in done and r.trial_id not in reported]
    extra = {"search_entry": index, "search_point": point}
    for unit in seed_units(study, todo, extra, gpus):
        for rows, curves in run_unit(unit, checkpoint_root, exits_root):
            values_now = [metric_value(row, metric) for row in rows]
            found.extend(values_now)
            # every result carries the running mean: OptunaSearch reads the metric of each one
            reported.report({"objective": mean_metric(found), "payload": payload(rows, curves), "trials": len(rows)},
                            rows, values_now)
    if not todo:
        tune.report({"objective": mean_metric(found), "trials": 0})


def seed_units(study: Study, records: list, extra: dict, gpus: float = 0.0) -> list[Unit]:
    """A point's seeds as units: one fused array when the study fuses them, else one bundle."""
    from sensitivity.fused.plan import cut

    arrays, solo = cut(records, study.fuse, gpus=gpus) if len(records) > 1 else ([], list(records))
    units = [Unit(a, [extra] * len(a), fused=True) for a in arrays]
    return units + ([Unit(solo, [extra] * len(solo))] if solo else [])


def point_failures(study: Study, store, smoke: bool, failed: list[tuple[dict, str]],
                   exits_root: str | None = None) -> list[dict]:
    """Error rows for the seeds a failed Optuna trial left without a row (its worker died each time),
    saying how the process ended where its watcher recorded it under `exits_root`."""
    from sensitivity import outcome
    from sensitivity.sweep.exits import read_exit
    from sensitivity.sweep.grid import worker_died

    rows = []
    for config, message in failed:
        if "entry" not in config or "point" not in config:
            continue
        values, point = point_values(study, config["entry"], config["point"], smoke)
        for record in study.search_configs(config["entry"], values, smoke):
            if record.trial_id not in store:
                ending = read_exit(exits_root, record.trial_id) if exits_root else None
                rows.append({**outcome.error_row(record, worker_died(message, ending), 0.0),
                             "search_entry": config["entry"], "search_point": point})
    return rows


def _sampler(kind: str, seed: int):
    import optuna

    return optuna.samplers.RandomSampler(seed=seed) if kind == "random" else optuna.samplers.TPESampler(seed=seed)


class _Entries(Searcher):
    """One Tuner for all optimizer entries of a search.

    Each entry keeps its own OptunaSearch (its own space, behind its own ConcurrencyLimiter)
    and its own budget of points; entries take turns, so a cluster runs them side by side.
    A proposal that repeats a finished point is answered with its known value at once and
    costs no budget.
    """

    MAX_REPEATS = 1000  # proposals in a row that repeat finished points before an entry gives up

    def __init__(self, searchers: dict[int, Searcher], budgets: dict[int, int],
                 finished: dict[int, dict[str, float]] | None = None, key_of=None):
        super().__init__(metric="objective", mode="min")
        self.searchers, self.budgets = searchers, dict(budgets)
        self.finished = {i: dict((finished or {}).get(i, {})) for i in searchers}
        self.key_of = key_of or (lambda index, point: json.dumps(point, sort_keys=True))
        self.owner: dict[str, int] = {}
        self.keys: dict[str, str] = {}
        self.asked: dict[str, str] = {}  # Tune's trial id -> the id its point was asked under
        self.turn = 0
        self.repeats = 0  # proposals answered from finished points (for tests and the curious)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # every entry's space is already set

    def _propose(self, index: int, trial_id: str):
        """(point, key, the id it was asked under) of an unfinished point, or None/FINISHED."""
        searcher = self.searchers[index]
        for attempt in range(self.MAX_REPEATS):
            # a fresh id for every ask: OptunaSearch keeps one Optuna trial per id, so asking
            # again under a told id would return the same finished point forever
            ask_id = trial_id if attempt == 0 else f"{trial_id}~repeat{attempt}"
            point = searcher.suggest(ask_id)
            if point in (None, Searcher.FINISHED):
                return point
            key = self.key_of(index, point)
            if key not in self.finished[index]:
                return point, key, ask_id
            self.repeats += 1  # tell the sampler what it already knows; ask again
            searcher.on_trial_complete(ask_id, result={"objective": self.finished[index][key]})
        self.budgets[index] = 0  # its space holds no unfinished point it would propose
        return None

    def suggest(self, trial_id: str):
        open_ = [i for i in self.searchers if self.budgets[i] > 0]
        if not open_:
            return Searcher.FINISHED
        for k in range(len(open_)):
            index = open_[(self.turn + k) % len(open_)]
            proposed = self._propose(index, trial_id)
            if proposed in (None, Searcher.FINISHED):
                continue  # this entry is at its concurrency limit
            point, key, ask_id = proposed
            self.turn += k + 1
            self.budgets[index] -= 1
            self.owner[trial_id], self.keys[trial_id], self.asked[trial_id] = index, key, ask_id
            return {"entry": index, "point": point}
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.owner:
            self.searchers[self.owner[trial_id]].on_trial_result(self.asked[trial_id], result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.owner:
            index = self.owner[trial_id]
            if result and not error and "objective" in result:
                self.finished[index][self.keys[trial_id]] = result["objective"]
            self.searchers[index].on_trial_complete(self.asked[trial_id], result=result, error=error)


def make_entries(study: Study, plans: list[dict], smoke: bool, limit: int, storage=None) -> "_Entries":
    """The searcher of a run: each entry with budget left gets an OptunaSearch that knows its finished points.

    With an Optuna `storage`, each entry's points live in its own Optuna study there (with
    every finished point of the table added once), so `optuna.load_study` and optuna-dashboard
    can read the search; the table stays the record of which points are done.
    """
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searchers, finished = {}, {}
    for index, plan in enumerate(plans):
        name = optuna_study_name(study, index, smoke) if storage is not None else None
        known = known_points(storage, name) if storage is not None else []
        if plan["budget"] <= 0 and all(p["params"] in known for p in plan["complete"].values()):
            continue
        searcher = OptunaSearch(space=optuna_space(study, index, smoke), metric="objective", mode="min",
                                sampler=_sampler(study.search.sampler, plan["seed"]),
                                points_to_evaluate=[p["params"] for p in plan["partial"]] or None,
                                storage=storage, study_name=name)
        finished[index] = {}
        for key, point in plan["complete"].items():  # what earlier runs learnt
            value = mean_metric([v for _, v in point["done"].values()])
            if point["params"] not in known:
                searcher.add_evaluated_point(point["params"], value)
            finished[index][key] = value
        if plan["budget"] <= 0:
            continue  # its finished points are now in the storage; nothing to run
        searchers[index] = ConcurrencyLimiter(searcher, max_concurrent=limit)
    return _Entries(searchers, {i: plans[i]["budget"] for i in searchers}, finished,
                    key_of=lambda index, point: point_values(study, index, point, smoke)[1])


def run_search(study, store, smoke, resources, ray_storage, stamp, checkpoint_root, max_concurrent, quiet,
               current=None):
    start = time.monotonic()
    search = study.search
    n_points, seeds = study.search_trials(smoke), study.seeds(smoke)
    total = sum(study.counts(smoke))
    # TPE's first 10 points are random anyway; after that, about a quarter of the points at once
    limit = search.max_concurrent or max(1, math.ceil(n_points / 4), min(n_points, 10))
    plans = plan_entries(study, store, smoke)
    done = {tid: v for plan in plans for tid, v in plan["done"].items()}
    storage, save_storage = optuna_storage(store.location)
    entries = make_entries(study, plans, smoke, limit, storage=storage)
    long = any(not is_short(study.entry_trials(i, smoke)[0]) for i in entries.searchers)
    recorder_root = checkpoint_root if long else None
    already = sum(min(n_points, len(p["complete"])) * len(seeds) + sum(len(q["done"]) for q in p["partial"])
                  for p in plans)
    progress = Progress(total - already, name=study.name, quiet=quiet)
    recorder = Recorder(store, progress, recorder_root)
    if current is not None:
        recorder.current = current  # search rows become current as they arrive
    errors = []
    exits_root = join(ray_storage, "exits")  # the watchers' records of dead workers (this run's only)
    remove_dir(exits_root)
    try:
        if entries.searchers:
            progress.show()
            trainable = tune.with_parameters(search_task, study=study, smoke=smoke, metric=search.metric,
                                             done=done, checkpoint_root=recorder_root, cpu=resources["cpu"],
                                             gpus=resources.get("gpu", 0.0), exits_root=exits_root)
            failed = tuner_run(trainable, resources=resources, storage=ray_storage, name=f"search-{stamp}",
                               callback=recorder, search_alg=entries,
                               num_samples=sum(entries.budgets.values()), max_concurrent=max_concurrent)
            rows = point_failures(study, store, smoke, failed, exits_root)
            if rows:
                recorder.record(rows, [])
            errors = [e for c, e in failed if "entry" not in c]
            progress.show(final=True)
    finally:
        save_storage()  # also after Ctrl-C: the points that finished stay in the journal
        if current is not None:
            current.flush()
    missing = 0
    for plan in plan_entries(study, store, smoke):
        complete = len(plan["complete"])
        if complete < n_points:
            partial_rows = sum(len(p["done"]) for p in plan["partial"])
            missing += (n_points - complete) * len(seeds) - partial_rows
    return summarize(store, total, already, recorder, start, 1, errors, max(0, missing))
