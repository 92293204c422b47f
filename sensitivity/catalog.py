"""The optimizer names, as data: descriptions, papers, hyperparameters and defaults, without torch.

`sensitivity validate`, `sensitivity optimizers` and study validation read this, so they answer
without importing torch. The torch registry (`sensitivity.optim.registry.register`) refuses a
name whose metadata differs from its entry here, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from sensitivity import checks

__all__ = ["OptimizerSpec", "OPTIMIZERS", "available", "check"]


@dataclass(frozen=True)
class OptimizerSpec:
    """What the CLI and study validation need to know about one optimizer name."""

    name: str
    description: str
    paper: str
    hyperparameters: Mapping[str, Any]  # keyword -> default, exactly the keywords `create` accepts
    is_hd: bool = False  # takes the hypergradient rate `beta`
    needs_closure: bool = False  # `step(closure)` is mandatory (L4 needs the loss)
    wants_names: bool = False  # factory receives (name, tensor) pairs when the caller has them


OPTIMIZERS: dict[str, OptimizerSpec] = {}


def _add(name: str, description: str, paper: str, hyperparameters: dict, **flags: bool) -> None:
    OPTIMIZERS[name] = OptimizerSpec(name, description, paper, MappingProxyType(dict(hyperparameters)), **flags)


# -- baselines (sensitivity/optim/baselines.py)
_ADAM = "Kingma & Ba 2015, Adam: A Method for Stochastic Optimization (arXiv:1412.6980)"
_ADAM_HP = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
_add("sgd", "SGD with a constant step size (torch.optim.SGD)",
     "Robbins & Monro 1951, A Stochastic Approximation Method", {"lr": 1e-3, "weight_decay": 0.0})
_add("sgdn", "SGD with Nesterov momentum (torch.optim.SGD, nesterov=True, dampening 0)",
     "Sutskever et al. 2013, On the importance of initialization and momentum in deep learning (ICML)",
     {"lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0})
_add("adam", "Adam with a constant step size (torch.optim.Adam)", _ADAM, _ADAM_HP)
_add("radam", "Rectified Adam: Adam with a variance-rectified warm-up (coupled L2; equal to torch.optim.RAdam)",
     "Liu et al. 2020, On the Variance of the Adaptive Learning Rate and Beyond (ICLR, arXiv:1908.03265)", _ADAM_HP)
_add("adabound", "AdaBound: Adam with per-element step sizes clipped to bounds converging to SGD at final_lr "
     "(coupled L2; equal to pytorch-optimizer's AdaBound)",
     "Luo et al. 2019, Adaptive Gradient Methods with Dynamic Bound of Learning Rate (ICLR, arXiv:1902.09843)",
     {"lr": 1e-3, "final_lr": 0.1, "gamma": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0})

# -- hypergradient descent (sensitivity/optim/hd.py): <op>-hd-<lop>, and <op>-hd for <op>-hd-sgd
OPS = ("sgd", "sgdn", "adam")
LOPS = ("sgd", "sgdn", "adam")
_BAYDIN = "Baydin et al. 2018, Online Learning Rate Adaptation with Hypergradient Descent (ICLR, arXiv:1703.04782)"
_MITTAL = "Mittal 2019, Hypergradient based optimization methods"
_HD_OP_TEXT = {"sgd": "SGD", "sgdn": "Nesterov SGD", "adam": "Adam"}
_LOP_TEXT = {"sgd": "learned by gradient descent on α", "sgdn": "learned by Nesterov-momentum descent on α",
             "adam": "learned by Adam on α"}
# Baydin et al. and Mittal use β = 1e-3 for SGD-type ops and 1e-7 for Adam.
_HD_OP_HP = {
    "sgd": {"lr": 1e-3, "beta": 1e-3, "weight_decay": 0.0},
    "sgdn": {"lr": 1e-3, "beta": 1e-3, "momentum": 0.9, "weight_decay": 0.0},
    "adam": {"lr": 1e-3, "beta": 1e-7, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
}
_LOP_HP = {"sgd": {}, "sgdn": {"lop_momentum": 0.9}, "adam": {"lop_betas": (0.9, 0.999), "lop_eps": 1e-8}}
_CLAMPS = {"lr_min": None, "lr_max": None}
for _op in OPS:
    for _lop in LOPS:
        for _name in ([f"{_op}-hd"] if _lop == "sgd" else []) + [f"{_op}-hd-{_lop}"]:
            _add(_name, f"{_HD_OP_TEXT[_op]} with its learning rate {_LOP_TEXT[_lop]} (hypergradient descent)"
                 + (f"; alias of {_op}-hd-sgd" if _name == f"{_op}-hd" else ""),
                 _BAYDIN if _lop == "sgd" else _MITTAL, {**_HD_OP_HP[_op], **_LOP_HP[_lop], **_CLAMPS}, is_hd=True)

# -- L4 (sensitivity/optim/l4.py)
_L4 = "Rolinek & Martius 2018, L4: Practical loss-based stepsize adaptation for deep learning (NeurIPS, arXiv:1802.05074)"
_L4_HP = {"gamma": 0.9, "gamma0": 0.75, "tau": 1000.0, "weight_decay": 0.0}
_add("adam-l4", "L4 step size on the Adam direction: each step targets a fraction lr of the gap to γ·(min seen loss)",
     _L4, {"lr": 0.15, "betas": (0.9, 0.999), "eps": 1e-4, **_L4_HP}, needs_closure=True)
_add("sgdn-l4", "L4 step size on the momentum direction (the reference L4Mom: bias-corrected moving average of "
     "gradients)", _L4, {"lr": 0.15, "momentum": 0.9, **_L4_HP}, needs_closure=True)

# -- CAM-HD (sensitivity/optim/cam_hd.py)
_CAM = "Anonymous 2020, Adaptive Hierarchical Hyper-gradient Descent (ICLR 2021 submission), Section 2.3, Algorithm 1"
_CAM_OP_TEXT = {"sgd": "SGD", "sgdn": "SGD with Nesterov momentum", "adam": "Adam"}
# Defaults: the paper's LeNet-5 setting (Table 1), which ran all three ops: 2 levels (unit, global),
# γ = (0.2, 0.8), δ = 0.03, HD lr 1e-3 (SGD-type) / 1e-8 (Adam); the τ decay stays off unless asked.
_CAM_COMMON = {"levels": ("unit", "global"), "gammas": (0.2, 0.8), "delta": 0.03, "decay_rate": None,
               "alpha_inf": None}
_CAM_OP_HP = {**_HD_OP_HP, "adam": {**_HD_OP_HP["adam"], "beta": 1e-8}}
for _op in OPS:
    _add(f"{_op}-cam-hd", f"{_CAM_OP_TEXT[_op]} with learning rates learned at several levels "
         "(parameter/unit/layer/global) and combined with learned weights (CAM-HD)",
         _CAM, {**_CAM_OP_HP[_op], **_CAM_COMMON}, is_hd=True, wants_names=True)


# -- learning-rate-free rules (prodigy.py, d_adapt.py, schedule_free.py, dog.py): each one's defaults are its
# authors' package's (prodigyopt 1.1.2, dadaptation 3.2, schedulefree 1.4.1, dog-optimizer 1.0.3); lr multiplies
# the rule's own step size.
_INF = float("inf")
_add("prodigy", "Prodigy: Adam with its step size d·lr estimated online from the distance travelled (prodigyopt)",
     "Mishchenko & Defazio 2024, Prodigy: An Expeditiously Adaptive Parameter-Free Learner (ICML, arXiv:2306.06101)",
     {"lr": 1.0, "betas": (0.9, 0.999), "beta3": None, "eps": 1e-8, "weight_decay": 0.0, "decouple": True,
      "use_bias_correction": False, "safeguard_warmup": False, "d0": 1e-6, "d_coef": 1.0, "growth_rate": _INF})
_DADAPT = "Defazio & Mishchenko 2023, Learning-Rate-Free Learning by D-Adaptation (ICML, arXiv:2301.07733)"
_add("d-adapt-sgd", "D-Adaptation SGD: dual-averaged SGD with step size d·lr/‖g_0‖, d estimated online (dadaptation)",
     _DADAPT, {"lr": 1.0, "momentum": 0.0, "weight_decay": 0.0, "d0": 1e-6, "growth_rate": _INF})
_add("d-adapt-adam", "D-Adaptation Adam: Adam with its step size d·lr estimated online (dadaptation)", _DADAPT,
     {"lr": 1.0, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "decouple": False,
      "use_bias_correction": False, "d0": 1e-6, "growth_rate": _INF})
_SF = ("Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky 2024, The Road Less Scheduled (NeurIPS, "
       "arXiv:2405.15682)")
_SF_HP = {"weight_decay": 0.0, "warmup_steps": 0, "r": 0.0, "weight_lr_power": 2.0}
_add("schedule-free-sgd", "Schedule-Free SGD: gradients at an interpolation y of the SGD iterate z and its weighted "
     "average x; no lr schedule (schedulefree; call .train()/.eval())", _SF, {"lr": 1.0, "momentum": 0.9, **_SF_HP})
_add("schedule-free-adamw", "Schedule-Free AdamW: Schedule-Free averaging on the Adam-normalised gradient "
     "(schedulefree; call .train()/.eval())", _SF, {"lr": 0.0025, "betas": (0.9, 0.999), "eps": 1e-8, **_SF_HP})
_DOG = ("Ivgi, Hinder & Carmon 2023, DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size Schedule "
        "(ICML, arXiv:2302.12022)")
_DOG_HP = {"lr": 1.0, "reps_rel": 1e-6, "weight_decay": 0.0, "eps": 1e-8, "init_eta": None}
_add("dog", "DoG: SGD with step size lr·(largest distance from the start)/√(Σ‖g‖²), one for all tensors "
     "(dog-optimizer)", _DOG, _DOG_HP)
_add("ldog", "Layer-wise DoG: the DoG step size computed for each tensor separately (dog-optimizer)", _DOG, _DOG_HP)


def available() -> dict[str, OptimizerSpec]:
    """Every optimizer name (the registry's order) with its hyperparameters and defaults."""
    return dict(OPTIMIZERS)


# ---------------------------------------------------------------------------
# hyperparameter checks that need no optimizer (the optimizer checks ranges itself)


def _check_type(name: str, key: str, value: Any, default: Any) -> None:
    """A value must have its default's shape: a number for a number (a whole one >= 0 for an int: 10.0
    too, as the optimizers take it), True or False for a flag, a number or null for a null, k numbers
    for a k-tuple of numbers, names for names.

    Ranges are the factories' business; this turns a wrong type into a ValueError, not a TypeError deep inside.
    """
    if isinstance(default, bool):  # (the optimizers' own words, which a run would print)
        if not isinstance(value, bool):
            raise ValueError(f"{name}: {key} must be True or False, got {value!r}")
        return
    if isinstance(default, int) and not (checks.is_number(value) and float(value).is_integer() and value >= 0):
        raise ValueError(f"{name}: {key} must be an integer >= 0, got {value!r}")  # (10.0 too, as the optimizer)
    if checks.is_number(default) and not checks.is_number(value):
        raise ValueError(f"{name}: {key} must be a number, got {value!r}")
    if default is None and value is not None and not checks.is_number(value):
        raise ValueError(f"{name}: {key} must be a number or null, got {value!r}")
    if isinstance(default, tuple) and default and all(isinstance(x, str) for x in default):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value \
                or not all(isinstance(x, str) for x in value):
            raise ValueError(f"{name}: {key} must be a non-empty list of level names like {list(default)}, "
                             f"got {value!r}")
    if key == "gammas" and (isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple))
                            or not all(checks.is_number(x) for x in value)):
        raise ValueError(f"{name}: {key} must be a list of numbers like {list(default)}, got {value!r}")
    if isinstance(default, tuple) and default and all(checks.is_number(x) for x in default) and key != "gammas":
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != len(default) \
                or not all(checks.is_number(x) for x in value):
            raise ValueError(f"{name}: {key} must be {len(default)} numbers like {list(default)}, got {value!r}")


def check(name: str, hyperparameters: Mapping[str, Any]) -> dict:
    """`hyperparameters` of optimizer `name`, checked for names and types; lr and beta become floats."""
    spec = OPTIMIZERS.get(name)
    if spec is None:
        raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(sorted(OPTIMIZERS))}")
    if "beta" in hyperparameters and not spec.is_hd:
        raise ValueError(f"{name}: beta is only for hypergradient optimizers, and {name!r} is not one")
    unknown = sorted(set(hyperparameters) - set(spec.hyperparameters))
    if unknown:
        raise ValueError(
            f"{name}: unknown hyperparameter(s) {', '.join(unknown)}; valid: {', '.join(spec.hyperparameters)}"
        )
    out = dict(hyperparameters)
    for key in ("lr", "beta"):
        if key in out:
            out[key] = checks.number(f"{name}: {key}", out[key], low=0)  # param_groups hold python floats
    for key, value in out.items():
        _check_type(name, key, value, spec.hyperparameters[key])
    if "gammas" in out or "levels" in out:  # one weight per level (CAM-HD), the defaults where unset
        levels = out.get("levels", spec.hyperparameters["levels"])
        gammas = out.get("gammas", spec.hyperparameters["gammas"])
        if len(gammas) != len(levels):
            raise ValueError(f"{name}: gammas must hold one weight per level ({', '.join(levels)}), "
                             f"got {list(gammas)}{'' if 'gammas' in out else ' (the default)'}")
    return out
