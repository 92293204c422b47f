"""The import boundary: analysis never imports torch, ray or sensitivity."""
from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]

CHECK = """
import sys
sys.path.insert(0, {root!r})
import pandas as pd
import analysis, analysis.report
from analysis import plots
trials, curves = analysis.load({results!r})
table = analysis.sensitivity_table(trials)
analysis.importance(trials)          # the optuna path
plots.valley_figure(analysis.swept(table)).savefig({png!r})
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "ray", "sensitivity"))
print("LEAKED", bad)
"""


def test_analysis_never_imports_torch_ray_or_sensitivity(results_dir, tmp_path):
    code = CHECK.format(root=str(ROOT), results=str(results_dir), png=str(tmp_path / "v.png"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "LEAKED []" in result.stdout, result.stdout


def test_analysis_sources_do_not_mention_the_forbidden_packages():
    for path in (ROOT / "analysis").glob("*.py"):
        for line in path.read_text().splitlines():
            words = line.strip().split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1:
                assert words[1].split(".")[0] not in ("torch", "ray", "sensitivity"), f"{path.name}: {line}"
