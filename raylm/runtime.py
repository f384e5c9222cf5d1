"""Connecting to Ray: an embedded local instance unless `--address` or `RAY_ADDRESS` names a cluster."""

from __future__ import annotations

import logging
import os

import ray

_joined_cluster = False


def init_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool = True) -> None:
    """Start or join Ray once per process; later calls (and an already-connected driver) no-op.

    `dashboard=False` suits data-only runs: the local instance starts faster and its agents take no
    CPU from the work. Ray Train needs it on (it frees finished runs' resources through it).
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        from raylm import storage

        worker_env = storage.s3_worker_env()
        ray.init(address=address, runtime_env={"env_vars": worker_env} if worker_env else None,
                 logging_level=logging.WARNING)
        mark_joined_cluster()
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=dashboard, logging_level=logging.WARNING)


def joined_cluster() -> bool:
    """Whether this process joined a running cluster (which may autoscale) rather than starting one."""
    return _joined_cluster


def mark_joined_cluster() -> None:
    """This process joined a cluster, or runs inside Ray for a driver that did (a Tune trial)."""
    global _joined_cluster
    _joined_cluster = True


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 1.0))


def largest_node_cpus() -> int:
    """A task asking for more CPUs than any one node has would wait forever."""
    sizes = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]]
    return max(1, int(max(sizes, default=1)))
