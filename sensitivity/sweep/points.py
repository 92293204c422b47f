"""An Optuna search's points: values and Optuna params, stored points matched to entries, each entry's plan.

A point is named by its hyperparameter values (``search_point``, JSON), never by Optuna's
choice indices or the entry's position, so a later version of the study finds the points it
already ran by configuration: a stored row belongs to an entry when that entry's space holds
its point and the entry gives that point and seed the row's trial_id.
"""

from __future__ import annotations

import hashlib
import json

from sensitivity import checks
from sensitivity.identity import json_ready, legacy_trial_id, value_key
from sensitivity.results import ResultsStore
from sensitivity.study import Study
from sensitivity.sweep.objective import metric_value


def _choice_key(key: str) -> str:
    return f"{key}__choice"


def point_values(study: Study, index: int, config: dict, smoke: bool) -> tuple[dict, str]:
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
    return json.dumps(json_ready(values), sort_keys=True)


def _optuna_params(study: Study, index: int, values: dict, smoke: bool) -> dict | None:
    """Hyperparameter values -> the entry's Optuna params; None when they are not a point of its space."""
    plan = study.search_plan(index, smoke)
    if set(values) != set(plan["ranges"]) | set(plan["choices"]):
        return None
    params = {}
    for key, rng in plan["ranges"].items():
        value = values[key]
        if not checks.is_number(value) or not rng.low <= value <= rng.high:
            return None
        params[key] = float(value)
    for key, options in plan["choices"].items():
        keys = [value_key(o) for o in options]
        if value_key(values[key]) not in keys:
            return None
        params[_choice_key(key)] = keys.index(value_key(values[key]))
    return params


def optuna_space(study: Study, index: int, smoke: bool) -> dict:
    import optuna

    plan = study.search_plan(index, smoke)
    space = {}
    for key, rng in plan["ranges"].items():
        space[key] = optuna.distributions.FloatDistribution(rng.low, rng.high, log=rng.log)
    for key, options in plan["choices"].items():
        space[_choice_key(key)] = optuna.distributions.CategoricalDistribution(list(range(len(options))))
    return space



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
            return point_values(study, int(entry), values, smoke)[0]
        except (IndexError, KeyError, TypeError, ValueError):
            return None
    return values


def match_points(study: Study, store: ResultsStore, smoke: bool, metric: str, rename: bool = True,
                 records: dict | None = None) -> list[dict]:
    """Each entry's stored points, matched by configuration (never by position).

    A stored row belongs to entry i when its point is a point of entry i's space and its
    trial_id is the id that entry gives that point and seed now: a changed task, an inserted
    entry or a narrowed range leaves old rows to no entry (they are stale).  Returns, per
    entry, {point text: {"values", "params", "done": {seed: (trial_id, metric)}}} (and in `records`, when
    given, trial_id -> record of every matched row); rows stored under the
    old id rule are renamed to their current ids on the way (in the tables too unless `rename`
    is False: a look before the run holds the lease writes nothing).
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
            for spelled, record in study.search_pairs(index, values, smoke):
                tid, old = record.trial_id, legacy_trial_id(spelled)
                if old in stored and tid not in stored:
                    renames[old] = tid
                    stored[tid] = stored[old]
                if tid in stored:
                    found[record.seed] = (tid, metric_value(stored[tid], metric))
                    if records is not None:
                        records[tid] = record
            if found:
                key = point_text(values)
                entry_points = out[index].setdefault(key, {"values": values, "params": params, "done": {}})
                entry_points["done"].update(found)
                # no break: rows of one point text and recorded position may belong to several
                # entries (an entry inserted since); trial ids never coincide across entries
    if renames and rename:
        store.rename(renames)
    return out


def _seed(study: Study, index: int, finished: int) -> int:
    """The entry's sampler seed: its configuration and how many points are done, so a resumed
    run draws new points instead of replaying the ones it already ran."""
    text = json.dumps([study.name, json_ready(study.entries[index].model_dump()), finished], sort_keys=True)
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) % 2**31


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


def current_search_ids(study: Study, store: ResultsStore, smoke: bool, rename: bool = True) -> dict[str, str]:
    """trial_id -> label of the stored rows that belong to the current study's entries."""
    out = {}
    for index, points in enumerate(match_points(study, store, smoke, study.search.metric, rename=rename)):
        for point in points.values():
            for tid, _ in point["done"].values():
                out[tid] = study.label(index)
    return out


def current_search_records(study: Study, store: ResultsStore, smoke: bool) -> dict:
    """trial_id -> record of the stored rows that belong to the current study's entries."""
    records: dict = {}
    match_points(study, store, smoke, study.search.metric, rename=False, records=records)
    return records
