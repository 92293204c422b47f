"""Ray: connect (or start it locally), and size a trial's resources against the cluster."""

from __future__ import annotations

import logging
import os
import sys
import threading

import ray

from sensitivity.study import Study, StudyError


CONNECT_TIMEOUT_S = 15.0  # joining a cluster that does not answer fails after this, not never


class ClusterUnreachable(ConnectionError):
    """--address (or RAY_ADDRESS) names no Ray cluster that answers."""


def connect(address: str | None, timeout_s: float | None = None) -> bool:
    """Make sure Ray is up; return True when this call started it (and must stop it).

    Joining a cluster fails with ClusterUnreachable after `timeout_s` (default CONNECT_TIMEOUT_S).
    """
    if ray.is_initialized():
        return False
    quiet = dict(logging_level=logging.ERROR, log_to_driver=False)
    target = address or os.environ.get("RAY_ADDRESS")
    if target:
        _join(target, CONNECT_TIMEOUT_S if timeout_s is None else timeout_s, address=address, **quiet)
    else:
        # The dashboard runs code for whoever reaches it: never bind it beyond loopback.
        ray.init(include_dashboard=None, dashboard_host="127.0.0.1", **quiet)
    return True


def _join(target: str, timeout_s: float, **kwargs) -> None:
    """ray.init(address=...) within `timeout_s`: Ray itself retries an unreachable address for minutes."""
    failure: list[BaseException] = []

    def init():
        try:
            ray.init(**kwargs)
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=init, name="ray-init", daemon=True)
    with _stderr_held() as held:  # Ray's core logs each failed attempt to fd 2: keep them unless it connects
        thread.start()
        thread.join(timeout_s)
        held.keep = not thread.is_alive() and not failure
    if thread.is_alive():
        raise ClusterUnreachable(f"no Ray cluster answered at {target} within {timeout_s:g} s; check the address "
                                 f"(HOST:6379, auto, or ray://HOST:10001) and that `ray status` works there")
    if failure:
        reason = " ".join(str(failure[0]).split())[:300] or type(failure[0]).__name__
        raise ClusterUnreachable(f"cannot join the Ray cluster at {target}: {reason}") from None


class _stderr_held:
    """Send fd 2 to a temporary file for a while; write it back on exit if `keep`."""

    keep = True

    def __enter__(self):
        import tempfile

        sys.stderr.flush()
        self.file = tempfile.TemporaryFile()
        self.saved = os.dup(2)
        os.dup2(self.file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        os.dup2(self.saved, 2)
        os.close(self.saved)
        if self.keep:
            self.file.seek(0)
            sys.stderr.write(self.file.read().decode(errors="replace"))
        self.file.close()
        return False


def cluster_totals() -> tuple[float, float, float, float]:
    """(total CPU, total GPU, largest node CPU, largest node GPU) of the alive nodes."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = [n["Resources"].get("CPU", 0.0) for n in nodes]
    gpus = [n["Resources"].get("GPU", 0.0) for n in nodes]
    return sum(cpus), sum(gpus), max(cpus, default=0.0), max(gpus, default=0.0)


def launchable() -> dict[str, float]:
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


def trial_resources(study: Study, smoke: bool, quiet: bool) -> dict:
    """Per-trial resources; fail up front where no node could ever run a trial."""
    cpu, gpu = study.resources.cpu, study.resources.gpu
    _, _, node_cpu, node_gpu = cluster_totals()
    more = launchable()  # an autoscaling GPU worker type counts even before its first node is up
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


def slots(resources: dict) -> int:
    total_cpu, total_gpu, _, _ = cluster_totals()
    slots = total_cpu / resources["cpu"]
    if resources.get("gpu"):
        slots = min(slots, total_gpu / resources["gpu"])
    return max(1, int(slots))
