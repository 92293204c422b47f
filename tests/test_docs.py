"""The docs, docstrings, notebooks and study files point at nothing outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# a sibling folder of the checkout, or a path of someone's machine
OUTSIDE = re.compile(r"\.\./shared|\bshared/(?:design|papers|style)|/work/|/Users/|/home/(?!ubuntu/sensitivity)")


def test_no_reference_outside_the_repository():
    files = [ROOT / "README.md", ROOT / "Makefile", ROOT / "pyproject.toml", ROOT / "cluster.yaml"]
    for folder, pattern in (("sensitivity", "*.py"), ("analysis", "*.py"), ("analysis", "*.ipynb"),
                            ("experiments", "*.yaml"), ("experiments", "*.md"), ("benchmarks", "*.py"),
                            ("tests", "*.py")):
        files += sorted((ROOT / folder).rglob(pattern))
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
             for path in files if path.resolve() != Path(__file__).resolve()
             for n, line in enumerate(path.read_text().splitlines(), 1) if OUTSIDE.search(line)]
    assert not found, "\n".join(found)
