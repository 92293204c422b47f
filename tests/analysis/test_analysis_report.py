"""write_report: every figure and table the data supports, a one-line note for each it skips."""
from __future__ import annotations

import pandas as pd
import pytest
from synthetic_results import generate, write

import analysis
from analysis.report import write_report

FIGURES = ["valley", "decay", "hd", "curves", "lr", "gamma", "combination", "expected_best", "importance"]
TABLES = ["sensitivity", "best_configs", "combination", "thresholds", "valley_width", "expected_best", "importance"]


@pytest.fixture(scope="module")
def report(results_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    lines = []
    return out, write_report(results_dir, out, echo=lines.append), lines


def test_writes_every_figure_and_table_of_a_full_study(report):
    out, paths, lines = report
    expected = {f"{name}.{ext}" for name in FIGURES for ext in ("png", "pdf")}
    expected |= {f"{name}.{ext}" for name in TABLES for ext in ("csv", "md")}
    assert sorted(p.name for p in paths) == sorted(expected)
    assert all(p.parent == out and p.stat().st_size > 0 for p in paths)
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths if p.suffix == ".png")
    assert all(p.read_bytes().startswith(b"%PDF") for p in paths if p.suffix == ".pdf")
    assert not [line for line in lines if line.startswith("skipped")]
    assert lines[-1] == f"{len(expected)} files in {out}"
    assert all(str(p) in "\n".join(lines) for p in paths)  # it says what it wrote


def test_tables_hold_the_statistics(report, results_dir):
    out, _, _ = report
    trials, _ = analysis.load(results_dir)
    sensitivity = pd.read_csv(out / "sensitivity.csv")
    assert len(sensitivity) == 2 * trials.groupby(["series", "beta", "lr"], dropna=False).ngroups
    best = (out / "best_configs.md").read_text()
    assert "| adam-cam-hd-ratio | gammas=[0.25, 0.75] |" in best and " ± " in best
    thresholds = (out / "thresholds.md").read_text()
    assert "loss < 0.5" in thresholds and "never (0/3)" in thresholds
    widths = pd.read_csv(out / "valley_width.csv")
    assert set(zip(widths["rtol"], widths["atol"])) == {(0.1, 0.0), (0.0, 0.05)}
    assert (pd.read_csv(out / "importance.csv")["series"] == "sgd-hd").all()


def test_skips_what_the_data_cannot_support_with_one_line_each(tmp_path):
    trials, _ = generate()
    trials = trials[(trials["label"] == "sgd") & trials["decay"].isna() & (trials["lr"] == 0.1)]
    trials = trials.drop(columns=[c for c in trials if c.startswith("iters_to_")])
    directory = tmp_path / "tiny"
    directory.mkdir()
    trials.to_parquet(directory / "trials.parquet")  # and no curves.parquet
    lines = []
    paths = write_report(directory, tmp_path / "out", echo=lines.append)
    assert sorted(p.name for p in paths) == ["best_configs.csv", "best_configs.md", "sensitivity.csv",
                                             "sensitivity.md"]
    skipped = {line.split(":")[0]: line for line in lines if line.startswith("skipped")}
    assert sorted(skipped) == sorted(f"skipped {name}" for name in (
        "valleys", "decay", "hd", "learning curves", "learned lr", "gammas", "combination", "thresholds",
        "valley widths", "expected", "importance"))
    assert "no optimizer was run at two or more lr values" in skipped["skipped valleys"]
    assert "no iters_to_<threshold> columns" in skipped["skipped thresholds"]
    assert all("\n" not in line for line in lines)


def test_default_out_dir_and_bad_directories(tmp_path, results_dir):
    with pytest.raises(analysis.ResultsError, match="results directory not found"):
        write_report(tmp_path / "missing", tmp_path / "out")
    trials = pd.read_parquet(results_dir / "trials.parquet")
    one = trials[(trials["label"] == "adam") & (trials["lr"] == 1e-3)]
    small = write(tmp_path / "small", one, pd.read_parquet(results_dir / "curves.parquet").iloc[:0])
    paths = write_report(small, echo=lambda line: None)
    assert paths and {p.parent for p in paths} == {small / "figures"}


def test_a_smoke_run_says_smoke_in_every_title(tmp_path, results_dir, monkeypatch):
    from matplotlib.figure import Figure

    trials = pd.read_parquet(results_dir / "trials.parquet")
    sgd = trials[trials["label"] == "sgd"]
    curves = pd.read_parquet(results_dir / "curves.parquet")
    small = write(tmp_path / "small", sgd, curves[curves["trial_id"].isin(sgd["trial_id"])])
    (small / "study.yaml").write_text("# resolved by sensitivity: smoke: true, trials: 9\nname: small\n")
    titles = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (titles.append(fig._suptitle.get_text()),
                                                                  save(fig, *a, **k)))
    paths = write_report(small, tmp_path / "out", echo=lambda line: None)
    assert titles and all("smoke" in title for title in titles)
    assert all("smoke" in p.read_text().splitlines()[0] for p in paths if p.suffix == ".md")
