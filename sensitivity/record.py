"""One trial, checked once: ``TrialRecord``, the typed record everything downstream takes.

A study expands into records; the sweep plans, fuses, runs and stores records; every row of a
trial (ok, diverged or error) carries the record's identity columns. So a trial has one spelling
from the study file to the tables, however the study wrote it:

- every default is filled in (the task's and the optimizer's own hyperparameters);
- an optimizer alias is the name it stands for (``sgd-hd`` is ``sgd-hd-sgd``);
- numbers are canonical: each hyperparameter has its default's type (``betas: [0, 0.9]`` is
  ``(0.0, 0.9)``, ``momentum: 1`` is ``1.0``), sequences are tuples, thresholds sorted;
- where and how the trial runs (``device``, ``data_dir``, ``download``) and how it is shown
  (``study``, ``label``) are kept beside what it computes, and stay out of ``trial_id``.

``trial_id`` hashes what the trial computes (see `sensitivity.identity`). Torch-free: the study
reader, ``sensitivity validate`` and the driver build records without importing torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from sensitivity import catalog

__all__ = ["TrialRecord", "IDENTITY_FIELDS", "RUN_FIELDS", "SHARED_FIELDS", "hash_identity", "canonical_value",
           "decay_label", "column_value"]

# What a trial computes, in the order of its identity columns.
IDENTITY_FIELDS = ("dataset", "dataset_args", "model", "model_args", "optimizer", "lr", "beta", "optimizer_args",
                   "weight_decay", "decay", "batch_size", "epochs", "seed", "train_fraction", "augment",
                   "thresholds", "divergence_factor", "loss_smoothing")
# Where and how it runs, and how it is shown: not part of the identity.
RUN_FIELDS = ("device", "data_dir", "download", "study", "label")
# What every member of one fused array shares (everything else may differ per member).
SHARED_FIELDS = ("dataset", "dataset_args", "data_dir", "download", "train_fraction", "model", "model_args",
                 "batch_size", "epochs", "augment", "optimizer", "optimizer_args.levels", "device")
_SORTED_IDENTITY = tuple(sorted(IDENTITY_FIELDS))
_TOP_LEVEL_HP = ("lr", "beta", "weight_decay")  # hyperparameters a record holds outside optimizer_args
_EXACT_INT = 2 ** 53  # ints up to here are exact as floats


def canonical_value(value: Any) -> Any:
    """JSON-ready value with one spelling per meaning: mappings sorted, tuples as lists, numbers as floats."""
    if isinstance(value, Mapping):
        return {str(k): canonical_value(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical_value(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if hasattr(value, "item") and not isinstance(value, (int, float)):  # numpy scalar
        value = value.item()
    if isinstance(value, int) and abs(value) < _EXACT_INT:
        return float(value)  # 0 and 0.0 are one value
    if isinstance(value, (int, float)):
        return value  # json writes floats by repr: 1e-3 and 0.001 are one spelling
    return str(value)


def _encode(value: Any) -> str:
    """One value as the canonical JSON text an identity holds."""
    return json.dumps(canonical_value(value), sort_keys=True, separators=(",", ":"))


def hash_identity(identity: Mapping[str, Any]) -> str:
    """16 hex digits of the sha1 of an identity (already canonical)."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def decay_label(decay: Mapping[str, Any] | None) -> str | None:
    """The `decay` column: None, 'step:25:0.5' or 'milestones:100+150:0.1'."""
    if decay is None:
        return None
    if "every_epochs" in decay:
        return f"step:{decay['every_epochs']}:{decay['factor']:g}"
    return f"milestones:{'+'.join(str(m) for m in decay['milestones'])}:{decay['factor']:g}"


def column_value(value: Any) -> Any:
    """A row cell of a hyperparameter: sequences and mappings as JSON text (hashable for groupby)."""
    if isinstance(value, (list, tuple, Mapping)):
        return json.dumps(_plain(value), sort_keys=True)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _typed(default: Any, value: Any) -> Any:
    """`value` in the type of the optimizer's default: floats where the default is a float (also for
    an int such as `betas: [0, 0.9]`), tuples for sequences; an int default keeps ints."""
    if isinstance(value, Mapping):
        return {k: _typed(None, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        inner = list(default) if isinstance(default, (list, tuple)) and len(default) == len(value) else [None] * len(value)
        return tuple(_typed(d, v) for d, v in zip(inner, value))
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if hasattr(value, "item") and not isinstance(value, (int, float)):
        value = value.item()
    if isinstance(default, bool):
        return value
    if isinstance(default, int) and isinstance(value, int):
        return int(value)
    if isinstance(value, (int, float)):
        return float(value)
    return value


def _frozen(value: Any) -> Any:
    """Sequences as tuples, mappings as sorted plain dicts (a record never changes once made)."""
    if isinstance(value, Mapping):
        return {k: _frozen(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def optimizer_defaults(name: str) -> tuple[str, dict]:
    """(canonical name, hyperparameter defaults) of an optimizer; KeyError for an unknown one.

    ``<op>-hd`` is an alias of ``<op>-hd-sgd`` (same factory, same hyperparameters), so both give
    ``<op>-hd-sgd``.
    """
    infos = catalog.available()
    info = infos[name]
    canonical = f"{name}-sgd" if name.endswith("-hd") and f"{name}-sgd" in infos else name
    return canonical, dict(info.hyperparameters)


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class TrialRecord:
    """One trial of a study, checked, with every default filled in and one spelling per value.

    Build with :meth:`from_config` (a `run_trial` config in any spelling; ValueError naming the
    first bad key) or derive one with :meth:`replace`. Two records are equal when their trial ids are.
    """

    dataset: str
    dataset_args: dict
    model: str
    model_args: dict
    optimizer: str  # canonical: aliases resolved
    lr: float
    beta: float | None  # None for optimizers without a hypergradient rate
    optimizer_args: dict  # every other hyperparameter of the optimizer (not lr, beta, weight_decay)
    weight_decay: float
    decay: dict | None
    batch_size: int
    epochs: int
    seed: int
    train_fraction: float
    augment: bool
    thresholds: tuple
    divergence_factor: float
    loss_smoothing: float
    device: str = "auto"
    data_dir: str | None = None
    download: bool = False
    study: str | None = None
    label: str | None = None
    trial_id: str = dataclasses.field(init=False, default="")
    # each identity field as canonical JSON: what trial_id hashes, kept so that a record derived
    # with `replace` (a seed, an α0: most of a large grid) re-encodes only the fields it changes
    _json: dict = dataclasses.field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_json", {key: _encode(getattr(self, key)) for key in IDENTITY_FIELDS})
        object.__setattr__(self, "trial_id", self._hash())

    def _hash(self) -> str:
        """hash_identity(self.identity()), from the fields' JSON: the same text json.dumps writes."""
        text = "{" + ",".join(f'"{key}":{self._json[key]}' for key in _SORTED_IDENTITY) + "}"
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "TrialRecord":
        """The record of a `run_trial` config; ValueError (one line, naming the key) when it is not valid."""
        from sensitivity.spec import check_config  # torch-free

        if isinstance(config, TrialRecord):
            return config
        cfg = check_config(config)
        name, defaults = optimizer_defaults(cfg["optimizer"])
        args = {k: v for k, v in defaults.items() if k not in _TOP_LEVEL_HP}
        args.update(cfg["optimizer_args"])
        args = {k: _typed(defaults.get(k), v) for k, v in args.items()}
        data_dir = cfg["data_dir"]
        return cls(
            dataset=cfg["dataset"], dataset_args=_frozen(cfg["dataset_args"]), model=cfg["model"],
            model_args=_frozen(cfg["model_args"]), optimizer=name, lr=float(cfg["lr"]),
            beta=None if cfg["beta"] is None else float(cfg["beta"]), optimizer_args=_frozen(args),
            weight_decay=float(cfg["weight_decay"]), decay=_frozen(cfg["decay"]), batch_size=cfg["batch_size"],
            epochs=cfg["epochs"], seed=cfg["seed"], train_fraction=float(cfg["train_fraction"]),
            augment=cfg["augment"], thresholds=tuple(sorted(float(t) for t in cfg["thresholds"])),
            divergence_factor=float(cfg["divergence_factor"]), loss_smoothing=float(cfg["loss_smoothing"]),
            device=cfg["device"], data_dir=None if data_dir is None else str(data_dir), download=cfg["download"],
            study=cfg["study"], label=cfg["label"],
        )

    def replace(self, **changes: Any) -> "TrialRecord":
        """This record with some fields changed (lr for a refinement point, seed, ...), id recomputed.

        Only fields whose values need no further checking: numbers in their canonical type.
        """
        for key in ("lr", "beta", "weight_decay"):
            if changes.get(key) is not None:
                changes[key] = float(changes[key])
        if "seed" in changes:
            changes["seed"] = int(changes["seed"])
        unknown = set(changes) - set(_FIELDS)
        if unknown:
            raise TypeError(f"replace: not a field of a trial record: {', '.join(sorted(unknown))}")
        new = object.__new__(TrialRecord)
        for key in _FIELDS:
            object.__setattr__(new, key, changes[key] if key in changes else getattr(self, key))
        encoded = dict(self._json)
        for key in changes:
            if key in encoded:
                encoded[key] = _encode(changes[key])
        object.__setattr__(new, "_json", encoded)
        object.__setattr__(new, "trial_id", new._hash())
        return new

    # -- identity -------------------------------------------------------------------------------

    def identity(self) -> dict:
        """What `trial_id` hashes: the fields that change what the trial computes, canonical."""
        return canonical_value({key: getattr(self, key) for key in IDENTITY_FIELDS})

    def __reduce__(self):
        # a flat tuple: pickling a study's records (to Ray's object store) in C, not through
        # dataclass's per-instance field lookup; the kept JSON travels along (nothing re-encoded)
        return _rebuild, (tuple(getattr(self, key) for key in _FIELDS), self.trial_id, self._json)

    def encoded(self, key: str) -> str:
        """One identity field as the canonical JSON text `trial_id` hashes (cheap: kept, not re-encoded)."""
        return self._json[key]

    def series_key(self) -> str:
        """One series of a valley: the identity without α0 and seed (as a hash)."""
        identity = self.identity()
        del identity["lr"], identity["seed"]
        return hash_identity(identity)

    def __eq__(self, other) -> bool:
        return isinstance(other, TrialRecord) and other.trial_id == self.trial_id

    def __hash__(self) -> int:
        return hash(self.trial_id)

    @property
    def display(self) -> str:
        """The label tables and figures show: the entry's label, else the optimizer."""
        return self.label or self.optimizer

    def fusion_key(self) -> tuple:
        """Records with equal keys may train in one fused array (what every member shares)."""
        out = []
        for key in SHARED_FIELDS:
            if key in self._json:
                value = self._json[key]
            elif key == "optimizer_args.levels":
                value = self.optimizer_args.get("levels")  # a tuple of names, or None
            else:
                value = getattr(self, key)  # device, data_dir, download: strings, None or a bool
            out.append((key, value))
        return tuple(out)

    # -- what the trainer and the tables take ----------------------------------------------------

    def config(self) -> dict:
        """The record as a `run_trial` config (every key; sequences as lists)."""
        out = {key: _plain(getattr(self, key)) for key in IDENTITY_FIELDS + RUN_FIELDS}
        out["thresholds"] = list(self.thresholds)
        return out

    def hyperparameters(self) -> dict:
        """Keyword arguments of ``sensitivity.optim.create(self.optimizer, params, ...)``."""
        hp = {"lr": self.lr, "weight_decay": self.weight_decay, **self.optimizer_args}
        if self.beta is not None:
            hp["beta"] = self.beta
        return hp

    def columns(self) -> dict:
        """The identity columns of every row of this trial, whatever its status (the results contract)."""
        row = {
            "trial_id": self.trial_id, "study": self.study, "label": self.display, "dataset": self.dataset,
            "dataset_args": column_value(self.dataset_args), "model": self.model,
            "model_args": column_value(self.model_args), "optimizer": self.optimizer, "lr": self.lr,
            "beta": self.beta, "decay": decay_label(self.decay), "seed": self.seed, "batch_size": self.batch_size,
            "epochs": self.epochs, "weight_decay": self.weight_decay,
        }
        for key, value in self.optimizer_args.items():
            row[key] = column_value(value)
        row.update({"train_fraction": self.train_fraction, "augment": self.augment,
                    "divergence_factor": self.divergence_factor, "loss_smoothing": self.loss_smoothing})
        return row


_FIELDS = tuple(f.name for f in dataclasses.fields(TrialRecord) if f.init)


def _rebuild(values: tuple, trial_id: str, encoded: dict) -> TrialRecord:
    record = object.__new__(TrialRecord)
    for key, value in zip(_FIELDS, values):
        object.__setattr__(record, key, value)
    object.__setattr__(record, "_json", encoded)
    object.__setattr__(record, "trial_id", trial_id)
    return record
