"""How to cut trials into arrays: whether fusing pays, and how many members fit.

``fuse`` (study file, or ``sensitivity run --fuse``) is ``off``, ``auto`` or an int N:

- ``off``: every trial runs alone (``run_trial``).
- ``auto``: fuse only where it pays on the device the trials will run on (:func:`pays`,
  :func:`device_kind`), at most :func:`auto_cap` members an array (:data:`AUTO_MAX`, fewer on a CPU).
- ``N``: fuse every fusable group, at most N members an array.

The driver plans this from the records alone (no device of its own is asked, and no torch imported:
model sizes come from `sensitivity.fused.facts`); the worker that runs an array measures its own
free memory and splits the array where the members do not fit in :data:`MEMORY_FRACTION` of it
(:func:`fit`, called by ``run_fused``).

The CPU rule comes from ``benchmarks/fused_throughput.py`` (trials per second, fused against solo,
same configs, one process, one thread; the README's Performance has the figures). Fusing saves
the per-step overhead of K-1 members (python, operator calls, the optimizer's loop over tensors)
and costs the array's weights, optimizer state and activations leaving the caches. So on a CPU
an array holds at most :data:`CPU_ARRAY_BYTES` of members (:func:`member_bytes`; LeNet-5 on
MNIST shapes at batch 128: 1.34x in arrays of 4, 1.25x of 8, 1.02x of 16), fusing pays only
where at least :data:`CPU_MIN_MEMBERS` fit (:func:`auto_cap`), and for a model of more than
:data:`CPU_SMALL_PARAMS` parameters only where a member's training step is small, at most
:data:`CPU_MAX_STEP_MACS` multiply-adds (:func:`step_macs`; MLP 256x256 at batch 32 but not 64).
So the small MLPs and LeNet-5 fuse on a CPU at the usual batch sizes; MLP 2x1000, VGG and ResNet
do not. On a GPU the fused operators fill the device where one small model cannot (HFTA reports
up to 15x); GPU figures are unmeasured here, so ``auto`` fuses every model there.
"""

from __future__ import annotations

import math
import os
from typing import Any

from sensitivity.fused import facts
from sensitivity.record import TrialRecord

__all__ = ["MEMORY_FRACTION", "AUTO_MAX", "CPU_ARRAY_BYTES", "CPU_MIN_MEMBERS", "CPU_SMALL_PARAMS",
           "CPU_MAX_STEP_MACS", "check_setting",
           "device_kind", "fusable", "param_count", "step_macs", "pays", "auto_cap", "member_bytes", "fit", "cpu_free_bytes",
           "cut"]

MEMORY_FRACTION = {"cuda": 0.6, "cpu": 0.25}  # of the free memory, for one array
AUTO_MAX = 64  # members of one array under `auto`
# on a CPU (see the module docstring and benchmarks/fused_throughput.py; measured with a 32 MiB L3 cache):
CPU_ARRAY_BYTES = 80 * 2**20  # members' memory (member_bytes) in one array
CPU_MIN_MEMBERS = 4  # a model of which fewer fit in CPU_ARRAY_BYTES does not fuse (its arrays would not pay)
CPU_SMALL_PARAMS = 100_000  # a model of more parameters fuses only ...
CPU_MAX_STEP_MACS = 10_000_000  # ... up to this many multiply-adds a member's training step (step_macs)
MIN_SPLIT = 8  # members per array below which arrays are not split further to fill the slots
_STATE_COPIES = 4  # parameter-sized tensors besides the weights: grad, moments, HD's previous direction


def check_setting(value: Any) -> str | int:
    """'auto', 'off' or an int >= 1; ValueError otherwise."""
    if isinstance(value, bool) or not (value in ("auto", "off") or (isinstance(value, int) and value >= 1)):
        raise ValueError(f"fuse must be 'auto', 'off' or an int >= 1, got {value!r}")
    return value


def device_kind(record: TrialRecord, gpus: float = 0.0) -> str:
    """The kind of device ("cpu", "cuda", ...) a trial will train on, as the worker that runs it sees it.

    The record's own device when it names one; under ``auto``, cuda when each trial asks the
    cluster for GPUs (the study's ``resources.gpu``), else the CPU. Never the driver's own
    devices: on a cluster the driver often has none of the workers' GPUs.
    """
    if record.device != "auto":
        return record.device.split(":")[0]
    return "cuda" if gpus > 0 else "cpu"


def param_count(record: TrialRecord) -> int:
    """Parameters of one member (`facts.per_example`: measured once per model, never with torch
    imported into the driver)."""
    return facts.per_example(record)[0]


def step_macs(record: TrialRecord) -> int:
    """Multiply-adds of one member's forward pass over a batch (backward is about twice as many)."""
    return record.batch_size * facts.per_example(record)[2]


def fusable(record: TrialRecord) -> bool:
    """Whether the record's optimizer has a member-axis form (every optimizer this package registers has)."""
    return facts.fusable(record.optimizer)


def pays(record: TrialRecord, kind: str) -> bool:
    """Whether ``auto`` fuses this record's trials on a device of `kind` (see the module docstring for the rule)."""
    if kind != "cpu":
        return True
    if param_count(record) > CPU_SMALL_PARAMS and step_macs(record) > CPU_MAX_STEP_MACS:
        return False
    return auto_cap(record, kind) >= CPU_MIN_MEMBERS


def auto_cap(record: TrialRecord, kind: str) -> int:
    """Most members of one array under ``auto`` on a device of `kind`: AUTO_MAX, and on a CPU as many
    as CPU_ARRAY_BYTES holds."""
    if kind != "cpu":
        return AUTO_MAX
    return max(1, min(AUTO_MAX, CPU_ARRAY_BYTES // member_bytes(record)))


def member_bytes(record: TrialRecord) -> int:
    """Estimated memory of one member: weights, gradients, optimizer state and activations."""
    params, activations, _ = facts.per_example(record)
    activations *= record.batch_size * 2  # kept for backward, and their gradients
    return 4 * (params * (1 + _STATE_COPIES) + activations)


def _free_bytes(kind: str) -> int:
    if kind == "cuda":
        import torch  # (a worker's: it trains the array)

        return int(torch.cuda.mem_get_info()[0])
    return cpu_free_bytes()


def cpu_free_bytes(proc: str = "/proc", cgroup: str = "/sys/fs/cgroup") -> int:
    """Memory this process can take without swapping: ``MemAvailable`` (the free pages and the page
    cache the kernel can drop; free pages alone undercount a machine that has read many files), within
    the limit of the cgroup v2 at `cgroup` when one is set there, as a container's own is (its unused
    part and its droppable cache; a limit set further up the hierarchy is not read). Where there is no
    /proc/meminfo (not Linux), the free pages."""
    try:
        with open(os.path.join(proc, "meminfo")) as f:
            free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    try:
        with open(os.path.join(cgroup, "memory.max")) as f:
            limit = f.read().strip()
        if limit != "max":
            with open(os.path.join(cgroup, "memory.current")) as f:
                used = int(f.read())
            with open(os.path.join(cgroup, "memory.stat")) as f:
                stat = dict(line.split() for line in f if len(line.split()) == 2)
            free = min(free, int(limit) - used + int(stat.get("inactive_file", 0)))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit readable here: the machine's figure
    return max(0, free)


def fit(record: TrialRecord, kind: str) -> int:
    """Members of this record's model that fit in MEMORY_FRACTION of the free memory of this process's
    device of `kind` (measured where the array runs)."""
    fraction = MEMORY_FRACTION.get(kind, MEMORY_FRACTION["cuda"])
    return max(1, int(fraction * _free_bytes(kind) // member_bytes(record)))


def cut(records: list[TrialRecord], setting: str | int, slots: int = 1, gpus: float = 0.0
        ) -> tuple[list[list[TrialRecord]], list[TrialRecord]]:
    """(arrays, solo trials): `records` grouped by fusion key and cut into arrays of similar sizes.

    Groups that ``auto`` does not fuse on the workers' device, and groups of one trial, are returned
    as solo trials. Arrays hold at most :func:`auto_cap` members under ``auto`` (N under an int setting);
    the worker splits an array further when its members do not fit in its free memory. Under
    ``auto`` a group is split into at least `slots` arrays while each keeps MIN_SPLIT members, so
    that parallel slots are not left idle.
    """
    check_setting(setting)
    if setting == "off":
        return [], list(records)
    facts.learn(records)  # every model and optimizer measured at once (a driver: one child process at most)
    groups: dict[tuple, list[TrialRecord]] = {}
    for record in records:
        groups.setdefault(record.fusion_key(), []).append(record)
    arrays, solo = [], []
    for members in groups.values():
        first = members[0]
        kind = device_kind(first, gpus)
        if len(members) < 2 or not fusable(first) or (setting == "auto" and not pays(first, kind)):
            solo.extend(members)
            continue
        cap = auto_cap(first, kind) if setting == "auto" else setting
        parts = math.ceil(len(members) / cap)
        if setting == "auto":
            parts = max(parts, min(slots, len(members) // MIN_SPLIT))
        parts = max(1, parts)
        for k in range(parts):
            chunk = members[k::parts]  # interleaved: cheap (early-diverging) and costly trials mix
            (arrays.append(chunk) if len(chunk) > 1 else solo.extend(chunk))
    return arrays, solo
