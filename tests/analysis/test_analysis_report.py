"""write_report: every figure and table the data supports, a one-line note for each it skips."""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pandas as pd
import pytest
from synthetic_results import generate, write

import analysis
from analysis.report import write_report

FIGURES = ["valley", "ranking", "heatmap", "decay", "hd", "curves", "lr", "gamma", "combination", "expected_best",
           "importance"]
TABLES = ["sensitivity", "ranking", "heatmap", "best_configs", "combination", "thresholds", "valley_width",
          "expected_best", "importance", "metrics", "comparisons"]


@pytest.fixture(scope="module")
def report(results_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    lines = []
    return out, write_report(results_dir, out, echo=lines.append), lines


def test_writes_every_figure_and_table_of_a_full_study(report):
    out, paths, lines = report
    expected = {f"{name}.{ext}" for name in FIGURES for ext in ("png", "pdf")}
    expected |= {f"{name}.{ext}" for name in TABLES for ext in ("csv", "md")} | {"report.html"}
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
    table = pd.read_csv(out / "metrics.csv", keep_default_na=False)
    assert set(table["axis"]) == {"lr", "beta", "momentum"}
    assert set(table.loc[table["axis"] == "momentum", "scale"]) == {"log1m"}
    pairs = pd.read_csv(out / "comparisons.csv", keep_default_na=False)
    assert {"a", "b", "axis", "metric", "statistic", "difference", "ci_low", "ci_high", "significant",
            "paired"} <= set(pairs.columns)
    hd = pairs[(pairs["a"] == "sgd-hd") & (pairs["b"] == "sgd") & (pairs["statistic"] == "lr_sensitivity")]
    assert len(hd) == 2 and hd["base"].all() and hd["paired"].all()
    cells = pd.read_csv(out / "heatmap.csv", keep_default_na=False)
    assert set(cells["series"]) == {"sgd-hd", "sgdn-momentum"}
    assert cells.groupby(["series", "metric"])["best"].sum().eq(1).all()  # one best cell per map
    ranking = pd.read_csv(out / "ranking.csv", keep_default_na=False)
    assert set(ranking["statistic"]) == {"lr_sensitivity", "best_loss"}
    assert ranking.groupby(["metric", "statistic"])["rank"].apply(lambda r: list(r) == list(range(1, len(r) + 1))).all()


def test_skips_what_the_data_cannot_support_with_one_line_each(tmp_path):
    trials, _ = generate()
    trials = trials[(trials["label"] == "sgd") & trials["decay"].isna() & (trials["lr"] == 0.1)]
    trials = trials.drop(columns=[c for c in trials if c.startswith("iters_to_")])
    directory = tmp_path / "tiny"
    directory.mkdir()
    trials.to_parquet(directory / "trials.parquet")  # and no curves.parquet
    lines = []
    paths = write_report(directory, tmp_path / "out", echo=lines.append)
    assert sorted(p.name for p in paths) == ["best_configs.csv", "best_configs.md", "report.html",
                                             "sensitivity.csv", "sensitivity.md"]
    skipped = {line.split(":")[0]: line for line in lines if line.startswith("skipped")}
    assert sorted(skipped) == sorted(f"skipped {name}" for name in (
        "valleys", "ranking figure", "heatmap", "decay", "hd", "learning curves", "learned lr", "gammas", "combination",
        "thresholds", "valley widths", "expected", "importance", "sensitivity metrics", "paired comparisons"))
    page = (tmp_path / "out" / "report.html").read_text()
    assert "no optimizer was run at two or more lr values" in page  # the page says what is not drawn
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


# ---------------------------------------------------------------------------- report.html
def test_report_page_is_self_contained_and_holds_everything(report, results_dir):
    out, paths, _ = report
    page = (out / "report.html").read_text()
    pngs = [p for p in paths if p.suffix == ".png"]
    assert page.count('src="data:image/png;base64,') == len(pngs) == len(FIGURES)
    # nothing to fetch: every src is inline, no link or script elements
    assert re.findall(r'src="(?!data:)', page) == [] and "<link" not in page and "<script" not in page
    trials, _ = analysis.load(results_dir)
    for fact in (f"<td>trials</td><td>{len(trials)}</td>", "<td>diverged</td>", "<td>errored</td>",
                 "wall time", "<td>nodes</td>"):
        assert fact in page, fact
    assert "Metrics (95% bootstrap intervals over seeds)" in page and "lr_sensitivity" in page
    assert "Best configurations" in page and "adam-cam-hd-ratio" in page
    assert "Ranking over α0" in page and "Against the base optimizer" in page and "sgd-hd @ beta=0.0001" in page
    assert re.search(r"<li>min_train_loss, lr_sensitivity: [^<]*(&lt;|≈)", page)  # the order at a glance
    assert 'class="unresolved"' in page  # one-decade grids: the valley edges are not resolved
    assert (results_dir / "study.yaml").read_text().strip() in page


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless browser: install Debian's chromium package (.ci/run does) to test report.html")


# Before the page's own content: record script errors, failed loads (capture phase) and console.error,
# then, once everything has loaded, write what happened into the DOM for --dump-dom to print.
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || (e.target && e.target.tagName))), true);
const __error = console.error;
console.error = (...a) => { window.__errors.push(a.join(" ")); __error(...a); };
window.addEventListener("load", () => {
  const images = [...document.images];
  const loaded = images.filter(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0).length;
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({images: images.length, loaded: loaded, errors: window.__errors});
  document.body.appendChild(out);
});
</script>"""


def _chromium(browser, tmp_path, *args):
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_report_page_renders_in_headless_chromium(report, tmp_path):
    browser = _browser()
    out, _, _ = report
    page = (out / "report.html").read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>" + PROBE, 1))
    dom = _chromium(browser, tmp_path, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert found, f"no probe in the dumped DOM; chromium said: {dom.stderr[-2000:]}"
    probe = json.loads(html.unescape(found.group(1)))
    assert probe["images"] == len(FIGURES) and probe["loaded"] == probe["images"], probe
    assert probe["errors"] == [], probe
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console  # chromium logs every console message of the page here

    shot = tmp_path / "shot.png"
    page_uri = (out / "report.html").as_uri()
    run = _chromium(browser, tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", page_uri)
    assert shot.is_file(), run.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    ink = (pixels < 0.9).any(axis=-1).mean()  # share of pixels that are not (near) white
    assert 0.01 < ink < 0.9 and pixels.std() > 0.05, (ink, pixels.std())


def test_figures_are_palette_pngs(report):
    from PIL import Image

    _, paths, _ = report
    for path in (p for p in paths if p.suffix == ".png"):
        with Image.open(path) as image:
            assert image.mode == "P", path.name  # 256 colours: a third of the bytes of RGBA


def test_long_tables_are_capped_on_the_page_with_their_csv_named(tmp_path):
    from analysis.html import Table, write_page

    frame = pd.DataFrame({"series": [f"s{i}" for i in range(250)], "value": range(250)})
    page = write_page(tmp_path / "p.html", title="t", facts={}, figures=[], notes=[], study=None, max_rows=40,
                      tables=[Table("Big", frame, None, "big.csv"), Table("Small", frame.head(3))]).read_text()
    assert page.count("<tr>") == 1 + 41 + 4  # facts header; 40 rows + header; 3 rows + header
    assert "The first 40 of 250 rows; all of them are in big.csv." in page and "s39" in page and "s40" not in page


def test_run_facts_count_statuses_nodes_and_refinement_rounds():
    from analysis.html import run_facts

    trials = pd.DataFrame({"status": ["ok", "ok", "diverged", "error"], "wall_time_s": [1.0, 2.0, 3.0, 0.5],
                           "host": ["a:1", "b:2", "a:1", None], "round": [0, 0, 1, 2]})
    facts = run_facts(trials)
    assert (facts["trials"], facts["ok"], facts["diverged"], facts["errored"]) == ("4", "2", "1", "1")
    assert facts["wall time (sum over trials)"].startswith("6.5 s") and facts["nodes"] == "2 (a:1, b:2)"
    assert facts["refinement rounds"] == "2 (trials per round: 0: 2, 1: 1, 2: 1)"
    assert "refinement rounds" not in run_facts(trials.assign(round=0))


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
