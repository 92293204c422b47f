"""Where the array runs, members that do not fit are trained as several arrays, each member as before.

`run_fused` measures the free memory of its own device (`plan.fit`) and splits the array where the
members do not fit; on a CUDA out-of-memory error an array is trained as two halves. Either way
every member's row and curve are those of the unsplit array; only `array_size` and `array_id` say
how it was cut.
"""

from __future__ import annotations

import pytest
import torch

from sensitivity.fused import plan, run_fused
from sensitivity.fused.array import Stacked
from sensitivity.record import TrialRecord

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = {"dataset": "synthetic", "dataset_args": {"shape": [1, 4, 4], "train_size": 64, "test_size": 16},
        "model": "mlp", "model_args": {"hidden": [8]}, "optimizer": "adam-hd", "batch_size": 16, "epochs": 2,
        "device": "cpu"}
CONFIGS = [{**BASE, "lr": 1e-3 * (k + 1), "seed": k} for k in range(5)]
ARRAY_COLUMNS = ("array_size", "array_id", "wall_time_s")


@pytest.fixture(scope="module")
def unsplit():
    return run_fused(CONFIGS)


def _assert_as_unsplit(results, unsplit):
    for split, whole in zip(results, unsplit):
        assert split.row["trial_id"] == whole.row["trial_id"]
        for key, value in whole.row.items():
            if key not in ARRAY_COLUMNS:
                assert split.row[key] == (pytest.approx(value, rel=1e-5) if isinstance(value, float) else value), key
        assert len(split.curve) == len(whole.curve)
        for a, b in zip(split.curve, whole.curve):
            assert a == {k: pytest.approx(v, rel=1e-5) if isinstance(v, float) else v for k, v in b.items()}


def test_members_beyond_the_free_memory_train_as_several_arrays(unsplit, monkeypatch):
    """Free memory for two members: five train as arrays of 2, 2 and 1 (interleaved, as the driver cuts)."""
    need = plan.member_bytes(TrialRecord.from_config(CONFIGS[0]))
    monkeypatch.setattr(plan, "_free_bytes", lambda kind: int(2.5 * need / plan.MEMORY_FRACTION[kind]))
    results = run_fused(CONFIGS)
    assert [r.row["array_size"] for r in results] == [2, 2, 1, 2, 2]
    assert len({r.row["array_id"] for r in results}) == 3
    assert results[0].row["array_id"] == results[3].row["array_id"]
    assert all(r.row["array_size"] == 5 for r in unsplit)
    _assert_as_unsplit(results, unsplit)


def test_a_cuda_out_of_memory_error_trains_the_array_as_two_halves(unsplit, monkeypatch):
    """An array of more than two members runs out of memory at its first step: 5 -> 2 + 3 -> 2 + 1 + 2."""
    step, tried = Stacked.step, []

    def step_within_two(self, *args):
        tried.append(self.size)
        if self.size > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return step(self, *args)

    monkeypatch.setattr(Stacked, "step", step_within_two)
    results = run_fused(CONFIGS)
    assert tried[0] == 5 and 3 in tried
    assert [r.row["array_size"] for r in results] == [2, 2, 1, 2, 2]
    assert results[0].row["array_id"] == results[1].row["array_id"] != results[3].row["array_id"]
    _assert_as_unsplit(results, unsplit)


GIB = 2**30


@pytest.mark.parametrize("meminfo, cgroup, expected", [
    # MemAvailable, not MemFree: the page cache of a machine that has read many files can be dropped
    ("MemTotal: 25165824 kB\nMemFree: 1048576 kB\nMemAvailable: 20971520 kB\n", None, 20 * GIB),
    # a cgroup v2 limit: its unused part and its droppable cache, when less than the machine's
    ("MemFree: 1048576 kB\nMemAvailable: 20971520 kB\n",
     {"memory.max": f"{8 * GIB}\n", "memory.current": f"{7 * GIB}\n", "memory.stat": f"anon 1\ninactive_file {GIB}\n"},
     2 * GIB),
    ("MemAvailable: 1048576 kB\n", {"memory.max": f"{8 * GIB}\n", "memory.current": "0\n", "memory.stat": ""}, GIB),
    ("MemAvailable: 20971520 kB\n", {"memory.max": "max\n"}, 20 * GIB),
])
def test_the_cpu_free_memory_counts_what_the_kernel_can_drop(tmp_path, meminfo, cgroup, expected):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text(meminfo)
    (tmp_path / "cg").mkdir()
    for name, text in (cgroup or {}).items():
        (tmp_path / "cg" / name).write_text(text)
    assert plan.cpu_free_bytes(str(tmp_path / "proc"), str(tmp_path / "cg")) == expected


def test_without_meminfo_the_cpu_free_memory_is_the_free_pages(tmp_path, monkeypatch):
    pages = {"SC_PAGE_SIZE": 4096, "SC_AVPHYS_PAGES": 1000}
    monkeypatch.setattr(plan.os, "sysconf", pages.__getitem__)
    assert plan.cpu_free_bytes(str(tmp_path), str(tmp_path)) == 4096 * 1000
