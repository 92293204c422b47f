"""``report.html``: one self-contained page of a study's report (``sensitivity plot`` writes it).

Everything is inline (PNG figures as base64 data URIs, CSS in a style element, no script), so the
page opens offline, from a mail attachment or a copied folder. It holds the run's facts, the
ranking, the comparisons with each base optimizer, the metrics and best-configuration tables,
every figure, the notes on what was skipped, and the study file. Values that are not ``resolved``
(see ``analysis.metrics``) are marked. A table longer than ``MAX_ROWS`` shows its first rows and
names the CSV file beside the page that holds all of them, so the page stays a few megabytes
however large the study.
"""
from __future__ import annotations

import base64
import html
import math
import pathlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["run_facts", "write_page", "Table", "MAX_ROWS"]

MAX_ROWS = 100  # rows of one table on the page; the CSV beside it has every row


@dataclass
class Table:
    """A table of the page: heading, frame, a note under the heading (or None), the CSV holding every
    row (named when the page shows fewer), and lines of text shown above the table."""

    heading: str
    frame: pd.DataFrame
    note: str | None = None
    csv: str | None = None
    lines: list[str] = field(default_factory=list)

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 12px; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: left; } th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.unresolved { background: #fff4d6; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-weight: bold; } pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: 12px; }
.note { color: #555; }
"""


def run_facts(trials: pd.DataFrame) -> dict[str, str]:
    """The run at a glance: trials by status, summed trial wall time, nodes, rounds."""
    status = trials["status"].value_counts()
    facts = {"trials": str(len(trials)), "ok": str(int(status.get("ok", 0))),
             "diverged": str(int(status.get("diverged", 0))), "errored": str(int(status.get("error", 0)))}
    if "wall_time_s" in trials:
        total = float(pd.to_numeric(trials["wall_time_s"], errors="coerce").sum())
        facts["wall time (sum over trials)"] = f"{total:.1f} s ({total / 3600:.2f} h)"
    where = next((c for c in ("host", "node") if c in trials and trials[c].notna().any()), None)
    if where:
        names = sorted(map(str, trials[where].dropna().unique()))
        facts["nodes"] = f"{len(names)} ({', '.join(names[:8])}{', …' if len(names) > 8 else ''})"
    rounds = pd.to_numeric(trials["round"], errors="coerce") if "round" in trials else pd.Series(dtype=float)
    if rounds.max() > 0:
        facts["refinement rounds"] = f"{int(rounds.max())} (trials per round: " + ", ".join(
            f"{int(r)}: {n}" for r, n in rounds.value_counts().sort_index().items()) + ")"
    return facts


def _cell(value) -> tuple[str, bool]:
    """(escaped text, is a number)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—", False
    if isinstance(value, (bool, np.bool_)):
        return ("yes" if value else "no"), False
    if isinstance(value, (float, np.floating)):
        return ("inf" if math.isinf(value) else f"{value:.4g}"), True
    if isinstance(value, (int, np.integer)):
        return str(value), True
    return html.escape(str(value)), False


def _table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = []
        for value in row:
            text, number = _cell(value)
            kind = "num" if number else "unresolved" if text.endswith(" ?") else ""
            cells.append(f'<td class="{kind}">{text}</td>' if kind else f"<td>{text}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _image(path: pathlib.Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def write_page(path, *, title: str, facts: dict[str, str], figures: list[tuple[str, pathlib.Path]],
               tables: list[Table], notes: list[str], study: str | None, max_rows: int = MAX_ROWS) -> pathlib.Path:
    """Write the page; each of ``tables`` shows at most ``max_rows`` rows."""
    path = pathlib.Path(path)
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
             f"</title><style>{_CSS}</style></head><body>",
             f"<h1>Sensitivity report: {html.escape(title)}</h1>",
             "<h2>Run</h2>", _table(pd.DataFrame({"": list(facts), "value": list(facts.values())}))]
    for table in tables:
        if table.frame.empty:
            continue
        frame = table.frame.head(max_rows)
        parts.append(f"<h2>{html.escape(table.heading)}</h2>")
        if table.note:
            parts.append(f'<p class="note">{html.escape(table.note)}</p>')
        if table.lines:
            parts.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in table.lines) + "</ul>")
        if frame.astype(str).apply(lambda c: c.str.endswith(" ?")).any().any():
            parts.append('<p class="note">Highlighted values (ending in ?) are not resolved: the statistic '
                         "depends on an edge off the grid, or between grid points too far apart.</p>")
        if len(table.frame) > len(frame):
            where = f"; all of them are in {html.escape(table.csv)}" if table.csv else ""
            parts.append(f'<p class="note">The first {len(frame)} of {len(table.frame)} rows{where}.</p>')
        parts.append(_table(frame))
    parts.append("<h2>Figures</h2>")
    for name, png in figures:
        parts.append(f"<figure><figcaption>{html.escape(name.replace('_', ' '))}</figcaption>{_image(png)}</figure>")
    if notes:
        parts.append("<h2>Not drawn</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    if study:
        parts.append(f"<h2>Study file</h2><pre>{html.escape(study)}</pre>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
