"""`sensitivity plot RESULTS_DIR [--out DIR]` end to end, as a user runs it (a subprocess); RESULTS_DIR
may be a URI (the local S3 server, `s3` in tests/conftest.py)."""
from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(sys.executable).parent / "sensitivity"


def sensitivity(*args, cwd):
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    if not SCRIPT.exists():
        pytest.skip(f"no {SCRIPT} (the package is not installed in this interpreter's environment)")
    help_text = sensitivity("--help", cwd=tmp_path_factory.getbasetemp()).stdout
    assert "plot" in help_text
    return sensitivity


def test_plot_writes_figures_and_tables_and_notes_what_it_skips(cli, results_dir, tmp_path):
    # a slice of the generated study (write_report's full output is tested in-process)
    import pandas as pd

    small = tmp_path / "small"
    small.mkdir()
    trials = pd.read_parquet(results_dir / "trials.parquet")
    trials = trials[trials["label"] == "sgd"]  # constant step and lr-decay
    trials.to_parquet(small / "trials.parquet")
    curves = pd.read_parquet(results_dir / "curves.parquet")
    curves[curves["trial_id"].isin(trials["trial_id"])].to_parquet(small / "curves.parquet")
    out = tmp_path / "figures"
    result = cli("plot", small, "--out", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    names = {p.name for p in out.iterdir()}
    for figure in ("valley", "decay", "curves", "lr", "expected_best"):
        assert {f"{figure}.png", f"{figure}.pdf"} <= names
    for table in ("sensitivity", "best_configs", "thresholds", "valley_width", "expected_best"):
        assert {f"{table}.csv", f"{table}.md"} <= names
    assert str(out / "valley.png") in result.stdout  # it prints what it wrote
    assert "skipped hd: no HD optimizer" in result.stdout
    assert "skipped gammas: no gamma_<level> curves" in result.stdout
    assert "skipped combination: no CAM-HD label sweeps fixed gammas" in result.stdout


@pytest.mark.parametrize("where", ["local", "s3"])
def test_plot_defaults_to_a_figures_dir(cli, results_dir, tmp_path, request, where):
    """Beside the tables; for a URI (here the local S3 server), in ./<study>/figures of the working directory."""
    import pandas as pd

    tiny = tmp_path / "tiny"
    tiny.mkdir()
    trials = pd.read_parquet(results_dir / "trials.parquet")
    trials[(trials["label"] == "adam") & (trials["lr"] == 1e-3)].to_parquet(tiny / "trials.parquet")
    results, figures = tiny, tiny / "figures"
    if where == "s3":
        results = request.getfixturevalue("s3").upload(tiny, f"{tmp_path.name}/runs/tiny")
        figures = tmp_path / "work" / "tiny" / "figures"
        figures.parent.parent.mkdir()
    result = cli("plot", results, cwd=figures.parent.parent if where == "s3" else tmp_path)
    assert result.returncode == 0, result.stderr
    assert (figures / "sensitivity.md").is_file()
    assert "skipped valleys: no optimizer was run at two or more lr values" in result.stdout
    if where == "s3":
        assert result.stdout.strip().endswith(f"figures of {results} are in {figures} (--out DIR puts them elsewhere)")


@pytest.mark.parametrize("case, reason", [("missing", "results directory not found"), ("corrupt", "cannot read")])
def test_plot_bad_results_dir_exits_2_with_one_line(cli, tmp_path, case, reason):
    directory = tmp_path / "results"
    if case == "corrupt":
        directory.mkdir()
        (directory / "trials.parquet").write_bytes(b"PAR1 garbage")
    result = cli("plot", directory, cwd=tmp_path)
    assert result.returncode == 2
    assert reason in result.stderr and len(result.stderr.strip().splitlines()) == 1
