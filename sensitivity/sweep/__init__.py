"""Run a study's trials on Ray Tune: grids, or Optuna searches, into the results tables.

- Ray: an already-initialised Ray is reused; else ``--address`` (or RAY_ADDRESS, as
  set by ``ray job submit``) joins a cluster; else Ray starts in-process with its
  dashboard on 127.0.0.1 only (or none when the dashboard's extra deps are absent).
- Grid mode: the trials still missing from ``trials.parquet`` are cut into bundles;
  one Ray Tune trial runs one bundle, trial after trial, and reports each finished
  trial's row and curve.  A Tune callback in this (driver) process appends them
  to the tables as new part files, so this process is the only writer (it holds
  the study's lease) and a crash loses only the trials in flight.  A lost
  worker's retried bundle skips the trials the driver holds (`worker.Reported`).
- Optuna mode: one Tuner; each optimizer entry has its own OptunaSearch behind
  its own ConcurrencyLimiter, and the entries take turns (`_Entries`).  One
  Optuna trial runs a point on every seed and reports the mean of the metric
  (+inf when a seed has no finite value, never NaN); every seed is still a row.
- Resume is by trial_id: whatever is in the tables (compacted or parts) is not run again; rows
  that belong to no trial of the current study are stale (``current.json`` lists the current ones).
- Refinement (``refine:``, grid mode): after the grid, rounds of log-midpoint α0 where the best
  α0 or a valley edge is bracketed too coarsely (`refine`); rows carry ``round``.

Modules, along the flow: `cluster` (Ray connection, resources), `bundles` (grouping),
`grid` and `search` (the two modes; `points` matches a search's stored points to its
entries, `journal` keeps them as Optuna studies), `refine` (the refinement planner and its
rounds), `worker` (one trial on a worker), `exits` (each worker's watcher: the signal or exit code of a
worker that died while training), `tuner` (one Tuner run, the recorder callback, the
summary), `driver` (`run_study`).
"""

import os

# Tune's CSV/JSON/TensorBoard loggers would copy every payload to disk a second time
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter is silent at verbose=0

# Loaded on first use, so that the Ray-free parts (`objective`, `points`, `refine`) can be
# imported without Ray by what runs before it starts (`sensitivity.preflight`).
_EXPORTS = {"Summary": "tuner", "bundle_size": "bundles", "error_row": "worker", "is_short": "bundles",
            "make_bundles": "bundles", "mean_metric": "objective", "run_one": "worker", "run_study": "driver"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sensitivity.sweep' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"sensitivity.sweep.{_EXPORTS[name]}"), name)
