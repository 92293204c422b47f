"""Fused trial arrays: many trials of one model trained as one stacked model.

``run_fused(configs)`` trains K ``run_trial`` configs as one array and returns what
``run_trial`` returns for each; ``fusion_key(config)`` says which configs may share an array.
Modules: ``layers`` (fused linear, grouped conv, batch norm), ``models`` (fusing a model),
``optim`` (the members' optimizers), ``array`` (the stacked strategy of the trial loop,
`sensitivity.loop`, and ``run_fused``), ``plan`` (whether fusing pays, how many members fit,
cutting trials into arrays). Neither Ray nor the sweep is imported here: `sensitivity.sweep`
runs arrays as Ray tasks.
"""

from .array import SHARED_KEYS, array_id, fusion_key, run_fused

__all__ = ["SHARED_KEYS", "array_id", "fusion_key", "run_fused"]
