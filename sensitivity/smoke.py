"""--smoke's study when entries coincide: the trials two entries share under --smoke run once.

--smoke changes the task (one epoch, small batches, synthetic data without augment), so two entries
that differ only there become the same trials. The smoke study runs each trial once, as the first
entry that has it (in file order), and says in one line per pair of entries which it merged. An
Optuna search cannot merge entries (each samples its own points): there --smoke refuses them with
one line naming both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from sensitivity.identity import value_key
from sensitivity.schema import StudyError

__all__ = ["first_owners", "merge_lines"]


def first_owners(expanded: Sequence[list]) -> tuple[list[list], dict[tuple[int, int], int]]:
    """(each entry's points without those whose trial an earlier entry has, and (entry, earlier entry)
    -> how many of the entry's points run as the earlier one's). A point is (config, record)."""
    owner: dict[str, int] = {}
    merged: dict[tuple[int, int], int] = {}
    kept = []
    for i, points in enumerate(expanded):
        mine, own = [], set()
        for point in points:
            tid = point[1].trial_id
            j = owner.setdefault(tid, i)
            if j != i:
                merged[(i, j)] = merged.get((i, j), 0) + 1
            elif tid not in own:
                mine.append(point)
                own.add(tid)
        kept.append(mine)
    return kept, merged


def merge_lines(merged: Mapping[tuple[int, int], int], *, label: Callable[[int], str], tasks: Sequence[dict],
                sizes: Sequence[int], seeds: int, search: bool) -> list[str]:
    """One line per merged pair: "--smoke: optimizers[1] sgd-long runs as optimizers[0] sgd (they differ
    only in what --smoke changes: epochs)"; `sizes` are the entries' points before merging. A search:
    StudyError naming both entries."""
    lines = []
    for (i, j), n in merged.items():
        why = _differences(tasks[i], tasks[j])
        if search:
            raise StudyError(f"--smoke: optimizers[{i}] {label(i)} would run the trials of optimizers[{j}] "
                             f"{label(j)}{why}; a search cannot merge entries: smoke-test a copy of the study "
                             f"without one of them")
        total = sizes[i] * seeds
        part = "" if n * seeds == total else f" {n * seeds} of its {total} trials"
        lines.append(f"--smoke: optimizers[{i}] {label(i)} runs{part} as optimizers[{j}] {label(j)}{why}")
    return lines


def _differences(a: dict, b: dict) -> str:
    """" (they differ only in what --smoke changes: epochs, ...)": the task keys two entries differ in
    (a full run has no trial twice, so entries whose --smoke trials coincide differ there)."""
    keys = sorted(k for k in set(a) | set(b) if (k in a) != (k in b) or value_key(a.get(k)) != value_key(b.get(k)))
    return f" (they differ only in what --smoke changes: {', '.join(keys)})" if keys else ""
