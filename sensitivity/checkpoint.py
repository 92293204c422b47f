"""Per-epoch trial checkpoints: one file per trial, written atomically (temp file, then rename)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import torch

__all__ = ["path_for", "save", "load", "remove"]


def path_for(checkpoint_dir: str | os.PathLike, trial_id: str) -> Path:
    return Path(os.path.expanduser(os.fspath(checkpoint_dir))) / f"{trial_id}.pt"


def save(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path`; a crash mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)  # atomic on POSIX within one filesystem
    finally:
        tmp.unlink(missing_ok=True)


def load(path: Path) -> dict[str, Any] | None:
    """The checkpoint at `path` with every tensor on the CPU; None when there is none.

    CPU first: RNG states must be CPU byte tensors, and load_state_dict moves weights
    and optimizer state to their parameters' device anyway.
    """
    if not path.is_file():
        return None
    # weights_only=False: optimizer state dicts may hold plain python objects, and the file is
    # one this trainer wrote into the caller's own checkpoint directory.
    return torch.load(path, map_location="cpu", weights_only=False)


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)
