"""Optuna mode: one OptunaSearch per optimizer entry, taking turns in one Tuner.

One Optuna trial runs a sampled point on every seed and reports the mean of the
metric (+inf when a seed has no finite value, never NaN); every seed is still a row.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time

from ray import tune
from ray.tune.search import Searcher

from sensitivity.identity import _canonical, legacy_trial_id, value_key
from sensitivity.progress import Progress
from sensitivity.results import ResultsStore, join, resolve, trial_id, write_atomic
from sensitivity.study import Study
from sensitivity.sweep.bundles import is_short
from sensitivity.sweep.tuner import Recorder, summarize, tuner_run
from sensitivity.sweep.worker import mean_metric, metric_value, payload, run_one, set_threads


def _choice_key(key: str) -> str:
    return f"{key}__choice"


def _point_values(study: Study, index: int, config: dict, smoke: bool) -> tuple[dict, str]:
    """Sampled config -> (hyperparameter values, the point as JSON of those values).

    The point names values, not Optuna's choice indices: a row says what it ran, whatever
    the entry's position or its list of choices in a later version of the study.
    """
    plan = study.search_plan(index, smoke)
    values = {}
    for key in plan["ranges"]:
        values[key] = float(config[key])
    for key, options in plan["choices"].items():
        values[key] = options[int(config[_choice_key(key)])]
    return values, point_text(values)


def point_text(values: dict) -> str:
    return json.dumps(_canonical(values), sort_keys=True)


def _optuna_params(study: Study, index: int, values: dict, smoke: bool) -> dict | None:
    """Hyperparameter values -> the entry's Optuna params; None when they are not a point of its space."""
    plan = study.search_plan(index, smoke)
    if set(values) != set(plan["ranges"]) | set(plan["choices"]):
        return None
    params = {}
    for key, rng in plan["ranges"].items():
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not rng.low <= value <= rng.high:
            return None
        params[key] = float(value)
    for key, options in plan["choices"].items():
        keys = [value_key(o) for o in options]
        if value_key(values[key]) not in keys:
            return None
        params[_choice_key(key)] = keys.index(value_key(values[key]))
    return params


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
    found = []
    configs = study.search_configs(index, values, smoke)
    for trial in configs:
        tid = trial_id(trial)
        if tid in done:  # this seed finished in an earlier, interrupted run
            found.append(done[tid])
            continue
        trial["_extra"] = {"search_entry": index, "search_point": point}
        ckpt = join(checkpoint_root, tid) if checkpoint_root else None
        row, curve = run_one(trial, ckpt)
        found.append(metric_value(row, metric))
        # every result carries the running mean: OptunaSearch reads the metric of each one
        tune.report({"objective": mean_metric(found), "payload": payload(row, curve, ckpt), "trials": 1})
    if not any(trial_id(c) not in done for c in configs):
        tune.report({"objective": mean_metric(found), "trials": 0})


def _stored_values(point: str, entry, study: Study, smoke: bool) -> dict | None:
    """A row's search_point as hyperparameter values (tables of earlier versions held Optuna's choice indices)."""
    try:
        values = json.loads(point)
    except (TypeError, ValueError):
        return None
    if not isinstance(values, dict):
        return None
    if any(k.endswith("__choice") for k in values):
        try:  # the old format: indices into the choices of the entry at that position
            return _point_values(study, int(entry), values, smoke)[0]
        except (IndexError, KeyError, TypeError, ValueError):
            return None
    return values


def match_points(study: Study, store: ResultsStore, smoke: bool, metric: str) -> list[dict]:
    """Each entry's stored points, matched by configuration (never by position).

    A stored row belongs to entry i when its point is a point of entry i's space and its
    trial_id is the id that entry gives that point and seed now: a changed task, an inserted
    entry or a narrowed range leaves old rows to no entry (they are stale).  Returns, per
    entry, {point text: {"values", "params", "done": {seed: (trial_id, metric)}}}; rows stored under the
    old id rule are renamed to their current ids on the way.
    """
    out: list[dict] = [{} for _ in study.entries]
    trials = store.trials
    if trials is None or "search_point" not in trials or not len(trials):
        return out
    renames = {}
    for (point, entry), group in trials.groupby(["search_point", "search_entry"], sort=False, dropna=False):
        values = _stored_values(point, entry, study, smoke)
        if values is None:
            continue
        stored = dict(zip(group["trial_id"], group.to_dict("records")))
        for index in range(len(study.entries)):
            params = _optuna_params(study, index, values, smoke)
            if params is None:
                continue
            found = {}
            for config in study.search_configs(index, values, smoke):
                tid, old = trial_id(config), legacy_trial_id(config)
                if old in stored and tid not in stored:
                    renames[old] = tid
                    stored[tid] = stored[old]
                if tid in stored:
                    found[config["seed"]] = (tid, metric_value(stored[tid], metric))
            if found:
                key = point_text(values)
                entry_points = out[index].setdefault(key, {"values": values, "params": params, "done": {}})
                entry_points["done"].update(found)
                break  # two entries never share a trial (the study rejects that)
    if renames:
        store.rename(renames)
    return out


def _seed(study: Study, index: int, finished: int) -> int:
    """The entry's sampler seed: its configuration and how many points are done, so a resumed
    run draws new points instead of replaying the ones it already ran."""
    text = json.dumps([study.name, _canonical(study.entries[index].model_dump()), finished], sort_keys=True)
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) % 2**31


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
        self.turn = 0
        self.repeats = 0  # proposals answered from finished points (for tests and the curious)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # every entry's space is already set

    def _propose(self, index: int, trial_id: str):
        searcher = self.searchers[index]
        for _ in range(self.MAX_REPEATS):
            point = searcher.suggest(trial_id)
            if point in (None, Searcher.FINISHED):
                return point
            key = self.key_of(index, point)
            if key not in self.finished[index]:
                return point, key
            self.repeats += 1  # tell the sampler what it already knows; ask again
            searcher.on_trial_complete(trial_id, result={"objective": self.finished[index][key]})
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
            point, key = proposed
            self.turn += k + 1
            self.budgets[index] -= 1
            self.owner[trial_id], self.keys[trial_id] = index, key
            return {"entry": index, "point": point}
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.owner:
            self.searchers[self.owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.owner:
            index = self.owner[trial_id]
            if result and not error and "objective" in result:
                self.finished[index][self.keys[trial_id]] = result["objective"]
            self.searchers[index].on_trial_complete(trial_id, result=result, error=error)


def plan_entries(study: Study, store: ResultsStore, smoke: bool) -> list[dict]:
    """Per entry: its matched points split into complete and partial, its budget and sampler seed."""
    n_points, seeds = study.search_trials(smoke), study.seeds(smoke)
    plans = []
    for index, points in enumerate(match_points(study, store, smoke, study.search.metric)):
        complete = {k: p for k, p in points.items() if set(seeds) <= set(p["done"])}
        partial = [p for k, p in points.items() if k not in complete]
        budget = max(0, n_points - len(complete))
        plans.append({"complete": complete, "partial": partial[:budget], "budget": budget,
                      "seed": _seed(study, index, len(complete)),
                      "done": {tid: v for p in points.values() for tid, v in p["done"].values()}})
    return plans


def current_search_ids(study: Study, store: ResultsStore, smoke: bool) -> dict[str, str]:
    """trial_id -> label of the stored rows that belong to the current study's entries."""
    out = {}
    for index, points in enumerate(match_points(study, store, smoke, study.search.metric)):
        for point in points.values():
            for tid, _ in point["done"].values():
                out[tid] = study.label(index)
    return out


OPTUNA_JOURNAL = "optuna.journal"  # beside the tables: one Optuna study per optimizer entry


def optuna_storage(location: str):
    """(Optuna journal storage of the results location, a function that saves it).

    Locally (or on NFS) the journal is the file beside the tables.  On a URI (s3://, gs://) Optuna
    cannot lock a file, so the driver, the only writer, works on a local copy that it downloads
    first and uploads when the run ends (a crash loses only the journal's latest points, which
    the next run adds again from the table).
    """
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if "://" not in location:
        os.makedirs(location, exist_ok=True)
        return JournalStorage(JournalFileBackend(os.path.join(location, OPTUNA_JOURNAL))), lambda: None
    import shutil
    import tempfile

    fs, path = resolve(location)
    remote = path.rstrip("/") + "/" + OPTUNA_JOURNAL
    local = os.path.join(tempfile.mkdtemp(prefix="sensitivity-optuna-"), OPTUNA_JOURNAL)
    if fs.get_file_info(remote).type.name == "File":
        with fs.open_input_stream(remote) as src, open(local, "wb") as dst:
            dst.write(src.read())

    def save() -> None:
        with open(local, "rb") as src:
            write_atomic(fs, remote, src.read())
        shutil.rmtree(os.path.dirname(local), ignore_errors=True)  # the run is over

    return JournalStorage(JournalFileBackend(local)), save


def optuna_study_name(study: Study, index: int, smoke: bool) -> str:
    """`<label>-<hash of the entry's search plan>`: a changed entry gets a study of its own."""
    plan = study.search_plan(index, smoke)
    text = json.dumps(_canonical({"task": plan["task"], "fixed": plan["fixed"], "choices": plan["choices"],
                                  "ranges": {k: r.model_dump() for k, r in plan["ranges"].items()},
                                  "optimizer": plan["entry"].name, "seeds": study.seeds(smoke),
                                  "metric": study.search.metric}), sort_keys=True)
    return f"{study.label(index)}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def _known_points(storage, name: str) -> list[dict]:
    """Params of the entry's COMPLETE Optuna trials; trials an interrupted run left RUNNING become FAIL."""
    import optuna
    from optuna.trial import TrialState

    try:
        ot_study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return []
    known = []
    for trial in ot_study.get_trials(deepcopy=False):
        if trial.state == TrialState.RUNNING:
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        elif trial.state == TrialState.COMPLETE:
            known.append(dict(trial.params))
    return known


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
        known = _known_points(storage, name) if storage is not None else []
        if plan["budget"] <= 0 and all(p["params"] in known for p in plan["complete"].values()):
            continue
        searcher = OptunaSearch(space=_optuna_space(study, index, smoke), metric="objective", mode="min",
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
                    key_of=lambda index, point: _point_values(study, index, point, smoke)[1])


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
    already = sum(min(n_points, len(p["complete"])) * len(seeds) + sum(len(q["done"]) for q in p["partial"])
                  for p in plans)
    progress = Progress(total - already, name=study.name, quiet=quiet)
    recorder = Recorder(store, progress)
    if current is not None:
        recorder.current = current  # search rows become current as they arrive
    errors = []
    try:
        if entries.searchers:
            progress.show()
            trainable = tune.with_parameters(search_task, study=study, smoke=smoke, metric=search.metric,
                                             done=done, checkpoint_root=checkpoint_root if long else None,
                                             cpu=resources["cpu"])
            errors = tuner_run(trainable, resources=resources, storage=ray_storage, name=f"search-{stamp}",
                                callback=recorder, search_alg=entries,
                                num_samples=sum(entries.budgets.values()), max_concurrent=max_concurrent)
            progress.show(final=True)
    finally:
        save_storage()  # also after Ctrl-C: the points that finished stay in the journal
    missing = 0
    for plan in plan_entries(study, store, smoke):
        complete = len(plan["complete"])
        if complete < n_points:
            partial_rows = sum(len(p["done"]) for p in plan["partial"])
            missing += (n_points - complete) * len(seeds) - partial_rows
    return summarize(store, total, already, recorder, start, 1, errors, max(0, missing))
