"""Run a study's trials on Ray Tune: grids, or Optuna searches, into the results tables.

- Ray: an already-initialised Ray is reused; else ``--address`` (or RAY_ADDRESS, as
  set by ``ray job submit``) joins a cluster; else Ray starts in-process with its
  dashboard on 127.0.0.1 only (or none when the dashboard's extra deps are absent).
- Grid mode: the trials still missing from ``trials.parquet`` are cut into bundles;
  one Ray Tune trial runs one bundle, trial after trial, and reports each finished
  trial's row and curve.  A Tune callback in this (driver) process appends them
  to the tables, so this process is the only writer and a crash loses only the
  trials in flight.
- Optuna mode: one Tuner; each optimizer entry has its own OptunaSearch behind
  its own ConcurrencyLimiter, and the entries take turns (`_Entries`).  One
  Optuna trial runs a point on every seed and reports the mean of the metric
  (+inf when a seed has no finite value, never NaN); every seed is still a row.
- Resume is by trial_id: whatever is in ``trials.parquet`` is not run again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

# Tune's CSV/JSON/TensorBoard loggers would copy every payload to disk a second time
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter is silent at verbose=0

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402

from sensitivity.progress import Progress  # noqa: E402
from sensitivity.results import CURVES, STUDY, TRIALS, ResultsStore, join, resolve, trial_id  # noqa: E402
from sensitivity.study import Study, StudyError, runnable  # noqa: E402

MAX_FAILURES = 3  # a lost worker's Ray task is retried this often
REUSE_ACTORS = True  # a finished Ray trial's process (torch imported, data cached) runs the next one
BUNDLES_PER_SLOT = 4  # enough tasks per parallel slot to even out the tail
MAX_BUNDLE = 32
SHORT_WORK = 5e5  # sample-epochs (x model factor) below which a trial counts as short
TRAIN_SIZES = {"digits": 1437, "mnist": 60000, "cifar10": 50000, "svhn": 73257}
MODEL_FACTOR = {"logreg": 1, "mlp": 1, "lenet5": 5, "vgg16": 300, "resnet18": 300, "resnet34": 600}
CHECKPOINT_SYNC_S = 30.0  # how often a node-local checkpoint is mirrored to remote storage
LOSS_KEYS = ("min_train_loss", "min_test_loss", "final_train_loss", "final_test_loss")


@dataclass
class Summary:
    """What a run did; `missing` > 0 means some trials did not finish (rerun to resume)."""

    location: str
    trials_path: str
    curves_path: str
    total: int
    skipped: int
    ran: int = 0
    diverged: int = 0
    errored: int = 0
    missing: int = 0
    elapsed_s: float = 0.0
    bundle: int = 1
    errors: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------
# Ray


def _connect(address: str | None) -> bool:
    """Make sure Ray is up; return True when this call started it (and must stop it)."""
    if ray.is_initialized():
        return False
    quiet = dict(logging_level=logging.ERROR, log_to_driver=False)
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, **quiet)
    else:
        # The dashboard runs code for whoever reaches it: never bind it beyond loopback.
        ray.init(include_dashboard=None, dashboard_host="127.0.0.1", **quiet)
    return True


def _cluster() -> tuple[float, float, float, float]:
    """(total CPU, total GPU, largest node CPU, largest node GPU) of the alive nodes."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = [n["Resources"].get("CPU", 0.0) for n in nodes]
    gpus = [n["Resources"].get("GPU", 0.0) for n in nodes]
    return sum(cpus), sum(gpus), max(cpus, default=0.0), max(gpus, default=0.0)


def _launchable() -> dict[str, float]:
    """Largest per-node resources the cluster's autoscaler may still launch ({} without one)."""
    try:  # the same (private) source Ray Train uses for this question
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:
        return {}
    out: dict[str, float] = {}
    for group in getattr(config, "node_group_configs", None) or []:
        if group.max_count == 0:
            continue
        for key, value in group.resources.items():
            out[key] = max(out.get(key, 0.0), float(value))
    return out


def _resources(study: Study, smoke: bool, quiet: bool) -> dict:
    """Per-trial resources; fail up front where no node could ever run a trial."""
    cpu, gpu = study.resources.cpu, study.resources.gpu
    _, _, node_cpu, node_gpu = _cluster()
    more = _launchable()  # an autoscaling GPU worker type counts even before its first node is up
    node_cpu, node_gpu = max(node_cpu, more.get("CPU", 0.0)), max(node_gpu, more.get("GPU", 0.0))
    if gpu > 0 and node_gpu == 0:
        if smoke:  # a smoke run must work on a laptop: drop the GPU request
            if not quiet:
                print(f"note: resources.gpu={gpu} ignored for --smoke (the Ray cluster has no GPU)", file=sys.stderr)
            gpu = 0.0
        else:
            raise StudyError(f"resources.gpu: {gpu} GPU per trial requested but the Ray cluster has no GPU "
                             f"(its trials would wait forever); set resources.gpu: 0 or pass --address of a "
                             f"cluster with GPU nodes")
    if gpu > node_gpu:
        raise StudyError(f"resources.gpu: {gpu} GPU per trial but the largest node has {node_gpu:g}; "
                         f"choose at most {node_gpu:g}")
    if cpu > node_cpu:
        raise StudyError(f"resources.cpu: {cpu:g} CPU per trial but the largest node has {node_cpu:g}; "
                         f"choose at most {node_cpu:g}")
    out = {"cpu": cpu}
    if gpu:
        out["gpu"] = gpu
    return out


def _slots(resources: dict) -> int:
    total_cpu, total_gpu, _, _ = _cluster()
    slots = total_cpu / resources["cpu"]
    if resources.get("gpu"):
        slots = min(slots, total_gpu / resources["gpu"])
    return max(1, int(slots))


# ---------------------------------------------------------------------------
# bundles


def _work(config: dict) -> float:
    args = config.get("dataset_args") or {}
    size = args.get("train_size") or TRAIN_SIZES.get(config["dataset"], 1000)
    size *= config.get("train_fraction", 1.0) or 1.0
    return size * config.get("epochs", 1) * MODEL_FACTOR.get(config["model"], 10)


def is_short(config: dict) -> bool:
    """A trial short enough that Ray's per-task overhead (about 1 s) matters."""
    return _work(config) <= SHORT_WORK


def bundle_size(setting: Any, configs: list[dict], slots: int) -> int:
    """Trials per Ray task: `setting` when it is an int; `auto` bundles only short trials."""
    if isinstance(setting, int):
        return setting
    if not configs or not all(is_short(c) for c in configs):
        return 1  # long trials: one per task keeps the cluster busy and checkpoints simple
    return max(1, min(MAX_BUNDLE, math.ceil(len(configs) / (BUNDLES_PER_SLOT * slots))))


def make_bundles(configs: list[dict], size: int) -> list[list[dict]]:
    """Interleaved bundles, so cheap (early-diverging) and costly trials mix."""
    n = max(1, math.ceil(len(configs) / size))
    return [b for b in (configs[k::n] for k in range(n)) if b]


# ---------------------------------------------------------------------------
# one trial (runs on a worker)


def error_row(config: dict, exc: BaseException, wall: float) -> dict:
    """A row for a trial that raised: its identity, status `error` and the message."""
    row = {k: config.get(k) for k in ("study", "dataset", "model", "optimizer", "lr", "beta",
                                      "seed", "batch_size", "epochs", "weight_decay")}
    from sensitivity.train import decay_label

    row["label"] = config.get("label") or config.get("optimizer")
    row["decay"] = decay_label(config.get("decay"))
    for key, value in (config.get("optimizer_args") or {}).items():
        row[key] = value
    message = f"{type(exc).__name__}: {exc}".strip()
    row.update({"status": "error", "error": " ".join(message.split())[:2000], "wall_time_s": wall,
                "epochs_completed": 0, "steps": 0,
                **{k: math.inf for k in LOSS_KEYS}})
    return row


def _node() -> tuple[str, str]:
    """(Ray node id, hostname:ip) of this worker; outside Ray the node id is empty."""
    if not ray.is_initialized():  # get_runtime_context() would start a Ray of its own
        return "", f"{socket.gethostname()}:127.0.0.1"
    return ray.get_runtime_context().get_node_id(), f"{socket.gethostname()}:{ray.util.get_node_ip_address()}"


class _Mirror:
    """Keep a node-local checkpoint directory mirrored to remote storage (s3://, gs://)."""

    def __init__(self, remote: str):
        self.fs, self.remote = resolve(remote)
        self.local = tempfile.mkdtemp(prefix="sensitivity-ckpt-")
        info = self.fs.get_file_info(self.remote)
        if info.type.name == "Directory":  # resume a trial a lost worker left behind
            import pyarrow.fs as pafs

            pafs.copy_files(self.remote, self.local, source_filesystem=self.fs,
                            destination_filesystem=pafs.LocalFileSystem())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _push(self) -> None:
        import pyarrow.fs as pafs

        if os.listdir(self.local):
            pafs.copy_files(self.local, self.remote, source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.fs)

    def _loop(self) -> None:
        while not self._stop.wait(CHECKPOINT_SYNC_S):
            try:
                self._push()
            except Exception:  # a failed upload only costs progress on a lost worker
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        shutil.rmtree(self.local, ignore_errors=True)


def run_one(config: dict, checkpoint: str | None = None) -> tuple[dict, list[dict]]:
    """Run one trial; never raises: a failing trial becomes a row with status `error`."""
    from sensitivity.train import run_trial

    config = copy.deepcopy(config)
    extra = config.pop("_extra", {})
    tid = trial_id(config)
    label = config.get("label") or config["optimizer"]
    start = time.time()
    mirror = None
    try:
        if checkpoint and "://" in checkpoint:
            mirror = _Mirror(checkpoint)
            checkpoint = mirror.local
        result = run_trial(runnable(config), checkpoint_dir=checkpoint)
        row, curve = dict(result.row), [dict(c) for c in result.curve]
    except Exception as exc:  # the sweep goes on; the message is kept in the row
        row, curve = error_row(config, exc, time.time() - start), []
    finally:
        if mirror is not None:
            mirror.close()
    node, host = _node()
    row.update({"trial_id": tid, "node": node, "host": host, **extra})
    row.setdefault("label", label)
    row.setdefault("study", config.get("study"))
    for point in curve:
        point["trial_id"] = tid
    return row, curve


def _payload(row: dict, curve: list[dict], checkpoint: str | None) -> str:
    return json.dumps({"rows": [row], "curves": curve, "checkpoint": checkpoint}, default=str)


def _threads(cpu: float) -> None:
    import torch

    torch.set_num_threads(max(1, int(cpu)))


def _grid_task(config: dict, bundles: list, checkpoint_root: str | None, cpu: float) -> None:
    """Ray Tune trainable: run one bundle of trials, reporting each as it finishes."""
    _threads(cpu)
    for trial in bundles[config["bundle"]]:
        ckpt = join(checkpoint_root, trial_id(trial)) if checkpoint_root else None
        row, curve = run_one(trial, ckpt)
        tune.report({"payload": _payload(row, curve, ckpt), "trials": 1})


def _metric_value(row: dict, metric: str) -> float:
    value = row.get(metric)
    if row.get("status") == "error" or value is None or not isinstance(value, (int, float)) or math.isnan(value):
        return math.inf
    return float(value)


def _search_task(config: dict, study: Study, smoke: bool, metric: str, done: dict,
                 checkpoint_root: str | None, cpu: float) -> None:
    """Ray Tune trainable of one Optuna trial: the sampled point on every seed, in turn."""
    _threads(cpu)
    index = config["entry"]
    values, point = _point_values(study, index, config["point"], smoke)
    found = []
    configs = study.search_configs(index, values, smoke)
    for trial in configs:
        tid = trial_id(trial)
        if tid in done:  # this seed finished in an earlier, interrupted run
            found.append(done[tid])
            continue
        trial["_extra"] = {"search_entry": index, "search_point": point}
        ckpt = join(checkpoint_root, tid) if checkpoint_root else None
        row, curve = run_one(trial, ckpt)
        found.append(_metric_value(row, metric))
        # every result carries the running mean: OptunaSearch reads the metric of each one
        tune.report({"objective": _mean(found), "payload": _payload(row, curve, ckpt), "trials": 1})
    if not any(trial_id(c) not in done for c in configs):
        tune.report({"objective": _mean(found), "trials": 0})


def _mean(values: list[float]) -> float:
    if not values or any(not math.isfinite(v) for v in values):
        return math.inf  # a diverged seed makes the point as bad as it gets, and never NaN
    return float(sum(values) / len(values))


# ---------------------------------------------------------------------------
# search space


def _choice_key(key: str) -> str:
    return f"{key}__choice"


def _point_values(study: Study, index: int, config: dict, smoke: bool) -> tuple[dict, str]:
    """Sampled config -> (hyperparameter values, canonical JSON of the point)."""
    plan = study.search_plan(index, smoke)
    values = {}
    for key in plan["ranges"]:
        values[key] = float(config[key])
    for key, options in plan["choices"].items():
        values[key] = options[int(config[_choice_key(key)])]
    point = json.dumps({k: config[k] for k in sorted(config)}, sort_keys=True)
    return values, point


def _optuna_space(study: Study, index: int, smoke: bool) -> dict:
    import optuna

    plan = study.search_plan(index, smoke)
    space = {}
    for key, rng in plan["ranges"].items():
        space[key] = optuna.distributions.FloatDistribution(rng.low, rng.high, log=rng.log)
    for key, options in plan["choices"].items():
        space[_choice_key(key)] = optuna.distributions.CategoricalDistribution(list(range(len(options))))
    return space


# ---------------------------------------------------------------------------
# the driver side


class _Recorder(tune.Callback):
    """Append every reported trial to the tables (this process is their only writer)."""

    def __init__(self, store: ResultsStore, progress: Progress):
        self.store, self.progress = store, progress
        self.rows: list[dict] = []

    def __getstate__(self):
        # Tune pickles its callbacks for Tuner.restore, which this module never uses (resume
        # works from the tables); the live tables and the terminal stay out of that file.
        return {"store": None, "progress": None, "rows": []}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        payload = result.get("payload")
        if not payload:
            return
        data = json.loads(payload)
        if self.store.append(data["rows"], data["curves"]):
            self.rows.extend(data["rows"])
            self.progress.add(data["rows"])
            if data.get("checkpoint"):
                _remove(data["checkpoint"])


def _remove(location: str) -> None:
    fs, path = resolve(location)
    try:
        if fs.get_file_info(path).type.name == "Directory":
            fs.delete_dir(path)
    except OSError:
        pass


def _tuner_run(trainable, *, resources: dict, storage: str, name: str, callback: _Recorder,
               param_space: dict | None = None, search_alg=None, num_samples: int = 1,
               max_concurrent: int | None = None) -> list[str]:
    """Fit one Tuner; return the errors of Ray trials that failed for good."""
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=param_space or {},
        tune_config=tune.TuneConfig(search_alg=search_alg, num_samples=num_samples,
                                    max_concurrent_trials=max_concurrent, reuse_actors=REUSE_ACTORS),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, verbose=0, callbacks=[callback],
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
        ),
    )
    grid = tuner.fit()
    errors = []
    for result in grid:
        if result.error is not None:
            errors.append(" ".join(str(result.error).split())[:500])
    return errors


def _smoke_mismatch(store: ResultsStore, smoke: bool) -> None:
    """Refuse to mix --smoke trials and real ones in one table."""
    path = store.path.rstrip("/") + "/" + STUDY
    try:
        if store.fs.get_file_info(path).type.name != "File":
            return
        with store.fs.open_input_stream(path) as handle:
            head = handle.read(200).decode(errors="replace")
    except OSError:
        return
    match = re.search(r"smoke: (true|false)", head)
    if match is None or store.trials is None or not len(store.trials):
        return
    saved = match.group(1) == "true"
    if saved != bool(smoke):
        kind = "a --smoke run" if saved else "a full run"
        raise StudyError(f"out: {store.location} already holds {kind}; use another --out to keep the tables apart")


def run_study(study: Study, out: str | os.PathLike = "results", address: str | None = None,
              storage: str | None = None, smoke: bool = False, max_concurrent: int | None = None,
              quiet: bool = False, retry_errors: bool = False) -> Summary:
    """Run the study's missing trials; tables go to ``<storage or out>/<study.name>/``.

    Raises StudyError for bad input (no GPU for a GPU study, results of another kind
    in the directory); returns a Summary whose `missing` counts trials that did not finish.
    """
    root = storage if storage else os.path.abspath(os.path.expanduser(os.fspath(out)))
    location = join(root, study.name)
    store = ResultsStore(location)
    _smoke_mismatch(store, smoke)
    if retry_errors and store.trials is not None and "status" in store.trials:
        store.drop(store.trials.loc[store.trials["status"] == "error", "trial_id"])
    started = _connect(address)
    try:
        resources = _resources(study, smoke, quiet)
        store.write_text(STUDY, study.to_yaml(smoke))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        ray_storage = join(location, "ray")
        # long trials checkpoint each epoch next to the tables (local/NFS), or mirrored to the URI
        checkpoint_root = join(location, "checkpoints")
        if study.search:
            summary = _run_search(study, store, smoke, resources, ray_storage, stamp, checkpoint_root,
                                  max_concurrent, quiet)
        else:
            summary = _run_grid(study, store, smoke, resources, ray_storage, stamp, checkpoint_root,
                                max_concurrent, quiet)
        store.ensure_tables()
        if not summary.missing:
            _remove(ray_storage)  # Tune's own state is only needed to debug a failed run
        return summary
    finally:
        if started:
            ray.shutdown()


def _summary(store: ResultsStore, total: int, skipped: int, recorder: _Recorder, start: float,
             bundle: int, errors: list[str], missing: int) -> Summary:
    rows = recorder.rows
    return Summary(location=store.location, trials_path=join(store.location, TRIALS),
                   curves_path=join(store.location, CURVES),
                   total=total, skipped=skipped, ran=len(rows),
                   diverged=sum(r.get("status") == "diverged" for r in rows),
                   errored=sum(r.get("status") == "error" for r in rows), missing=missing,
                   elapsed_s=time.monotonic() - start, bundle=bundle, errors=errors)


def _run_grid(study, store, smoke, resources, ray_storage, stamp, checkpoint_root, max_concurrent, quiet):
    start = time.monotonic()
    configs = study.trials(smoke=smoke)
    done = store.done_ids()
    todo = [c for c in configs if trial_id(c) not in done]
    size = bundle_size(study.bundle, todo, _slots(resources))
    progress = Progress(len(todo), name=study.name, quiet=quiet)
    recorder = _Recorder(store, progress)
    errors = []
    if todo:
        bundles = make_bundles(todo, size)
        ckpt = None if all(is_short(c) for c in todo) else checkpoint_root
        trainable = tune.with_parameters(_grid_task, bundles=bundles, checkpoint_root=ckpt, cpu=resources["cpu"])
        progress.show()
        errors = _tuner_run(trainable, resources=resources, storage=ray_storage, name=f"grid-{stamp}",
                            callback=recorder, param_space={"bundle": tune.grid_search(list(range(len(bundles))))},
                            max_concurrent=max_concurrent)
        progress.show(final=True)
    done = store.done_ids()
    missing = sum(trial_id(c) not in done for c in configs)
    return _summary(store, len(configs), len(configs) - len(todo), recorder, start, size, errors, missing)


def _previous_points(store: ResultsStore, index: int, seeds: int, metric: str) -> tuple[list, list, dict]:
    """(complete points with their mean metric, partial points, done trial_id -> metric) of one entry."""
    trials = store.trials
    if trials is None or "search_entry" not in trials:
        return [], [], {}
    mine = trials[trials["search_entry"] == index]
    done = {r["trial_id"]: _metric_value(r, metric) for r in mine.to_dict("records")}
    complete, partial = [], []
    for point, group in mine.groupby("search_point", sort=False):
        values = [_metric_value(r, metric) for r in group.to_dict("records")]
        config = json.loads(point)
        (complete if len(group) >= seeds else partial).append((config, _mean(values)))
    return complete, [c for c, _ in partial], done


def _sampler(kind: str, seed: int):
    import optuna

    return optuna.samplers.RandomSampler(seed=seed) if kind == "random" else optuna.samplers.TPESampler(seed=seed)


class _Entries(Searcher):
    """One Tuner for all optimizer entries of a search.

    Each entry keeps its own OptunaSearch (its own space, behind its own ConcurrencyLimiter)
    and its own budget of points; entries take turns, so a cluster runs them side by side.
    """

    def __init__(self, searchers: dict[int, Searcher], budgets: dict[int, int]):
        super().__init__(metric="objective", mode="min")
        self.searchers, self.budgets = searchers, dict(budgets)
        self.owner: dict[str, int] = {}
        self.turn = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # every entry's space is already set

    def suggest(self, trial_id: str):
        open_ = [i for i in self.searchers if self.budgets[i] > 0]
        if not open_:
            return Searcher.FINISHED
        for k in range(len(open_)):
            index = open_[(self.turn + k) % len(open_)]
            point = self.searchers[index].suggest(trial_id)
            if point in (None, Searcher.FINISHED):
                continue  # this entry is at its concurrency limit
            self.turn += k + 1
            self.budgets[index] -= 1
            self.owner[trial_id] = index
            return {"entry": index, "point": point}
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.owner:
            self.searchers[self.owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.owner:
            self.searchers[self.owner[trial_id]].on_trial_complete(trial_id, result=result, error=error)


def _run_search(study, store, smoke, resources, ray_storage, stamp, checkpoint_root, max_concurrent, quiet):
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.monotonic()
    search = study.search
    n_points, n_seeds = study.search_trials(smoke), len(study.seeds(smoke))
    total = sum(study.counts(smoke))
    # TPE's first 10 points are random anyway; after that, about a quarter of the points at once
    limit = search.max_concurrent or max(1, math.ceil(n_points / 4), min(n_points, 10))
    searchers, budgets, done, long = {}, {}, {}, False
    for index in range(len(study.entries)):
        complete, partial, done_here = _previous_points(store, index, n_seeds, search.metric)
        done.update(done_here)
        complete = complete[:n_points]
        budgets[index] = n_points - len(complete)
        if budgets[index] <= 0:
            continue
        seed = int(hashlib.sha1(f"{study.name}:{index}".encode()).hexdigest()[:8], 16) % 2**31
        searcher = OptunaSearch(space=_optuna_space(study, index, smoke), metric="objective", mode="min",
                                sampler=_sampler(search.sampler, seed),
                                points_to_evaluate=partial[:budgets[index]] or None)  # finish cut-off points
        for config, value in complete:
            searcher.add_evaluated_point(config, value)  # what earlier runs learnt
        searchers[index] = ConcurrencyLimiter(searcher, max_concurrent=limit)
        long = long or not is_short(study.entry_trials(index, smoke)[0])
    progress = Progress(total - len(done), name=study.name, quiet=quiet)
    recorder = _Recorder(store, progress)
    errors = []
    if searchers:
        progress.show()
        trainable = tune.with_parameters(_search_task, study=study, smoke=smoke, metric=search.metric, done=done,
                                         checkpoint_root=checkpoint_root if long else None, cpu=resources["cpu"])
        errors = _tuner_run(trainable, resources=resources, storage=ray_storage, name=f"search-{stamp}",
                            callback=recorder, search_alg=_Entries(searchers, budgets),
                            num_samples=sum(budgets[i] for i in searchers), max_concurrent=max_concurrent)
        progress.show(final=True)
    counted = 0
    if store.trials is not None and "search_entry" in store.trials:
        counted = int(store.trials["search_entry"].notna().sum())
    return _summary(store, total, len(done), recorder, start, 1, errors, max(0, total - counted))
