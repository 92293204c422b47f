"""The worker side of fused arrays: one Ray Tune trial trains one array and reports its trials.

An array asks for one trial's ``resources`` (the study's ``resources`` block): it is one
training process on one device, however many members it holds. Rows and curves are exactly
those ``run_one`` reports for each member (plus ``array_size``/``array_id``), so the tables,
resume and exactly-once recording work as for solo trials. On a GPU, an out-of-memory error
splits the array in two halves and retries each; if an array fails for any other reason, its
members run again alone, so a failure is recorded against the trial that causes it.
"""

from __future__ import annotations

import copy

import torch

from .array import array_id, run_fused

__all__ = ["run_array", "run_splitting"]


def run_splitting(configs: list[dict], checkpoint: str | None) -> list:
    """run_fused, splitting the array on CUDA out-of-memory errors."""
    try:
        return run_fused(configs, checkpoint_dir=checkpoint)
    except torch.cuda.OutOfMemoryError:
        if len(configs) == 1:
            raise
        torch.cuda.empty_cache()
        half = len(configs) // 2
        return run_splitting(configs[:half], checkpoint) + run_splitting(configs[half:], checkpoint)


def run_array(configs: list[dict], checkpoint_root: str | None) -> list[tuple[dict, list[dict], str | None]]:
    """(row, curve, checkpoint dir) of every config, in order; never raises for a failing trial."""
    from sensitivity.results import join, trial_id
    from sensitivity.study import runnable
    from sensitivity.sweep.worker import MIRROR_KEY, Mirror, node_identity, run_one

    configs = [copy.deepcopy(c) for c in configs]
    extras = [c.pop("_extra", {}) for c in configs]
    tids = [trial_id(c) for c in configs]
    ckpt = join(checkpoint_root, array_id(tids)) if checkpoint_root else None
    mirror, local = None, ckpt
    try:
        if ckpt and "://" in ckpt:
            mirror = Mirror(ckpt)
            local = mirror.local
        results = run_splitting([runnable(c) for c in configs], local)
    except Exception:
        results = None  # every member alone: an error then belongs to its own trial
    finally:
        if mirror is not None:
            mirror.close()
    if results is None:
        out = []
        for cfg, extra, tid in zip(configs, extras, tids):
            solo_ckpt = join(checkpoint_root, tid) if checkpoint_root else None
            out.append((*run_one({**cfg, "_extra": extra}, solo_ckpt), solo_ckpt))
        return out
    node, host = node_identity()
    out = []
    for cfg, extra, tid, result in zip(configs, extras, tids, results):
        row, curve = dict(result.row), [dict(c) for c in result.curve]
        row.update({"trial_id": tid, "node": node, "host": host, **extra})
        row.setdefault("label", cfg.get("label") or cfg["optimizer"])
        row.setdefault("study", cfg.get("study"))
        for point in curve:
            point["trial_id"] = tid
        out.append((row, curve, None))
    if out:
        out[-1] = (*out[-1][:2], ckpt)  # the driver removes the array's checkpoint dir once
        if mirror is not None and mirror.report():  # failed uploads, for the driver's summary (once)
            out[0][0][MIRROR_KEY] = mirror.report()
    return out
