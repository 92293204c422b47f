"""Grid mode: the missing trials, cut into bundles, one bundle per Ray Tune trial."""

from __future__ import annotations

import time

from ray import tune

from sensitivity.progress import Progress
from sensitivity.results import trial_id
from sensitivity.sweep.bundles import bundle_size, is_short, make_bundles
from sensitivity.sweep.cluster import slots
from sensitivity.sweep.tuner import Recorder, summarize, tuner_run
from sensitivity.sweep.worker import grid_task


def fused_arrays(study, todo: list[dict], slots: int) -> tuple[list[list[dict]], list[dict]]:
    """(arrays, solo trials) under the study's `fuse` setting."""
    if study.fuse == "off":
        return [], todo
    from sensitivity.fused.plan import cut

    return cut(todo, study.fuse, slots)


def run_grid(study, store, smoke, resources, ray_storage, stamp, checkpoint_root, max_concurrent, quiet):
    start = time.monotonic()
    configs = study.trials(smoke=smoke)
    done = store.done_ids()
    todo = [c for c in configs if trial_id(c) not in done]
    size = bundle_size(study.bundle, todo, slots(resources))
    progress = Progress(len(todo), name=study.name, quiet=quiet)
    recorder = Recorder(store, progress)
    errors = []
    if todo:
        arrays, solo = fused_arrays(study, todo, slots(resources))  # fused arrays first, then solo bundles
        size = bundle_size(study.bundle, solo, slots(resources)) if arrays else size
        bundles = arrays + (make_bundles(solo, size) if solo else [])
        ckpt = None if all(is_short(c) for c in todo) else checkpoint_root
        trainable = tune.with_parameters(grid_task, bundles=bundles, checkpoint_root=ckpt, cpu=resources["cpu"],
                                         arrays=len(arrays))
        progress.show()
        errors = tuner_run(trainable, resources=resources, storage=ray_storage, name=f"grid-{stamp}",
                            callback=recorder, param_space={"bundle": tune.grid_search(list(range(len(bundles))))},
                            max_concurrent=max_concurrent)
        progress.show(final=True)
    done = store.done_ids()
    missing = sum(trial_id(c) not in done for c in configs)
    return summarize(store, len(configs), len(configs) - len(todo), recorder, start, size, errors, missing)
