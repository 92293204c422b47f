"""--smoke entries that become one trial, and a flush that holds one trial twice.

--smoke sets one epoch, small batches and synthetic data, so two entries that differ only there run the
same trials: the smoke study keeps each trial once (the first entry's, in file order) and says which
entries it merged. A flush with a trial twice stores one row and one curve (one row per epoch).

Budget: a second or two; no Ray, no training.
"""

from __future__ import annotations

import pytest

from sensitivity.preflight import plan_run
from sensitivity.results import ResultsStore
from sensitivity.study import Study, StudyError

TASK = {"dataset": "digits", "model": "mlp", "model_args": {"hidden": [16]}, "batch_size": 64, "epochs": 2}


def s13(**fields) -> Study:
    data = {"name": "s13", "task": dict(TASK), "seeds": 2, "optimizers": [
        {"name": "sgd", "lr": [0.1, 1.0]},
        {"name": "sgd", "label": "sgd-long", "lr": [0.1, 1.0], "task": {"epochs": 3}}]}
    data.update(fields)
    return Study.from_dict(data)


def test_smoke_keeps_each_trial_once_under_the_first_entry():
    s = s13()
    assert s.counts() == [4, 4] and len({t.trial_id for t in s.trials()}) == 8  # a full run: two entries of their own
    assert s.counts(smoke=True) == [2, 0]
    trials = s.trials(smoke=True)
    assert len(trials) == 2 and len({t.trial_id for t in trials}) == 2
    assert [t.label for t in trials] == ["sgd", "sgd"]
    assert [t.trial_id for t in s.iter_trials(smoke=True)] == [t.trial_id for t in trials]
    assert [r.trial_id for _, r in s.spelled_trials(smoke=True)] == [t.trial_id for t in trials]
    assert len(list(s.point_records(smoke=True))) == 2
    assert s.entry_trials(1, smoke=True) == []
    assert s.to_yaml(smoke=True).startswith("# resolved by sensitivity: smoke: true, trials: 2\n")
    (line,) = s.smoke_merges()
    assert "\n" not in line
    assert line == "--smoke: optimizers[1] sgd-long runs as optimizers[0] sgd " \
                   "(they differ only in what --smoke changes: epochs)"
    assert "# " + line in s.to_yaml(smoke=True)


def test_smoke_merges_only_the_trials_that_coincide():
    s = s13(optimizers=[{"name": "sgd", "lr": [0.1, 1.0]},
                        {"name": "sgd", "label": "sgd-long", "lr": [0.1, 10.0], "task": {"epochs": 3}}])
    assert s.counts(smoke=True) == [2, 1]
    assert [(t.label, t.lr) for t in s.trials(smoke=True)] == [("sgd", 0.1), ("sgd", 1.0), ("sgd-long", 10.0)]
    assert s.smoke_merges() == ["--smoke: optimizers[1] sgd-long runs 1 of its 2 trials as optimizers[0] sgd "
                                "(they differ only in what --smoke changes: epochs)"]


def test_smoke_names_every_key_it_changed():
    task = {"dataset": "cifar10", "model": "mlp", "batch_size": 128, "epochs": 10, "data_dir": "/nonexistent"}
    s = s13(task=task, seeds=1, optimizers=[
        {"name": "adam", "lr": 1e-3},
        {"name": "adam", "lr": 1e-3, "label": "adam-aug", "task": {"augment": True, "batch_size": 32}},
        {"name": "sgd", "lr": 1e-3}])
    assert s.counts(smoke=True) == [1, 0, 1]
    assert s.smoke_merges() == ["--smoke: optimizers[1] adam-aug runs as optimizers[0] adam "
                                "(they differ only in what --smoke changes: augment, batch_size)"]


def test_smoke_run_plan_counts_labels_and_nothing_left_agree(tmp_path):
    s = s13()
    store = ResultsStore(tmp_path / "s13")
    plan = plan_run(s, store, smoke=True, write=False)
    assert (plan.total, plan.left) == (2, 2)
    assert set(plan.current.labels.values()) == {"sgd"} and len(plan.current.labels) == 2
    rows = [{"trial_id": t.trial_id, "status": "ok", "final_test_loss": 0.5} for t in plan.records]
    curves = [{"trial_id": t.trial_id, "epoch": 1, "test_loss": 0.5} for t in plan.records]
    assert store.append(rows, curves) == 2
    again = plan_run(s, ResultsStore(tmp_path / "s13"), smoke=True, write=False)
    assert (again.total, again.left) == (2, 0)  # "nothing to run; all 2 trials are in ..."


def test_smoke_search_entries_that_coincide_are_refused_in_one_line():
    space = {"lr": {"low": 1e-3, "high": 1.0, "log": True}}
    s = s13(search={"trials": 4, "space": space},
            optimizers=[{"name": "sgd"}, {"name": "sgd", "label": "sgd-long", "task": {"epochs": 3}}])
    assert s.counts() == [8, 8]  # a full search is fine
    with pytest.raises(StudyError) as err:
        s.counts(smoke=True)
    message = str(err.value)
    assert "\n" not in message and "optimizers[1] sgd-long" in message and "optimizers[0] sgd" in message
    assert "epochs" in message
    with pytest.raises(StudyError):
        s.search_plan(1, smoke=True)


def test_distinct_smoke_trials_are_not_merged():
    s = s13(optimizers=[{"name": "sgd", "lr": [0.1, 1.0]}, {"name": "sgd", "label": "sgd-b", "lr": [0.2, 2.0]}])
    assert s.counts(smoke=True) == [2, 2] and s.smoke_merges() == []


# -- the store --------------------------------------------------------------


def _curve(tid: str, epoch: int, loss: float) -> dict:
    return {"trial_id": tid, "epoch": epoch, "train_loss": loss, "test_loss": loss}


def test_append_drops_the_curves_of_a_repeated_row(tmp_path):
    store = ResultsStore(tmp_path / "s")
    rows = [{"trial_id": "a", "status": "ok", "final_test_loss": 1.0},
            {"trial_id": "b", "status": "ok", "final_test_loss": 2.0},
            {"trial_id": "a", "status": "ok", "final_test_loss": 3.0}]
    curves = [_curve("a", 1, 1.0), _curve("a", 2, 1.5), _curve("b", 1, 2.0),
              _curve("a", 1, 3.0), _curve("a", 2, 3.5)]
    assert store.append(rows, curves) == 2
    for reader in (store, ResultsStore(tmp_path / "s")):
        got = reader.curves.sort_values(["trial_id", "epoch"])
        assert list(zip(got["trial_id"], got["epoch"], got["test_loss"])) == [("a", 1, 1.0), ("a", 2, 1.5),
                                                                             ("b", 1, 2.0)]
        assert len(reader.trials) == 2
    store.compact()
    got = ResultsStore(tmp_path / "s").curves
    assert len(got) == 3 and not got.duplicated(["trial_id", "epoch"]).any()
    # a later flush of a stored trial adds neither its row nor its curve
    assert store.append([{"trial_id": "b", "status": "ok"}], [_curve("b", 1, 9.0)]) == 0
    assert len(ResultsStore(tmp_path / "s").curves) == 3


def test_validate_smoke_says_why_an_entry_counts_no_trials(tmp_path, capsys):
    import yaml

    from sensitivity.cli import main

    path = tmp_path / "s13.yaml"
    path.write_text(yaml.safe_dump({"name": "s13", "task": TASK, "seeds": 2, "optimizers": [
        {"name": "sgd", "lr": [0.1, 1.0]}, {"name": "sgd", "label": "sgd-long", "lr": [0.1, 1.0],
                                            "task": {"epochs": 3}}]}))
    assert main(["validate", str(path), "--smoke"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2].split() == ["[1]", "sgd-long", "0", "trials"]
    assert out[4] == "  --smoke: optimizers[1] sgd-long runs as optimizers[0] sgd (they differ only in what " \
                     "--smoke changes: epochs)"
    assert main(["validate", str(path)]) == 0 and "--smoke:" not in capsys.readouterr().out
