"""Optimizers of the sensitivity project: baselines, RAdam, AdaBound, hypergradient descent (HD), L4,
CAM-HD and the learning-rate-free rules.

``create(name, params, **hyperparameters)`` builds one; ``available()`` lists every name with its
hyperparameters and defaults. Importing a module below registers its names.
"""

from .registry import OptimizerInfo, available, create, create_members

from . import baselines  # noqa: E402,F401  sgd, sgdn, adam
from . import radam  # noqa: E402,F401  radam
from . import adabound  # noqa: E402,F401  adabound
from . import hd  # noqa: E402,F401  <op>-hd, <op>-hd-<lop>
from . import l4  # noqa: E402,F401  adam-l4, sgdn-l4
from . import cam_hd  # noqa: E402,F401  <op>-cam-hd
from . import prodigy  # noqa: E402,F401  prodigy
from . import d_adapt  # noqa: E402,F401  d-adapt-sgd, d-adapt-adam
from . import schedule_free  # noqa: E402,F401  schedule-free-sgd, schedule-free-adamw
from . import dog  # noqa: E402,F401  dog, ldog

__all__ = ["OptimizerInfo", "available", "create", "create_members"]
