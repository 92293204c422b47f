"""Grid mode: the missing trials, cut into bundles, one bundle per Ray Tune trial.

With ``refine:``, refinement rounds (sensitivity.sweep.refine) follow the grid, each run the same way.
"""

from __future__ import annotations

import time

from ray import tune

from sensitivity.progress import Progress
from sensitivity.results import trial_id
from sensitivity.sweep.bundles import bundle_size, is_short, make_bundles
from sensitivity.sweep.cluster import slots
from sensitivity.sweep.refine import refine_rounds
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
    recorder = Recorder(store, Progress(0, name=study.name, quiet=quiet))
    errors: list[str] = []
    sizes, skipped = [], []

    def run(batch: list[dict], round_: int) -> None:
        """Run the trials of ``batch`` not in the tables yet; their rows carry ``round``."""
        done = store.done_ids()
        todo = [{**c, "_extra": {"round": round_}} for c in batch if trial_id(c) not in done]
        skipped.append(len(batch) - len(todo))
        if not todo:
            sizes.append(1)
            return
        arrays, solo = fused_arrays(study, todo, slots(resources))  # fused arrays first, then solo bundles
        size = bundle_size(study.bundle, solo, slots(resources))
        sizes.append(size)
        bundles = arrays + (make_bundles(solo, size) if solo else [])
        recorder.progress = Progress(len(todo), name=study.name if not round_ else f"{study.name} round {round_}",
                                     quiet=quiet)
        ckpt = None if all(is_short(c) for c in todo) else checkpoint_root
        trainable = tune.with_parameters(grid_task, bundles=bundles, checkpoint_root=ckpt, cpu=resources["cpu"],
                                         arrays=len(arrays))
        recorder.progress.show()
        name = f"grid-{stamp}" if not round_ else f"grid-{stamp}-round{round_}"
        errors.extend(tuner_run(trainable, resources=resources, storage=ray_storage, name=name, callback=recorder,
                                param_space={"bundle": tune.grid_search(list(range(len(bundles))))},
                                max_concurrent=max_concurrent))
        recorder.progress.show(final=True)

    run(configs, 0)
    if study.refine:
        configs = configs + refine_rounds(study.refine, store, configs, run)
    done = store.done_ids()
    missing = sum(trial_id(c) not in done for c in configs)
    return summarize(store, len(configs), sum(skipped), recorder, start, max(sizes), errors, missing)
