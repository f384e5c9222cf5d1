"""Connecting to Ray: an embedded local instance unless `--address` or `RAY_ADDRESS` names a cluster,
and a quiet console on the way.

Ray prints a lot on a driver's console: every line its workers write (Ray Data plans and
progress, Ray Train's reports, placement-group cleanup), prefixed with the process, plus its own
warnings. By default raylm's driver prints only raylm's own lines, those of the driver and those a
worker marked with `say`; everything else still goes to the Ray session's log folder, which is
named once. `--verbose` (or RAYLM_VERBOSE=1) shows Ray's output again. The same holds for a job's
driver on a cluster, so `ray job logs` reads the same.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import ray

WORKER_LINE = ":raylm:"  # marks a worker's line for the driver's console
_joined_cluster = False


def verbose() -> bool:
    """Whether Ray's own console output is shown (RAYLM_VERBOSE=1; the CLI's --verbose sets it)."""
    return os.environ.get("RAYLM_VERBOSE", "") not in ("", "0")


def say(line: str) -> None:
    """One console line from a Ray worker (or a Tune trial). It goes to the process's own stdout,
    which Ray forwards to the driver once (Ray Train's patched print() also logs, so lines came out
    twice), marked so the driver prints it as it is."""
    print(WORKER_LINE + line, file=sys.__stdout__, flush=True)


def init_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool = False) -> None:
    """Start or join Ray once per process; later calls (and an already-connected driver) no-op,
    but for routing the console.

    A local instance starts without the dashboard unless asked: a 2-step fit ends 1.9 s sooner
    on 2 cores (its ten processes take no CPU from the work), and one process's consecutive fits
    still get their workers back. A Tune sweep asks for it: its finished trials' resources are
    freed through it.
    """
    if not ray.is_initialized():
        level = logging.WARNING if verbose() else logging.ERROR
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            from raylm import storage

            worker_env = storage.s3_worker_env()
            ray.init(address=address, runtime_env={"env_vars": worker_env} if worker_env else None, logging_level=level)
            mark_joined_cluster()
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=dashboard, logging_level=level)
        if not verbose():
            # On stderr, with the other diagnostics: stdout stays the command's output (`evaluate --json`).
            print(f"raylm: Ray's own logs are in {_logs_folder()} (--verbose or RAYLM_VERBOSE=1 shows them here)",
                  file=sys.stderr)
    _route_console()


def _logs_folder() -> str:
    node = ray._private.worker.global_worker.node
    return node.get_logs_dir_path() if node is not None else "the Ray session's logs folder"


def _route_console() -> None:
    """Worker lines marked by `say` are printed as they are and, unless verbose, Ray's own console
    output (other worker lines, Ray Data's console log and progress bars) is not shown. Ray's
    printer of worker output is a handler of its log dispatcher (ray._private in Ray 2.60), put
    back by every ray.init, so this runs after each."""
    from ray._private import ray_logging
    from ray._private.log import PlainRayHandler
    import ray.data

    dispatcher = ray_logging.global_worker_stdstream_dispatcher
    if not any(handler is _print_worker_output for _, handler in dispatcher.handlers):
        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler("ray_print_logs", _print_worker_output)
    if not verbose():
        for handler in logging.getLogger("ray.data").handlers:
            if isinstance(handler, PlainRayHandler):  # the console one; the session log file keeps everything
                handler.setLevel(logging.ERROR)
        ray.data.DataContext.get_current().enable_progress_bars = False
        warnings.filterwarnings("ignore", category=UserWarning, module=r"ray\.")  # advice about Ray's tuning


def _print_worker_output(data: dict) -> None:
    """A batch of lines one worker wrote: the marked ones as they are, the others as Ray prints
    them (process prefix, repeats folded) when verbose. The autoscaler's events ("Adding 1 node(s)
    of type cpu-worker") always: on a cluster they say where the run's resources come from."""
    from ray._private import worker

    lines = data.get("lines", [])
    for line in lines:
        if line.startswith(WORKER_LINE):
            print(line[len(WORKER_LINE):], flush=True)
    if verbose() or data.get("pid") == "autoscaler":
        rest = [line for line in lines if not line.startswith(WORKER_LINE)]
        worker.print_to_stdstream({**data, "lines": rest},
                                  ignore_prefix=worker._should_ignore_worker_log_prefix(worker.global_worker))


def shutdown() -> None:
    """`ray.shutdown()`, a second sooner on a Ray this process started. Ray 2.60 stops the GCS
    before the autoscaler monitor, whose SIGTERM handler then writes to the stopped GCS until the
    1 s grace ends in a SIGKILL (1.5 s -> 0.4 s measured here); the monitor holds nothing, so it
    is killed first."""
    if not ray.is_initialized():
        return
    node = ray._private.worker._global_node
    if node is not None and node.head and not _joined_cluster:
        node.kill_monitor(check_alive=False)
    ray.shutdown()


def joined_cluster() -> bool:
    """Whether this process joined a running cluster (which may autoscale) rather than starting one."""
    return _joined_cluster


def mark_joined_cluster() -> None:
    """This process joined a cluster, or runs inside Ray for a driver that did (a Tune trial)."""
    global _joined_cluster
    _joined_cluster = True


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 1.0))


# The custom resource that the CPU node types of cluster/ declare (head, cpu-worker; as many as
# they have CPUs, so it also counts the CPUs data work may use). Data work asks for a token amount
# of it: a placement mark, while CPUs still decide how much runs at once.
DATA_RESOURCE = "raylm_data"
DATA_MARK = 0.001


def data_cpus() -> float:
    """The CPUs of the nodes that CPU-only data work (prepare, evaluate's scoring) may use: those
    declaring DATA_RESOURCE on a cluster that has it, else every CPU."""
    resources = ray.cluster_resources()
    return float(resources.get(DATA_RESOURCE) or resources.get("CPU", 1.0))


def data_resources() -> dict:
    """Ray's `resources` argument for CPU-only data work: on a cluster that declares DATA_RESOURCE,
    a mark of it, so Ray runs the work, and its autoscaler adds nodes for it, only on those node
    types (past their CPUs, Ray's planner puts CPU-only demand on GPU types); else none."""
    return {DATA_RESOURCE: DATA_MARK} if DATA_RESOURCE in ray.cluster_resources() else {}


def data_task(num_cpus: float) -> dict:
    """Ray arguments of a CPU-only data task or actor using `num_cpus`."""
    return {"num_cpus": num_cpus, "resources": data_resources()}


def largest_data_node_cpus() -> int:
    """The most CPUs one data task can get: a task asking for more than any one node has would
    wait forever (nodes declaring DATA_RESOURCE, where a cluster has it)."""
    key = DATA_RESOURCE if DATA_RESOURCE in ray.cluster_resources() else "CPU"
    sizes = [node["Resources"].get(key, 0) for node in ray.nodes() if node["Alive"]]
    return max(1, int(max(sizes, default=1)))
