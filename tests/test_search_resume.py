"""Optuna searches that resume: exactly the budget, past points matched by configuration.

The planning is tested in-process (a fake runner drives the real OptunaSearch searchers and
writes rows as the sweep would); one slow test interrupts and resumes a real Ray search.
"""

from __future__ import annotations

import math
import os

import pandas as pd
import pytest
from ray.tune.search import Searcher

from sensitivity.identity import Current
from sensitivity.results import ResultsStore, trial_id
from sensitivity.study import Study
from sensitivity.sweep.points import point_values, current_search_ids, plan_entries
from sensitivity.sweep.search import _Entries, make_entries

TASK = {"dataset": "digits", "model": "mlp", "model_args": {"hidden": [8]}, "epochs": 1}


def study(trials=5, sampler="random", entries=None, **task):
    return Study.from_dict({
        "name": "opt", "task": {**TASK, **task}, "seeds": 2,
        "optimizers": entries or [{"name": "sgd"}],
        "search": {"trials": trials, "sampler": sampler, "space": {"lr": {"low": 1e-3, "high": 1.0, "log": True}}}})


def simulate(s: Study, store: ResultsStore, stop_after: int | None = None, storage=None) -> _Entries:
    """What run_search does, without Ray: ask, 'train' every seed (loss = lr), store rows, tell."""
    entries = make_entries(s, plan_entries(s, store, False), False, limit=1, storage=storage)
    asked = 0
    while stop_after is None or asked < stop_after:
        proposal = entries.suggest(f"t{asked}")
        if proposal == Searcher.FINISHED:
            break
        assert proposal is not None
        asked += 1
        index = proposal["entry"]
        values, point = point_values(s, index, proposal["point"], False)
        rows = [{"trial_id": trial_id(c), "status": "ok", "min_train_loss": c.lr, "label": c.label,
                 "optimizer": c.optimizer, "lr": c.lr, "seed": c.seed, "epochs": c.epochs,
                 "search_entry": index, "search_point": point}
                for c in s.search_configs(index, values)]
        store.append(rows, [])
        entries.on_trial_complete(f"t{asked - 1}", {"objective": sum(r["lr"] for r in rows) / len(rows)})
    return entries


def points(store: ResultsStore) -> pd.Series:
    return store.trials.groupby("search_point").size()


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_an_interrupted_search_rerun_completes_exactly_its_budget(tmp_path, sampler):
    store = ResultsStore(tmp_path)
    simulate(study(5, sampler), store, stop_after=2)  # killed after 2 of 5 points
    assert len(points(store)) == 2
    simulate(study(5, sampler), store)
    per_point = points(store)
    assert len(per_point) == 5 and (per_point == 2).all() and store.trials["trial_id"].is_unique
    plan = plan_entries(study(5, sampler), store, False)[0]
    assert plan["budget"] == 0 and len(plan["complete"]) == 5


def test_raising_trials_runs_exactly_the_extra_points(tmp_path):
    store = ResultsStore(tmp_path)
    simulate(study(2), store)
    first = set(points(store).index)
    simulate(study(4), store)
    assert len(points(store)) == 4 and first < set(points(store).index)
    assert len(store.trials) == 8


def test_a_point_cut_off_mid_seeds_is_finished_not_sampled_anew(tmp_path):
    store = ResultsStore(tmp_path)
    simulate(study(3), store)
    cut = store.trials.iloc[-1]
    store.drop([cut["trial_id"]])
    plan = plan_entries(study(3), store, False)[0]
    assert plan["budget"] == 1 and len(plan["partial"]) == 1
    simulate(study(3), store)
    assert len(points(store)) == 3 and len(store.trials) == 6


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_with_the_journal_a_resume_that_meets_old_points_completes_its_budget(tmp_path, sampler):
    """The seeded sampler proposes the killed run's points again: each repeat costs no budget, and
    the next proposal is a new point (asked under a new id: OptunaSearch keeps one Optuna trial
    per id, so a told id would return the finished point forever and the entry would stop short)."""
    from sensitivity.sweep.journal import optuna_storage

    store = ResultsStore(tmp_path)
    storage, save = optuna_storage(str(tmp_path))
    simulate(study(4, sampler), store, stop_after=1, storage=storage)
    # the killed run had asked a second point and stored one of its two seeds
    s = study(4, sampler)
    entries = make_entries(s, plan_entries(s, store, False), False, limit=1, storage=storage)
    values, point = point_values(s, 0, entries.suggest("killed")["point"], False)
    c = s.search_configs(0, values)[0]
    store.append([{"trial_id": trial_id(c), "status": "ok", "min_train_loss": c.lr, "label": c.label,
                   "optimizer": c.optimizer, "lr": c.lr, "seed": c.seed, "epochs": c.epochs,
                   "search_entry": 0, "search_point": point}], [])
    save()
    storage, _ = optuna_storage(str(tmp_path))
    resumed = simulate(s, store, storage=storage)
    per_point = points(store)
    assert len(per_point) == 4 and (per_point == 2).all() and store.trials["trial_id"].is_unique
    assert point in per_point.index and resumed.budgets[0] == 0


def test_a_changed_task_reruns_and_leaves_the_old_rows_stale(tmp_path):
    store = ResultsStore(tmp_path)
    simulate(study(2), store)
    longer = study(2, epochs=2)
    plan = plan_entries(longer, store, False)[0]
    assert plan["budget"] == 2 and not plan["complete"] and not plan["partial"]
    simulate(longer, store)
    assert sorted(store.trials["epochs"]) == [1] * 4 + [2] * 4
    current = Current(store, "opt", current_search_ids(longer, store, False))
    assert current.stale() == 4
    assert set(current.labels) == set(store.trials.loc[store.trials.epochs == 2, "trial_id"])


def test_an_inserted_entry_gets_no_history_of_another(tmp_path):
    store = ResultsStore(tmp_path)
    simulate(study(2), store)
    inserted = study(2, entries=[{"name": "adam"}, {"name": "sgd"}])
    adam, sgd = plan_entries(inserted, store, False)
    assert adam["budget"] == 2 and not adam["complete"]
    assert sgd["budget"] == 0 and len(sgd["complete"]) == 2  # sgd's points, found at its new position
    simulate(inserted, store)
    assert (store.trials["optimizer"] == "adam").sum() == 4 and len(store.trials) == 8


def test_each_entry_keeps_an_optuna_study_that_optunas_tools_open(tmp_path):
    import optuna
    from optuna.trial import TrialState

    from sensitivity.sweep.journal import OPTUNA_JOURNAL, optuna_storage, optuna_study_name

    store = ResultsStore(tmp_path)
    simulate(study(2), store)  # a table from before the journal: its points are added to it once
    storage, _ = optuna_storage(str(tmp_path))
    killed = simulate(study(4), store, stop_after=1, storage=storage)
    killed.suggest("in-flight")  # a point the kill cut off: left RUNNING in the journal
    simulate(study(4), store, storage=optuna_storage(str(tmp_path))[0])
    assert len(points(store)) == 4
    name = optuna_study_name(study(4), 0, False)
    reopened = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / OPTUNA_JOURNAL)))
    assert optuna.get_all_study_names(reopened) == [name]
    trials = optuna.load_study(study_name=name, storage=reopened).get_trials()
    complete = {t.params["lr"] for t in trials if t.state == TrialState.COMPLETE}
    assert complete == set(store.trials["lr"]) and len(complete) == 4
    assert not [t for t in trials if t.state == TrialState.RUNNING]  # the cut-off one is marked FAIL


def test_a_table_of_the_old_format_is_matched_and_migrated(tmp_path):
    import json

    from sensitivity.identity import legacy_trial_id

    s = study(2, entries=[{"name": "sgdn", "momentum": [0.5, 0.9]}])
    store = ResultsStore(tmp_path)
    # before: points as Optuna's choice indices, ids hashed from the config as spelt
    old_point = json.dumps({"lr": 0.01, "momentum__choice": 1}, sort_keys=True)
    pairs = list(s.search_pairs(0, {"lr": 0.01, "momentum": 0.9}))
    configs = [c for _, c in pairs]
    store.append([{"trial_id": legacy_trial_id(spelled), "status": "ok", "min_train_loss": 1.0, "seed": c.seed,
                   "search_entry": 0, "search_point": old_point} for spelled, c in pairs], [])
    plan = plan_entries(s, store, False)[0]
    assert plan["budget"] == 1 and len(plan["complete"]) == 1
    assert ResultsStore(tmp_path).done_ids() == {trial_id(c) for c in configs}  # renamed, not rerun


def test_on_a_uri_the_journal_is_downloaded_and_uploaded(tmp_path):
    import optuna

    from sensitivity.sweep.journal import OPTUNA_JOURNAL, optuna_storage, optuna_study_name

    store = ResultsStore(tmp_path)
    storage, save = optuna_storage(f"file://{tmp_path}?unused=1")
    simulate(study(2), store, storage=storage)
    assert not (tmp_path / OPTUNA_JOURNAL).exists()  # a local copy until the run ends
    save()
    again, _ = optuna_storage(f"file://{tmp_path}")
    ot_study = optuna.load_study(study_name=optuna_study_name(study(2), 0, False), storage=again)
    assert len(ot_study.trials) == 2


class _Replayer(Searcher):
    """A sampler that proposes the given points in order (like a reseeded RandomSampler)."""

    def __init__(self, proposals):
        super().__init__(metric="objective", mode="min")
        self.proposals, self.told = list(proposals), []

    def suggest(self, trial_id):
        return self.proposals.pop(0)

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.told.append(result)


def test_a_proposal_that_repeats_a_finished_point_costs_no_budget():
    sampler = _Replayer([{"lr": 0.1}, {"lr": 0.1}, {"lr": 0.2}])
    entries = _Entries({0: sampler}, {0: 2}, {0: {'{"lr": 0.1}': 0.5}},
                       key_of=lambda index, point: f'{{"lr": {point["lr"]}}}')
    assert entries.suggest("a") == {"entry": 0, "point": {"lr": 0.2}}
    assert entries.repeats == 2 and entries.budgets[0] == 1
    assert sampler.told == [{"objective": 0.5}, {"objective": 0.5}]  # the sampler learns the known value


@pytest.mark.slow
def test_a_real_search_interrupted_then_resumed(tmp_path, ray_local, s3):
    """On the local S3 server: a search killed after one of its two points, its journal uploaded (the
    point in flight left RUNNING there), is resumed by a real run that reads the journal back."""
    import ray

    from sensitivity.storage import join
    from sensitivity.sweep import run_study
    from sensitivity.sweep.journal import OPTUNA_JOURNAL, optuna_storage

    task = {"dataset": "synthetic", "model": "logreg", "epochs": 1, "batch_size": 16,
            "dataset_args": {"shape": [8], "num_classes": 2, "train_size": 32, "test_size": 16}}
    s = Study.from_dict({"name": "resume", "task": task, "seeds": 2, "optimizers": [{"name": "sgd"}],
                         "search": {"trials": 2, "sampler": "random", "max_concurrent": 1,
                                    "space": {"lr": {"low": 1e-3, "high": 1.0, "log": True}}}})
    storage = s3.uri(tmp_path.name)
    location = join(storage, "resume")
    journal = s3.key(f"{tmp_path.name}/resume/{OPTUNA_JOURNAL}")
    optuna_journal, save = optuna_storage(location)
    killed = simulate(s, ResultsStore(location), stop_after=1, storage=optuna_journal)
    killed.suggest("in-flight")  # the point the kill cut off
    save()
    assert _journal_states(s3.fs, journal, tmp_path) == ["COMPLETE", "RUNNING"]
    kept_point = ResultsStore(location).trials["search_point"].iloc[0]

    resumed = run_study(s, storage=storage, quiet=True)
    after = ResultsStore(location).trials
    assert resumed.missing == 0 and resumed.ran == 2 and resumed.skipped == 2
    assert after.groupby("search_point").size().tolist() == [2, 2] and kept_point in set(after.search_point)
    assert resumed.stale == 0 and math.isfinite(after["min_train_loss"].min())
    # the journal came back from the bucket (its point in flight marked failed) and went up again
    assert _journal_states(s3.fs, journal, tmp_path) == ["COMPLETE", "FAIL", "COMPLETE"]
    # Ray's workers ran with the credentials of the environment they inherited
    assert ray.get(ray.remote(lambda: os.environ.get("AWS_ACCESS_KEY_ID")).remote()) == "testing"


def _journal_states(fs, journal: str, tmp_path) -> list[str]:
    """States of the Optuna trials in a journal on the bucket."""
    import optuna

    local = tmp_path / "journal"
    with fs.open_input_stream(journal) as handle:
        local.write_bytes(handle.read())
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(local)))
    (name,) = optuna.get_all_study_names(storage)
    return [t.state.name for t in optuna.load_study(study_name=name, storage=storage).trials]


def test_a_killed_runs_journal_lock_does_not_stall_the_resume(tmp_path):
    # Optuna's lock is a symlink; a run killed mid-write leaves it dangling, and Optuna would wait
    # 30 s for it to age. The resuming run holds the study's lease: it removes the lock at once.
    from sensitivity.sweep.journal import OPTUNA_JOURNAL, optuna_storage

    lock = tmp_path / f"{OPTUNA_JOURNAL}.lock"
    lock.symlink_to(tmp_path / "gone")
    storage, _ = optuna_storage(str(tmp_path))
    assert not os.path.lexists(lock)
    import optuna

    optuna.create_study(storage=storage, study_name="s")  # writes the journal, taking the lock
    assert optuna.get_all_study_names(storage) == ["s"]
