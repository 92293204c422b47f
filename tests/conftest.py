"""Shared fixtures.

`ray_local`: ONE in-process Ray for the whole test session (starting Ray costs seconds), with two
CPUs and no dashboard. Tests that run sweeps in this process take it; run_study reuses it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile

import pytest


@pytest.fixture(scope="session")
def ray_local():
    ray = pytest.importorskip("ray")
    started, temp = False, None
    if not ray.is_initialized():
        # a short private temp dir: Ray's socket paths must stay under 107 characters, and
        # other Ray clusters on this machine (other test runs) keep theirs apart
        temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                 _temp_dir=temp, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
        started = True
    yield ray
    if started:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: two intra-op threads on a busy 2-core machine spin against each
    other (steps 100x slower). Modules that train in-process use it via `pytestmark`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
