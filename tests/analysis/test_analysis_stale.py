"""Which rows count: ``current.json`` beside the tables names the current study's trials and labels."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

import analysis
from analysis import ResultsError, StaleRowsWarning


@pytest.fixture()
def with_current(results_dir, tmp_path):
    """A copy of the generated study where the first sgd seed's rows belong to an earlier version."""
    root = tmp_path / "study"
    shutil.copytree(results_dir, root)
    trials = pd.read_parquet(root / "trials.parquet")
    stale = trials[(trials["label"] == "sgd") & (trials["seed"] == 0)]["trial_id"]
    current = {tid: ("sgd-renamed" if label == "sgd" else label)
               for tid, label in zip(trials["trial_id"], trials["label"]) if tid not in set(stale)}
    (root / "current.json").write_text(json.dumps({"study": "fixture", "trials": current}))
    return root, trials, set(stale)


def test_load_leaves_stale_rows_out_says_how_many_and_relabels(with_current):
    root, everything, stale = with_current
    with pytest.warns(StaleRowsWarning, match=f"left out {len(stale)} stale rows"):
        trials, curves = analysis.load(root)
    assert len(trials) == len(everything) - len(stale) and not set(trials["trial_id"]) & stale
    assert not set(curves["trial_id"]) & stale and trials.attrs["stale_rows"] == len(stale)
    assert "sgd" not in set(trials["label"]) and "sgd-renamed" in set(trials["label"])  # a rename relabels


def test_include_stale_brings_them_back(with_current):
    root, everything, stale = with_current
    trials, curves = analysis.load(root, include_stale=True)
    assert len(trials) == len(everything) and stale <= set(trials["trial_id"])
    assert stale <= set(curves["trial_id"])


def test_results_without_current_json_count_every_row(results_dir):
    trials, _ = analysis.load(results_dir)
    assert trials.attrs["stale_rows"] == 0 and len(trials) == len(pd.read_parquet(results_dir / "trials.parquet"))


def test_only_stale_rows_is_a_one_line_error(with_current):
    root, _, _ = with_current
    (root / "current.json").write_text(json.dumps({"study": "fixture", "trials": {}}))
    with pytest.raises(ResultsError, match="no trials of the current study"):
        with pytest.warns(StaleRowsWarning):
            analysis.load(root)


def test_the_report_says_how_many_rows_it_left_out(with_current, tmp_path):
    root, _, stale = with_current
    small = tmp_path / "small"  # one label keeps the report short
    small.mkdir()
    trials = pd.read_parquet(root / "trials.parquet")
    trials = trials[trials["label"] == "sgd"]
    trials.to_parquet(small / "trials.parquet")
    curves = pd.read_parquet(root / "curves.parquet")
    curves[curves["trial_id"].isin(trials["trial_id"])].to_parquet(small / "curves.parquet")
    shutil.copy(root / "current.json", small / "current.json")
    said = []
    analysis.write_report(small, tmp_path / "figures", echo=said.append)
    assert said[0].startswith(f"left out {len(stale)} stale rows")
