"""Fused trial arrays: many trials of one model trained as one stacked model.

``run_fused(configs)`` trains K ``run_trial`` configs as one array and returns what
``run_trial`` returns for each; ``fusion_key(config)`` says which configs may share an array.
Modules: ``layers`` (fused linear, grouped conv, batch norm), ``models`` (fusing a model),
``optim`` (the members' optimizers), ``array`` (the stacked strategy of the trial loop,
`sensitivity.loop`, and ``run_fused``), ``plan`` (whether fusing pays, how many members fit,
cutting trials into arrays), ``facts`` (what planning measures with torch). Neither Ray nor the
sweep is imported here: `sensitivity.sweep` runs arrays as Ray tasks. Nor is torch until an array
is asked for: the driver plans arrays (``plan``) without importing it.
"""

__all__ = ["SHARED_KEYS", "array_id", "fusion_key", "run_fused"]


def __getattr__(name: str):
    if name in __all__:
        from . import array

        return getattr(array, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
