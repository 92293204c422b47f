"""What makes two trials the same trial: `trial_id`, and which stored rows are the current study's.

The id hashes the *effective* config, as the trainer will run it (`sensitivity.record`): every
default filled in (task keys and the optimizer's own hyperparameters), numbers in one type (0 and
0.0, 1e-3 and 0.001 are one value), sequences as lists, thresholds as a sorted list, and an
optimizer alias as the name it stands for (`sgd-hd` is `sgd-hd-sgd`). So a study written two
ways that mean the same trial gives one id, and a default that changes between versions gives
new ids (no stale row is ever reused as done).

Tables written before this rule used `legacy_trial_id` (a hash of the config as the study
spelt it); `legacy_ids` maps those to the current ids so a resumed run reruns nothing.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Mapping

from sensitivity.record import TrialRecord, canonical_value, hash_identity, optimizer_defaults  # noqa: F401

# Keys that say where or how a trial runs, not what it computes: they do not
# change the outcome, so they do not change the trial's identity.
NON_IDENTITY_KEYS = frozenset({"data_dir", "device", "download", "trial_id", "study", "label", "node", "_extra"})


def json_ready(value: Any) -> Any:
    """JSON-ready value with one spelling per meaning (tuples are lists, 1e-3 == 0.001); ints stay ints."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if hasattr(value, "item") and not isinstance(value, (int, float)):  # numpy scalar
        value = value.item()
    if isinstance(value, (int, float)):
        return value  # json writes floats by repr: 1e-3 and 0.001 are one spelling
    return str(value)


def value_key(value: Any) -> str:
    """One text per meaning of a value (0 and 0.0, (1, 2) and [1.0, 2.0] agree): to find repeats."""
    return json.dumps(canonical_value(value), sort_keys=True)


def _spelled(config: Mapping[str, Any]) -> dict:
    """The config as written, without where/how keys and without keys that mean "the default"."""
    return {k: v for k, v in config.items()
            if k not in NON_IDENTITY_KEYS and v is not None and not (isinstance(v, Mapping) and not v)}


def legacy_trial_id(config: Mapping[str, Any]) -> str:
    """The id of tables written before identity followed the effective config (for migration)."""
    return hash_identity(json_ready(_spelled(config)))


def canonical_config(config: Mapping[str, Any]) -> dict:
    """The validated trial config that `trial_id` hashes; ValueError for a config run_trial rejects."""
    return TrialRecord.from_config({k: v for k, v in config.items() if k not in NON_IDENTITY_KEYS}).identity()


@functools.lru_cache(maxsize=65536)
def _id_of(spelled_text: str) -> str:
    config = json.loads(spelled_text)
    try:
        return TrialRecord.from_config(config).trial_id
    except Exception:
        # A config the trainer rejects never runs; its error row still needs a stable id.
        return hash_identity({"invalid": canonical_value(_spelled(config))})


def trial_id(config: Mapping[str, Any] | TrialRecord) -> str:
    """Stable 16-hex-digit hash of a trial's effective config (a record's own id), ignoring where/how it runs."""
    if isinstance(config, TrialRecord):
        return config.trial_id
    text = json.dumps(json_ready({k: v for k, v in config.items() if k not in NON_IDENTITY_KEYS}),
                      sort_keys=True, separators=(",", ":"))
    return _id_of(text)


def legacy_ids(pairs) -> dict[str, str]:
    """legacy id -> current id, from (spelled config, record) pairs whose two ids differ."""
    out = {}
    for spelled, record in pairs:
        old = legacy_trial_id(spelled)
        if old != record.trial_id:
            out[old] = record.trial_id
    return out


# ---------------------------------------------------------------------------
# which rows count: the current study's trials


CURRENT = "current.json"  # beside the tables: {"study": name, "trials": {trial_id: label}}
GROWTH = 1.25  # an Optuna search rewrites current.json once its trials grew by this factor (linear total)


class Current:
    """The trials of the study as it is now (trial_id -> label), written beside the tables.

    Rows of the table that are not listed (an earlier version of the study: another task,
    a removed entry) are stale: kept, but `analysis.load` leaves them out by default, and
    labels come from this file, so a renamed entry relabels its old rows.
    """

    def __init__(self, store, study: str, labels: Mapping[str, str]):
        self.store, self.study, self.labels = store, study, dict(labels)
        self._written = -1  # how many trials the file on disk lists (-1: not written by this object)

    def write(self) -> None:
        # compact: json's C encoder (an indent would take its pure-Python one, seconds at 100,000 trials)
        text = json.dumps({"study": self.study, "trials": self.labels}, sort_keys=True, separators=(",", ":"))
        self.store.write_text(CURRENT, text)
        self._written = len(self.labels)

    def add(self, rows) -> None:
        """Rows that became current while the study runs (an Optuna search's new points).

        The file is rewritten whole, so it is rewritten only once the trials grew by GROWTH since
        the last write: the bytes written stay linear in the study's size. `flush` writes the rest
        (the driver calls it when the run ends, however it ends).
        """
        new = {r["trial_id"]: r.get("label") or r.get("optimizer") for r in rows if r["trial_id"] not in self.labels}
        if new:
            self.labels.update(new)
            if len(self.labels) >= GROWTH * max(self._written, 1):
                self.write()

    def flush(self) -> None:
        """Write what `add` learnt since the last write."""
        if len(self.labels) != self._written:
            self.write()

    def stale(self) -> int:
        """Rows of the table that belong to no trial of the current study (one row a trial_id: the
        stored ids, without reading the table)."""
        labels = self.labels
        return sum(tid not in labels for tid in self.store.done_ids())
