"""Adaptive α0 refinement: the planner on a synthetic loss surface, the study field, one real Ray run."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml

import analysis
from sensitivity.preflight import current_rows
from sensitivity.record import TrialRecord
from sensitivity.results import ResultsStore
from sensitivity.study import REFINE_POINTS, Study, StudyError
from sensitivity.sweep.refine import plan, series_key

TOLERANCE = 0.1
RESOLUTION = 0.2
TASK = {"dataset": "digits", "model": "mlp", "model_args": {"hidden": [16]}, "batch_size": 64, "epochs": 1}


def _surface(x: float, centre: float, curvature: float) -> float:
    """Mean loss at log10 α0 = x: a parabola in log α0 with its minimum 1 at ``centre``; diverged past centre + 2."""
    return math.inf if x >= centre + 2 else 1 + curvature * (x - centre) ** 2


def _edges(centre: float, curvature: float) -> tuple[float, float]:
    """Where the surface crosses best·(1 + TOLERANCE) = 1.1."""
    half = math.sqrt(TOLERANCE / curvature)
    return centre - half, centre + half


SERIES = {"a": (-2.0, 0.25), "b": (-3.3, 1.0)}  # name: (centre, curvature)


def _rows(series: str, lrs, round_: int) -> list[dict]:
    centre, curvature = SERIES[series]
    rows = []
    for lr in lrs:
        for seed, offset in ((0, -0.01), (1, 0.01)):  # seeds scatter around the surface; their mean is on it
            loss = _surface(math.log10(lr), centre, curvature) + offset
            rows.append({"series": series, "optimizer": series, "lr": lr, "beta": None, "decay": None, "seed": seed,
                         "status": "diverged" if math.isinf(loss) else "ok", "min_train_loss": loss,
                         "min_test_loss": loss, "round": round_})
    # an errored seed is no evidence: its +inf loss (as the sweep writes it) must not read as diverged
    rows.append({**rows[0], "seed": 2, "status": "error", "min_train_loss": math.inf, "min_test_loss": math.inf})
    return rows


def test_planner_brackets_the_valley_edges_and_the_best_within_the_resolution():
    grid = [10.0 ** x for x in range(-6, 2)]  # one decade apart
    rows = pd.DataFrame([r for s in SERIES for r in _rows(s, grid, 0)])
    rounds = 0
    for round_ in range(1, 9):
        new = plan(rows, resolution=RESOLUTION, tolerance=TOLERANCE)
        if not new:
            break
        rounds = round_
        assert all(len(lrs) <= REFINE_POINTS for lrs in new.values())
        assert not set(rows["lr"]) & {lr for lrs in new.values() for lr in lrs}  # only new points
        rows = pd.concat([rows, pd.DataFrame([r for s, lrs in new.items() for r in _rows(s, lrs, round_)])])
    assert 2 <= rounds < 8  # each round halves the brackets it splits: 1 → 0.5 → 0.25 → 0.125 decades
    assert plan(rows, resolution=RESOLUTION, tolerance=TOLERANCE) == {}

    # the same surface through analysis: its valley edges and best α0 are within the resolution of the truth
    trials = rows.drop(columns="series")
    table = analysis.sensitivity_table(trials)
    widths = analysis.valley_width(table, rtol=TOLERANCE)
    metrics = analysis.metrics_table(trials, metrics=("min_train_loss",), max_gap=RESOLUTION, n_boot=20)
    for name, (centre, curvature) in SERIES.items():
        low, high = _edges(centre, curvature)
        w = widths[widths["series"] == name].iloc[0]
        assert abs(math.log10(w["low_lr"]) - low) <= RESOLUTION and abs(math.log10(w["high_lr"]) - high) <= RESOLUTION
        assert abs(math.log10(w["best_lr"]) - centre) <= RESOLUTION / 2 + 1e-9
        resolved = metrics[(metrics["series"] == name)].set_index("statistic")["resolved"]
        assert resolved["best_lr"] and resolved["valley_width@rtol=0.1"]
        lrs = np.log10(sorted(set(rows.loc[rows["series"] == name, "lr"])))
        for edge in (low, high):  # the grid now holds two points at most RESOLUTION apart around each edge
            below, above = lrs[lrs <= edge].max(), lrs[lrs >= edge].min()
            assert above - below <= RESOLUTION + 1e-9


def test_planner_splits_each_series_on_its_own_and_only_wide_brackets():
    fine = [10.0 ** (-3.3 + k / 10) for k in range(-10, 11)]  # b on a 0.1-decade grid already
    coarse = [1e-4, 1e-2, 1.0]
    rows = pd.DataFrame(_rows("a", coarse, 0) + _rows("b", fine, 0))
    new = plan(rows, resolution=RESOLUTION, tolerance=TOLERANCE)
    assert list(new) == ["a"]
    # best 1e-2: both sides, which are also the valley's edge brackets; midpoints rounded to 4 digits
    assert new["a"] == [1e-3, 0.1]
    # one α0, or nothing finite: nothing to bracket
    assert plan(pd.DataFrame(_rows("a", [1e-2], 0)), resolution=RESOLUTION, tolerance=TOLERANCE) == {}
    assert plan(pd.DataFrame(_rows("a", [1.0, 10.0], 0)), resolution=RESOLUTION, tolerance=TOLERANCE) == {}


def test_series_key_ignores_lr_and_seed_only():
    base = TrialRecord.from_config({"optimizer": "sgd", "lr": 0.1, "seed": 0, "dataset": "digits", "model": "mlp"})
    assert series_key(base) == series_key(base.replace(lr=1.0, seed=3))
    assert series_key(base) != series_key(TrialRecord.from_config({**base.config(), "optimizer": "adam"}))


def _study(**refine):
    data = {"name": "refined", "task": TASK, "seeds": 2,
            "optimizers": [{"name": "sgd", "lr": [1e-3, 1e-1]}, {"name": "sgd-hd", "lr": [1e-3, 1e-1],
                                                                  "beta": [0.0, 1e-4]},
                           {"name": "adam", "lr": 1e-3}]}
    if refine:
        data["refine"] = refine
    return Study.from_dict(data)


def test_refine_field_is_validated_and_counted():
    study = _study(rounds=3, resolution=0.25)
    assert (study.refine.tolerance, study.refine.metric) == (0.1, "min_train_loss")
    # at most REFINE_POINTS α0 per series and round, every seed; a one-α0 entry is never refined
    assert study.refine_counts() == [3 * REFINE_POINTS * 2, 3 * REFINE_POINTS * 2 * 2, 0]
    assert _study().refine_counts() == [0, 0, 0]
    assert yaml.safe_load(study.to_yaml())["refine"] == {"rounds": 3, "resolution": 0.25, "tolerance": 0.1,
                                                         "metric": "min_train_loss"}
    for bad, message in (({"rounds": 0, "resolution": 0.25}, "refine.rounds"),
                         ({"rounds": 1}, "refine.resolution: missing"),
                         ({"rounds": 1, "resolution": 0.2, "metric": "acc"}, "refine.metric"),
                         ({"rounds": 1, "resolution": 0.2, "step": 1}, "refine.step: unknown field; choose from "
                                                                       "rounds, resolution, tolerance, metric")):
        with pytest.raises(StudyError, match=message):
            _study(**bad)
    with pytest.raises(StudyError, match="refine: applies to grid studies only"):
        Study.from_dict({"name": "s", "task": TASK, "optimizers": [{"name": "sgd", "lr": 0.1}],
                         "search": {"trials": 2, "space": {"lr": {"low": 1e-3, "high": 1.0, "log": True}}},
                         "refine": {"rounds": 1, "resolution": 0.2}})


@pytest.mark.slow
def test_a_refined_grid_runs_on_ray_and_resumes(tmp_path, ray_local):
    from sensitivity.sweep import run_study

    data = {"name": "refined", "task": TASK, "seeds": 1, "optimizers": [{"name": "sgd", "lr": [1e-3, 1.0]}]}
    grid_only = run_study(Study.from_dict(data), out=tmp_path, quiet=True)
    assert (grid_only.ran, grid_only.missing) == (2, 0)
    study = Study.from_dict({**data, "refine": {"rounds": 1, "resolution": 1.0}})
    summary = run_study(study, out=tmp_path, quiet=True)  # the grid is done: only round 1 runs
    assert (summary.ran, summary.skipped, summary.missing, summary.total) == (1, 2, 0, 3)
    trials = pd.read_parquet(tmp_path / "refined" / "trials.parquet")
    assert trials["trial_id"].is_unique and len(trials) == 3
    assert sorted(zip(trials["round"], trials["lr"])) == [(0, 1e-3), (0, 1.0), (1, 0.03162)]
    assert trials["init_train_loss"].between(1.5, 3.5).all()  # L0 in every row
    from sensitivity.preflight import pending
    from sensitivity.results import ResultsStore

    assert pending(study, ResultsStore(tmp_path / "refined")).left == 0  # `run` would not start Ray
    again = run_study(study, out=tmp_path, quiet=True)  # resume: the same plan, nothing left to run
    assert (again.ran, again.skipped, again.total, again.stale) == (0, 3, 3, 0)
    assert len(pd.read_parquet(tmp_path / "refined" / "trials.parquet")) == 3
    loaded, _ = analysis.load(tmp_path / "refined")  # the round's row is the study's, not stale
    assert len(loaded) == 3 and sorted(loaded["round"]) == [0, 0, 1]


def test_validate_prints_the_most_trials_refinement_may_run(tmp_path, capsys):
    from sensitivity.cli import main

    path = tmp_path / "s.yaml"
    path.write_text("name: s\ntask: {dataset: digits, model: mlp}\nseeds: 3\noptimizers:\n"
                    "  - {name: sgd, lr: [0.1, 0.01]}\n  - {name: adam, lr: 0.001}\n"
                    "refine: {rounds: 2, resolution: 0.25}\n")
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2].split() == ["total", "9", "trials"]
    # 2 rounds x 4 α0 x 3 seeds for the swept entry; the one-α0 entry is never refined
    assert out[-1] == ("  refine: 2 rounds to 0.25 decades (tolerance 0.1 on min_train_loss): "
                       "up to 24 more trials, at most 33 trials")
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("resolution: 0.25", "resolution: -1"))
    assert main(["validate", str(bad)]) == 2
    assert "refine.resolution" in capsys.readouterr().err


def test_a_finished_refined_grid_is_known_done_before_ray_starts(tmp_path):
    """`pending` plans the refinement rounds from the stored rows as the run does: a rerun with every
    round stored has nothing left (and so never starts Ray); a grid whose round is missing has it left."""
    from sensitivity.preflight import current_rows, pending
    from sensitivity.results import ResultsStore, trial_id

    data = {"name": "refined", "task": TASK, "seeds": 1,
            "optimizers": [{"name": "sgd", "lr": [1e-3, 1e-2, 1e-1, 1.0]}],
            "refine": {"rounds": 1, "resolution": 0.5}}
    study = Study.from_dict(data)
    store = ResultsStore(tmp_path / "refined")
    loss = {1e-3: 2.0, 1e-2: 0.5, 1e-1: 0.52, 1.0: math.inf}  # best 1e-2, valley up to 1e-1, 1.0 diverged

    def rows(configs, round_):
        return [{"trial_id": c.trial_id, "lr": c.lr, "seed": c.seed, "round": round_,
                 "status": "diverged" if math.isinf(loss.get(c.lr, 1.0)) else "ok",
                 "min_train_loss": loss.get(c.lr, 1.0)} for c in configs]

    grid = study.trials()
    assert pending(study, store).left == 4
    store.append(rows(grid, 0), [])
    # round 1 splits the brackets around the best α0 and at both valley edges: 3.162e-3, 3.162e-2, 0.3162
    assert pending(study, store).left == 3
    round1 = [grid[0].replace(lr=lr) for lr in (0.003162, 0.03162, 0.3162)]
    store.append(rows(round1, 1)[:2], [])
    assert pending(study, store).left == 1
    store.append(rows(round1, 1)[2:], [])
    assert (pending(study, store).left, pending(study, store).total) == (0, 7)
    # the rounds' rows are the study's rows: current.json lists them, so analysis keeps them
    current = current_rows(study, store)
    assert set(current.labels) == {trial_id(c) for c in grid + round1} and current.stale() == 0
    two_rounds = Study.from_dict({**data, "refine": {"rounds": 2, "resolution": 0.5}})
    assert pending(two_rounds, store).left > 0  # round 2 splits the new, narrower brackets


def test_a_refined_studys_measured_points_stay_current_after_a_grid_edit(tmp_path):
    """The grid gains an α0 that a refinement round had measured: that round's other points are
    still points of the same series, so they stay current (analysis keeps them) and nothing reruns."""
    data = {"name": "refined", "task": TASK, "seeds": 1,
            "optimizers": [{"name": "sgd", "lr": [1e-3, 1e-2, 1e-1, 1.0]}],
            "refine": {"rounds": 1, "resolution": 0.5}}
    study = Study.from_dict(data)
    store = ResultsStore(tmp_path / "refined")
    loss = {1e-3: 2.0, 1e-2: 0.5, 1e-1: 0.52, 1.0: math.inf}
    grid = study.trials()
    round1 = [grid[0].replace(lr=lr) for lr in (0.003162, 0.03162, 0.3162)]
    store.append([{"trial_id": c.trial_id, "lr": c.lr, "seed": c.seed, "status": "ok",
                   "min_train_loss": loss.get(c.lr, 1.0)} for c in grid + round1], [])
    assert current_rows(study, store).stale() == 0
    edited = Study.from_dict({**data, "optimizers": [{"name": "sgd", "lr": [1e-3, 1e-2, 0.03162, 1e-1, 1.0]}]})
    current = current_rows(edited, store)
    assert current.stale() == 0 and set(current.labels) >= {c.trial_id for c in grid + round1}
    # another seed is another series point set: its rows would not be this study's
    other = TrialRecord.from_config({**grid[0].config(), "seed": 9, "lr": 0.3162})
    store.append([{"trial_id": other.trial_id, "lr": 0.3162, "seed": 9, "status": "ok", "min_train_loss": 1.0}], [])
    assert current_rows(edited, store).stale() == 1


@pytest.mark.parametrize("refined", [False, True], ids=["plain grid", "refined grid"])
def test_which_stored_alpha0_points_stay_current_after_a_grid_edit(tmp_path, refined):
    """The rule README "Which rows count" states: an α0 added to a grid keeps every stored point current;
    an α0 removed from a plain grid is stale (the researcher dropped it); in a refined study every
    stored α0 of a current series stays current (the rounds placed and measured them), an α0 removed
    from its grid included, and so does a row an older version stored under an alias."""
    data = {"name": "edit", "task": TASK, "seeds": 2,
            "optimizers": [{"name": "sgd-hd", "lr": [1e-3, 1e-2, 1e-1, 1.0]}, {"name": "adam", "lr": [1e-2]}]}
    if refined:
        data["refine"] = {"rounds": 1, "resolution": 0.5}
    study = Study.from_dict(data)
    grid = study.trials()
    hd = [r for r in grid if r.optimizer == "sgd-hd-sgd"]
    between = [r.replace(lr=0.03162) for r in hd if r.lr == 1e-2]  # a round's point (or one an old grid had)
    rows = [{**r.columns(), "status": "ok", "min_train_loss": 1.0} for r in grid + between]
    for row in rows:
        if row["lr"] == 0.03162:
            row["optimizer"] = "sgd-hd"  # stored by a version that kept the alias
    store = ResultsStore(tmp_path / "edit")
    store.append(rows, [])
    added = Study.from_dict({**data, "optimizers": [{**data["optimizers"][0], "lr": [1e-3, 1e-2, 1e-1, 1.0, 10.0]},
                                                    data["optimizers"][1]]})
    assert current_rows(added, store).stale() == (0 if refined else len(between))
    removed = Study.from_dict({**data, "optimizers": [{**data["optimizers"][0], "lr": [1e-3, 1e-2, 1e-1]},
                                                      data["optimizers"][1]]})
    current = current_rows(removed, store)
    dropped = {r.trial_id for r in hd if r.lr == 1.0} | {r.trial_id for r in between}
    if refined:
        assert current.stale() == 0 and dropped <= set(current.labels)
    else:
        assert current.stale() == len(dropped) and not dropped & set(current.labels)
    # another seed, another task: never a point of this study's series, refined or not
    other = [hd[0].replace(seed=9), hd[0].replace(epochs=3)]
    store.append([{**r.columns(), "status": "ok", "min_train_loss": 1.0} for r in other], [])
    assert not {r.trial_id for r in other} & set(current_rows(removed, store).labels)
