"""What makes two trials the same trial: the canonical config and its hash, `trial_id`.

The id hashes the *effective* config, as the trainer will run it: every default filled
in (task keys and the optimizer's own hyperparameters), numbers in one type (0 and 0.0,
1e-3 and 0.001 are one value), sequences as lists, thresholds as a sorted list, and an
optimizer alias as the name it stands for (`sgd-hd` is `sgd-hd-sgd`).  So a study written
two ways that mean the same trial gives one id, and a default that changes between
versions gives new ids (no stale row is ever reused as done).

Tables written before this rule used `legacy_trial_id` (a hash of the config as the study
spelt it); `legacy_ids` maps those to the current ids so a resumed run reruns nothing.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any, Mapping

# Keys that say where or how a trial runs, not what it computes: they do not
# change the outcome, so they do not change the trial's identity.
NON_IDENTITY_KEYS = frozenset({"data_dir", "device", "download", "trial_id", "study", "label", "node", "_extra"})
_TOP_LEVEL_HP = ("lr", "beta", "weight_decay")  # hyperparameters a config holds outside optimizer_args
_EXACT_INT = 2 ** 53  # ints up to here are exact as floats


def _canonical(value: Any) -> Any:
    """JSON-ready value with one spelling per meaning (tuples are lists, 1e-3 == 0.001)."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if hasattr(value, "item") and not isinstance(value, (int, float)):  # numpy scalar
        value = value.item()
    if isinstance(value, (int, float)):
        return value  # json writes floats by repr: 1e-3 and 0.001 are one spelling
    return str(value)


def _numbers(value: Any) -> Any:
    """`_canonical` with every number as a float: 0 and 0.0 are one value."""
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < _EXACT_INT:
        return float(value)
    return value


def value_key(value: Any) -> str:
    """One text per meaning of a value (0 and 0.0, (1, 2) and [1.0, 2.0] agree): to find repeats."""
    return json.dumps(_numbers(_canonical(value)), sort_keys=True)


def _hash(identity: Mapping[str, Any]) -> str:
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _spelled(config: Mapping[str, Any]) -> dict:
    """The config as written, without where/how keys and without keys that mean "the default"."""
    return {k: v for k, v in config.items()
            if k not in NON_IDENTITY_KEYS and v is not None and not (isinstance(v, Mapping) and not v)}


def legacy_trial_id(config: Mapping[str, Any]) -> str:
    """The id of tables written before identity followed the effective config (for migration)."""
    return _hash(_canonical(_spelled(config)))


# ---------------------------------------------------------------------------
# the optimizer registry, through one function (so a torch-free registry can replace it)


def optimizer_defaults(name: str) -> tuple[str, dict]:
    """(canonical name, hyperparameter defaults) of an optimizer; raises KeyError for an unknown one.

    `<op>-hd` is an alias of `<op>-hd-sgd` (same factory, same hyperparameters), so both give
    `<op>-hd-sgd`.
    """
    from sensitivity.catalog import available  # names and defaults as data: no torch

    infos = available()
    info = infos[name]
    canonical = f"{name}-sgd" if name.endswith("-hd") and f"{name}-sgd" in infos else name
    return canonical, dict(info.hyperparameters)


# ---------------------------------------------------------------------------
# the canonical config


def canonical_config(config: Mapping[str, Any]) -> dict:
    """The validated trial config that `trial_id` hashes; ValueError for a config run_trial rejects."""
    from sensitivity.spec import check_config  # run_trial's checks and defaults, without torch

    spelled = {k: v for k, v in config.items() if k not in NON_IDENTITY_KEYS}
    cfg = check_config({**spelled, "device": "cpu"})  # the device never changes the identity
    out = {k: v for k, v in cfg.items() if k not in NON_IDENTITY_KEYS}
    name, defaults = optimizer_defaults(cfg["optimizer"])
    out["optimizer"] = name
    args = {k: v for k, v in defaults.items() if k not in _TOP_LEVEL_HP}
    args.update(cfg["optimizer_args"])
    out["optimizer_args"] = args
    out["thresholds"] = sorted(cfg["thresholds"])
    return _numbers(_canonical(out))


@functools.lru_cache(maxsize=65536)
def _id_of(spelled_text: str) -> str:
    config = json.loads(spelled_text)
    try:
        return _hash(canonical_config(config))
    except Exception:
        # A config the trainer rejects never runs; its error row still needs a stable id.
        return _hash({"invalid": _numbers(_canonical(_spelled(config)))})


def trial_id(config: Mapping[str, Any]) -> str:
    """Stable 16-hex-digit hash of a trial's effective config, ignoring where/how it runs."""
    text = json.dumps(_canonical({k: v for k, v in config.items() if k not in NON_IDENTITY_KEYS}),
                      sort_keys=True, separators=(",", ":"))
    return _id_of(text)


def legacy_ids(configs) -> dict[str, str]:
    """legacy id -> current id, for the configs whose two ids differ."""
    out = {}
    for config in configs:
        old, new = legacy_trial_id(config), trial_id(config)
        if old != new:
            out[old] = new
    return out


# ---------------------------------------------------------------------------
# which rows count: the current study's trials


CURRENT = "current.json"  # beside the tables: {"study": name, "trials": {trial_id: label}}


class Current:
    """The trials of the study as it is now (trial_id -> label), written beside the tables.

    Rows of the table that are not listed (an earlier version of the study: another task,
    a removed entry) are stale: kept, but `analysis.load` leaves them out by default, and
    labels come from this file, so a renamed entry relabels its old rows.
    """

    def __init__(self, store, study: str, labels: Mapping[str, str]):
        self.store, self.study, self.labels = store, study, dict(labels)

    def write(self) -> None:
        text = json.dumps({"study": self.study, "trials": self.labels}, sort_keys=True, indent=0)
        self.store.write_text(CURRENT, text)

    def add(self, rows) -> None:
        """Rows that became current while the study runs (an Optuna search's new points)."""
        new = {r["trial_id"]: r.get("label") or r.get("optimizer") for r in rows if r["trial_id"] not in self.labels}
        if new:
            self.labels.update(new)
            self.write()

    def stale(self) -> int:
        """Rows of the table that belong to no trial of the current study."""
        trials = self.store.trials
        if trials is None or "trial_id" not in trials:
            return 0
        return int((~trials["trial_id"].isin(list(self.labels))).sum())
