"""Study files: load and validate a YAML study, expand it into run_trial configs.

The flow: `schema` reads the file's structure, `entries` checks each optimizer entry into its
plan (task, axes, searched keys), and :class:`Study` here expands the plans into trials (grid
points, seeds, --smoke stand-ins, Optuna's sampled points) and writes the resolved study.

A study is a task (dataset, model, training budget), seeds, and optimizer
entries.  Each entry is a grid: every list is an axis, except for hyperparameters
whose value is itself a sequence (``betas``, ``gammas``, ``levels``, ...) where a
flat list is one value and a list of lists is an axis.  With ``search:`` the
keys of ``search.space`` are sampled by Optuna instead, and the remaining axes
of an entry become categorical choices.

Errors are `StudyError` (a ValueError): one line naming the field path and,
where there is a choice, the allowed values.

Entries that --smoke makes the same trials run once, as the first one's (`sensitivity.smoke`;
`Study.smoke_merges` says which).
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import re
from pathlib import Path
from typing import Any, Iterator

import yaml
from pydantic import ValidationError

from sensitivity.axes import smoke_axes, smoke_task
from sensitivity.entries import entry_plans
from sensitivity.record import TrialRecord
from sensitivity.schema import (KEEP_TRIALS, REFINE_POINTS, SMOKE_OPTUNA_TRIALS, Entry, Refine, Resources, Search,
                                StudyError, StudyModel, pydantic_error, read_yaml)
from sensitivity.smoke import first_owners, merge_lines


class Study:
    """A validated study.  Build with `load_study` or `Study.from_dict`."""

    def __init__(self, model: StudyModel, *, base_dir: str | os.PathLike | None = None):
        self.model = model
        self.base_dir = Path(base_dir or os.getcwd())
        self._check()

    # -- construction -------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any, **kwargs) -> "Study":
        if not isinstance(data, dict):
            raise StudyError(f"study: expected a mapping of fields (name, task, seeds, optimizers, ...), "
                             f"got {type(data).__name__}")
        try:
            model = StudyModel.model_validate(data)
        except ValidationError as exc:
            raise pydantic_error(exc) from None
        return cls(model, **kwargs)

    # -- properties ---------------------------------------------------------

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def search(self) -> Search | None:
        return self.model.search

    @property
    def refine(self) -> Refine | None:
        return self.model.refine

    @property
    def resources(self) -> Resources:
        return self.model.resources

    @property
    def bundle(self):
        return self.model.bundle

    @property
    def fuse(self):
        return self.model.fuse

    def set_fuse(self, value: str) -> None:
        """Override `fuse` (``sensitivity run --fuse``): 'auto', 'off' or an int >= 1."""
        text = str(value).strip()
        parsed = int(text) if text.isdigit() else text
        if not (parsed in ("auto", "off") or (isinstance(parsed, int) and parsed >= 1)):
            raise StudyError(f"--fuse: must be auto, off or an int >= 1, got {value!r}")
        self.model.fuse = parsed

    @property
    def entries(self) -> list[Entry]:
        return self.model.optimizers

    def label(self, index: int) -> str:
        entry = self.entries[index]
        return entry.label or entry.name

    # -- validation ---------------------------------------------------------

    def _check(self) -> None:
        """Check every entry into its plan (`entries`), then that no two grid points are one trial."""
        self._plans = entry_plans(self.model, self.base_dir)
        # every trial must be a valid run_trial config; name the entry that is not. Every entry runs
        # the same seeds, so two trials are one exactly when their points are (checked on one seed).
        self._cache: dict[tuple, list[TrialRecord]] = {}
        self._point_cache: dict[tuple, list] = {}
        self._merges: list[str] | None = None  # --smoke's merged entries, once `_smoke` has expanded them
        seen: dict[str, int] = {}
        labels: dict[str, tuple[int, str]] = {}  # label -> (its first entry, that entry's optimizer)
        for i in range(len(self.entries)):
            points = self._points(i, smoke=False)
            optimizer = points[0][1].optimizer if points else ""
            j, other = labels.setdefault(self.label(i), (i, optimizer))
            if other != optimizer:  # one label, two optimizers: their runs would average into one series
                raise StudyError(f"optimizers[{i}].label: {self.label(i)!r} is also optimizers[{j}]'s ({other}); "
                                 f"a label names one optimizer's series: give this {optimizer} entry its own")
            for spelled, record in points:
                tid = record.trial_id
                if tid in seen and seen[tid] != i:
                    raise StudyError(f"optimizers[{i}]: repeats trials of optimizers[{seen[tid]}] "
                                     f"(same optimizer, aliases included, and values); remove one")
                if tid in seen and not self.search:
                    values = {k: spelled[k] for k in ("lr", "beta", "decay") if k in spelled}
                    raise StudyError(f"optimizers[{i}]: two of its grid points are one trial "
                                     f"({values | spelled.get('optimizer_args', {})}); remove one")
                seen.setdefault(tid, i)

    def _check_config(self, index: int, config: dict, check):
        try:
            return check(runnable(config))
        except Exception as exc:
            raise self._rejected(index, config, isinstance(exc, ValueError), type(exc).__name__, str(exc)) from None

    def _rejected(self, index: int, config: dict, value_error: bool, kind: str, message: str) -> StudyError:
        """A config's range-check failure as one line naming the study key (a ValueError names its key)."""
        if value_error:
            return StudyError(self._config_error(index, message))
        # an optimizer that choked on a wrong-typed or wrong-sized value
        values = {k: config[k] for k in ("lr", "beta") if k in config} | config.get("optimizer_args", {})
        return StudyError(f"optimizers[{index}]: {self.entries[index].name} rejects {values} "
                          f"({kind}: {' '.join(message.split())})")

    def check_optimizers(self, smoke: bool = False) -> None:
        """Build each distinct optimizer configuration once: its own range checks (with torch, in a child
        process where this one has not imported it: `fused.facts`, which also measures the models).

        Loading a study checks names, keys and types without torch; `run` calls this while Ray starts.
        """
        from sensitivity.fused import facts

        seen, configs = set(), []
        for i in range(len(self.entries)):
            for _, record in self._points(i, smoke):  # the seed changes no optimizer's checks
                # lr and beta are checked without torch (numbers >= 0): each distinct rest is built once
                key = tuple(record.encoded(k) for k in ("optimizer", "optimizer_args", "weight_decay", "decay"))
                if key not in seen:
                    seen.add(key)
                    configs.append((i, {**record.config(), "device": "cpu"}))
        # the models are measured in the same child, for planning arrays (not needed when nothing fuses)
        models = self.point_records(smoke) if self.fuse != "off" else ()
        errors = facts.learn(models, [runnable(c) for _, c in configs])
        for (i, config), error in zip(configs, errors):
            if error:
                raise self._rejected(i, config, error["value_error"], error["type"], error["message"])

    def _config_error(self, index: int, message: str) -> str:
        """run_trial's message ("epochs must be ...") with the study path of its key in front."""
        message = " ".join(message.split()) or "invalid trial config"
        match = re.match(r"([a-z_]+)", message)
        key = match.group(1) if match else ""
        entry = self.entries[index]
        if key in entry.task:
            return f"optimizers[{index}].task.{message}"
        if key in (entry.model_extra or {}) or key in ("optimizer", "optimizer_args", "lr", "beta", "decay"):
            return f"optimizers[{index}].{message}"
        if key in self.model.task.model_dump():
            return f"task.{message}"
        return f"optimizers[{index}]: {message}"

    # -- expansion ----------------------------------------------------------

    def _points(self, index: int, smoke: bool) -> list[tuple[dict, TrialRecord]]:
        """(spelled config, record) of each point of one entry's grid, on the first seed (search mode:
        a probe per axis value). Each point is checked once (`TrialRecord.from_config`, naming the
        entry's field that is bad); its other seeds are the same record with another seed.
        --smoke: without the points an earlier entry has (`_smoke`)."""
        key = (index, smoke)
        if key in self._point_cache:
            return self._point_cache[key]
        if smoke:
            self._smoke()
            return self._point_cache[key]
        points = self._expand(index, smoke)
        self._point_cache[key] = points
        return points

    def _expand(self, index: int, smoke: bool) -> list[tuple[dict, TrialRecord]]:
        """The points of `_points`, made and checked (none left out)."""
        plan = self._plans[index]
        axes = smoke_axes(plan.axes) if smoke else plan.axes
        task = smoke_task(plan.task) if smoke else plan.task
        seed = self.seeds(smoke)[0]
        entry = self.entries[index]
        if self.search:
            space = self.search.space
            axes = {**axes, **{k: [space[k].low, space[k].high] for k in plan.searched}}
        keys = list(axes)
        points = []
        for combo in itertools.product(*(axes[k] for k in keys)):
            config = self._config(entry, task, dict(zip(keys, combo)), seed)
            points.append((config, self._check_config(index, config, TrialRecord.from_config)))
        return points

    def _smoke(self) -> None:
        """Every entry's --smoke points, each trial once, and `_merges` (`sensitivity.smoke`). Cheap:
        --smoke leaves at most 2 points per entry's grid."""
        if self._merges is not None:
            return
        expanded = [self._expand(i, True) for i in range(len(self.entries))]
        kept, merged = first_owners(expanded)
        self._merges = merge_lines(merged, label=self.label, tasks=[p.task for p in self._plans],
                                   sizes=[len(p) for p in expanded], seeds=len(self.seeds(True)),
                                   search=bool(self.search))
        for i, points in enumerate(expanded if self.search else kept):
            self._point_cache[(i, True)] = points

    def smoke_merges(self) -> list[str]:
        """One line per entry whose --smoke trials (some or all) run as an earlier entry's, naming both
        and what they differ in; empty when --smoke keeps every entry's trials its own. Search mode:
        StudyError when --smoke would make two entries one."""
        self._smoke()
        return list(self._merges)

    def _entry_pairs(self, index: int, smoke: bool):
        """(spelled config, record) of each grid trial of one entry: its points, each on every seed."""
        for config, record in self._points(index, smoke):
            for seed in self.seeds(smoke):
                yield {**config, "seed": int(seed)}, record.replace(seed=seed)

    def _records(self, index: int, smoke: bool) -> list[TrialRecord]:
        """One entry's trials; kept while the study has at most KEEP_TRIALS of them (a larger study is
        made again from its points at each call, so that no list of every trial stays in memory)."""
        key = (index, smoke)
        if key in self._cache:
            return self._cache[key]
        seeds = self.seeds(smoke)
        records = [r.replace(seed=seed) if seed != r.seed else r for _, r in self._points(index, smoke) for seed in seeds]
        if sum(self.counts(smoke)) <= KEEP_TRIALS:
            self._cache[key] = records
        return records

    def _config(self, entry: Entry, task: dict, values: dict, seed: int) -> dict:
        config = {"study": self.name, **copy.deepcopy(task), "optimizer": entry.name}
        args = {}
        for key, value in values.items():
            if key in ("lr", "beta", "decay"):
                config[key] = copy.deepcopy(value)
            elif key == "weight_decay":
                config["weight_decay"] = value  # a task key that an entry may sweep
            else:
                args[key] = copy.deepcopy(value)
        config.setdefault("decay", None)
        if args:
            config["optimizer_args"] = args
        config["seed"] = int(seed)
        config["label"] = entry.label or entry.name  # display name; not part of the trial's identity
        return config

    def trials(self, smoke: bool = False) -> list[TrialRecord]:
        """Every grid trial as its record (search mode: the trials the space's corners give)."""
        return [r for i in range(len(self.entries)) for r in self._records(i, smoke)]

    def iter_trials(self, smoke: bool = False) -> Iterator[TrialRecord]:
        """The trials of `trials`, one at a time, in the same order; a large study holds no list of them
        (a study of at most KEEP_TRIALS keeps them once made: a run goes over them several times)."""
        seeds = self.seeds(smoke)
        keep = sum(self.counts(smoke)) <= KEEP_TRIALS
        for i in range(len(self.entries)):
            if keep or (i, smoke) in self._cache:
                yield from self._records(i, smoke)
                continue
            for _, record in self._points(i, smoke):
                for seed in seeds:
                    yield record.replace(seed=seed) if seed != record.seed else record

    def trial_slices(self, size: int, smoke: bool = False) -> Iterator[list[TrialRecord]]:
        """The trials of `trials` in consecutive lists of at most `size`: a run plans and submits one
        list at a time, so that a study larger than the driver's memory runs in bounded memory."""
        chunk: list[TrialRecord] = []
        for record in self.iter_trials(smoke):
            chunk.append(record)
            if len(chunk) == size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def point_records(self, smoke: bool = False) -> Iterator[TrialRecord]:
        """One record per grid point of every entry, on the first seed (what no seed changes: devices, data)."""
        for i in range(len(self.entries)):
            for _, record in self._points(i, smoke):
                yield record

    def entry_trials(self, index: int, smoke: bool = False) -> list[TrialRecord]:
        return list(self._records(index, smoke))

    def spelled_trials(self, smoke: bool = False):
        """(the config as the study spells it, its record) of every grid trial: for tables whose ids
        followed the spelling (`identity.legacy_ids`)."""
        for i in range(len(self.entries)):
            yield from self._entry_pairs(i, smoke)

    def counts(self, smoke: bool = False) -> list[int]:
        """Trials (seeded runs) per optimizer entry, as the sweep will run them."""
        if self.search:
            if smoke:
                self._smoke()  # (entries that --smoke makes one: StudyError)
            n = min(self.search.trials, SMOKE_OPTUNA_TRIALS) if smoke else self.search.trials
            return [n * len(self.seeds(smoke)) for _ in self.entries]
        return [len(self._points(i, smoke)) * len(self.seeds(smoke)) for i in range(len(self.entries))]

    def refine_counts(self, smoke: bool = False) -> list[int]:
        """The most trials refinement may add per entry: rounds × REFINE_POINTS α0 × seeds per lr series."""
        if not self.refine:
            return [0 for _ in self.entries]
        out = []
        for i, plan in enumerate(self._plans):
            axes = smoke_axes(plan.axes) if smoke else plan.axes
            if len(axes.get("lr", [])) < 2 or (smoke and not self._points(i, smoke)):
                out.append(0)  # one α0 (or --smoke runs the entry as an earlier one's): nothing to bracket
                continue
            series = math.prod(len(v) for k, v in axes.items() if k != "lr")
            out.append(self.refine.rounds * REFINE_POINTS * series * len(self.seeds(smoke)))
        return out

    def seeds(self, smoke: bool = False) -> list[int]:
        return self.model.seeds[:1] if smoke else list(self.model.seeds)

    # -- search mode --------------------------------------------------------

    def search_plan(self, index: int, smoke: bool = False) -> dict:
        """What Optuna samples for one entry: base task, fixed values, categorical axes, ranges."""
        if smoke:
            self._smoke()  # (entries that --smoke makes one: StudyError)
        plan = self._plans[index]
        axes = smoke_axes(plan.axes) if smoke else plan.axes
        fixed = {k: v[0] for k, v in axes.items() if len(v) == 1}
        choices = {k: v for k, v in axes.items() if len(v) > 1}
        return {"task": smoke_task(plan.task) if smoke else plan.task, "fixed": fixed,
                "choices": choices, "ranges": {k: self.search.space[k] for k in plan.searched},
                "is_hd": plan.is_hd, "entry": self.entries[index]}

    def search_trials(self, smoke: bool = False) -> int:
        return min(self.search.trials, SMOKE_OPTUNA_TRIALS) if smoke else self.search.trials

    def search_configs(self, index: int, values: dict, smoke: bool = False) -> list[TrialRecord]:
        """The records of one sampled point, one per seed."""
        return [r for _, r in self.search_pairs(index, values, smoke)]

    def search_pairs(self, index: int, values: dict, smoke: bool = False):
        """(spelled config, record) of one sampled point, one per seed."""
        plan = self.search_plan(index, smoke)
        first = None
        for seed in self.seeds(smoke):
            config = self._config(plan["entry"], plan["task"], {**plan["fixed"], **values}, seed)
            if first is None:
                first = self._check_config(index, config, TrialRecord.from_config)
            yield config, first.replace(seed=seed)

    # -- output -------------------------------------------------------------

    def resolved(self, smoke: bool = False) -> dict:
        """The study with defaults filled in, as saved beside the results."""
        data = self.model.model_dump(mode="json", exclude_none=True)
        data["seeds"] = self.seeds()  # --smoke is recorded in the header, not baked into the study
        for i, entry in enumerate(data["optimizers"]):
            entry.setdefault("label", self.label(i))
            if self.entries[i].task:
                entry["task"] = self.entries[i].task
            elif "task" in entry and not entry["task"]:
                del entry["task"]
        if "data_dir" in self._plans[0].task:
            data["task"]["data_dir"] = self._plans[0].task["data_dir"]  # absolute, as the trials saw it
        return data

    def to_yaml(self, smoke: bool = False) -> str:
        """The resolved study as a loadable study file; a header comment records how it ran."""
        head = f"# resolved by sensitivity: smoke: {str(bool(smoke)).lower()}, trials: {sum(self.counts(smoke))}\n"
        if smoke:
            head += "".join(f"# {line}\n" for line in self.smoke_merges())
        return head + yaml.safe_dump(self.resolved(smoke), sort_keys=False)


def runnable(config: dict) -> dict:
    """A trial config as run_trial takes it: without the keys only the sweep reads (label)."""
    from sensitivity.spec import CONFIG_KEYS  # (run_trial's keys without what needs torch)

    keys = set(CONFIG_KEYS)
    return {k: copy.deepcopy(v) for k, v in config.items() if k in keys}


def load_study(path: str | os.PathLike) -> Study:
    """Read and validate a study file; raises StudyError (one line) on any problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise StudyError(f"{path}: cannot read study file ({exc.strerror or exc})") from None
    data = read_yaml(text, path)
    return Study.from_dict(data)
