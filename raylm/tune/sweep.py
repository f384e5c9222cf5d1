"""`raylm tune`: a Ray Tune search over config keys, each trial a Ray Train run (pretrain or finetune).

Ray 2.60's Train V2 pattern: a trial is a function that builds a `TorchTrainer` from its point of
the search space and reports through `TuneReportCallback`; the trial function itself reserves no
CPU, so the trial's workers get them. ASHA stops weak trials at their evaluations. The sweep folder
`<train.storage>/<tune.name>/` ends with every trial's run folder (`trials/`), `results.json`,
`best-config.yaml` and TensorBoard hyperparameter summaries beside the trials' own event files.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from typing import Any

import ray
import yaml
from ray import tune as ray_tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from raylm import runtime, storage
from raylm.config import Config, dump_config, with_values
from raylm.errors import RaylmError
from raylm.finetune.finetune import plan_finetune
from raylm.train.trainer import DATA_CPUS, TrainingJob, plan_pretrain, run, worker_cpus

PLANNERS = {"pretrain": plan_pretrain, "finetune": plan_finetune}
TRIAL_DRIVER_MEMORY = 256 << 20  # the trial function only drives its TorchTrainer: no CPU, a little memory
DISTRIBUTIONS = {
    "choice": ray_tune.choice,
    "grid": ray_tune.grid_search,
    "uniform": lambda bounds: ray_tune.uniform(*bounds),
    "loguniform": lambda bounds: ray_tune.loguniform(*bounds),
    "randint": lambda bounds: ray_tune.randint(bounds[0], bounds[1] + 1),  # [low, high], both included
}


def with_absolute_paths(config: Config) -> Config:
    """Paths resolved against the caller's working directory: trials run in their own."""
    settings = config.finetune
    return with_values(config, {
        "train.data": storage.absolute(config.train.data), "train.storage": storage.absolute(config.train.storage),
        "finetune.init": settings.init and storage.absolute(settings.init),
        "finetune.instructions": [storage.absolute(path) for path in settings.instructions],
    }, where="paths")


def param_space(space: dict[str, dict[str, list]]) -> dict[str, Any]:
    return {key: DISTRIBUTIONS[kind](values) for key, spec in space.items() for kind, values in spec.items()}


def sweep_folder(config: Config) -> str:
    return storage.join(storage.absolute(config.train.storage), config.tune.name)


def trial_config(config: Config, params: dict[str, Any], trial: str) -> Config:
    """A trial's config: the sweep's plus its point, run in <sweep>/trials/<trial>; it checkpoints
    at every evaluation, so each report Tune sees carries the metric ASHA compares."""
    return with_values(config, {**params, "train.storage": storage.join(sweep_folder(config), "trials"),
                                "train.name": trial, "train.checkpoint_every": config.train.eval_every})


def plan_trial(config: Config, params: dict[str, Any], trial: str) -> TrainingJob:
    job = PLANNERS[config.tune.command](trial_config(config, params, trial))
    if job.manifest is not None and job.manifest["splits"]["val"]["sequences"] * job.rows_per_window < job.config.train.max_workers:
        raise RaylmError(f"tune: {job.data} has no val split to compare trials on; prepare with data.split.val > 0")
    return job


def run_trial(params: dict[str, Any], config_json: dict, joined_cluster: bool) -> None:
    """One trial, inside Tune: its TorchTrainer reports each checkpoint's metrics back to Tune. On a
    cluster the driver joined, it asks for its workers' full resources, as the driver would."""
    if joined_cluster:
        runtime.mark_joined_cluster()
    trial = f"trial-{ray_tune.get_context().get_trial_id()}"
    job = plan_trial(Config.model_validate(config_json), params, trial)
    job.command, job.console_prefix = trial, f"{trial}: "
    result = run(job, log=runtime.say, callbacks=(TuneReportCallback(),))
    if result.error is not None:
        raise result.error


def max_concurrent_trials(config: Config) -> int:
    """As many trials as the cluster runs side by side, each with its train.workers workers; 0 (no
    cap) on a joined cluster, which may autoscale: waiting trials are the demand that adds nodes."""
    if config.tune.max_concurrent_trials:
        return config.tune.max_concurrent_trials
    if runtime.joined_cluster():
        return 0
    train = config.train
    if train.use_gpu:
        return max(1, int(ray.cluster_resources().get("GPU", 0) // train.max_workers))
    cpus = runtime.cluster_cpus()
    return max(1, int((cpus - DATA_CPUS) // (train.max_workers * worker_cpus(config, cpus))))


def tune(config: Config, address: str | None = None, num_cpus: int | None = None, log=print) -> dict:
    settings = config.tune
    if not settings.search_space:
        raise RaylmError("tune.search_space is empty: give config keys and distributions, e.g. "
                         "tune.search_space='{train.lr: {loguniform: [1e-4, 1e-2]}}'")
    config = with_absolute_paths(config)
    first_point = {key: next(iter(spec.values()))[0] for key, spec in settings.search_space.items()}
    plan_trial(config, first_point, "trial-check")  # every key, the data and the output, before Ray starts
    runtime.init_ray(address, num_cpus, dashboard=True)

    sweep_dir = sweep_folder(config)
    concurrency = max_concurrent_trials(config)
    log(f"tune: {settings.num_samples} sample(s) of {settings.command} over {', '.join(settings.search_space)}, "
        f"{concurrency or 'as many as the cluster fits'} at a time, {settings.scheduler} on {settings.metric} ({settings.mode}); sweep folder {sweep_dir}")
    scheduler = (ASHAScheduler(time_attr="step", max_t=config.train.max_steps,
                               grace_period=settings.grace_period * config.train.eval_every,
                               reduction_factor=settings.reduction_factor)
                 if settings.scheduler == "asha" else FIFOScheduler())
    fs, path = storage.filesystem(sweep_dir)
    if not runtime.verbose():  # Tune's newer console prints its settings box even at verbose=0; the older one does not
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    tuner = ray_tune.Tuner(
        ray_tune.with_resources(
            functools.partial(run_trial, config_json=config.model_dump(mode="json"), joined_cluster=runtime.joined_cluster()),
            {"CPU": 0, "memory": TRIAL_DRIVER_MEMORY}),
        param_space=param_space(settings.search_space),
        tune_config=ray_tune.TuneConfig(
            metric=settings.metric, mode=settings.mode, num_samples=settings.num_samples, scheduler=scheduler,
            search_alg=BasicVariantGenerator(random_state=settings.seed, max_concurrent=concurrency)),
        run_config=ray_tune.RunConfig(name="tune", storage_path=path, storage_filesystem=fs, verbose=0),
    )
    results = summarize(config, tuner.fit())
    storage.write_bytes(storage.join(sweep_dir, "results.json"), json.dumps(results, indent=2).encode())
    log(results_table(results))
    best = next((t for t in results["trials"] if t["name"] == results["best"]), None)
    if best is None:
        raise RaylmError(f"tune: no trial reported {settings.metric}; see the trials' logs in {sweep_dir}/trials")
    best_config = with_values(config, {**best["params"], "train.name": f"{settings.name}-best"})
    storage.write_bytes(storage.join(sweep_dir, "best-config.yaml"), dump_config(best_config).encode())
    write_hparams(results, storage.join(sweep_dir, "tensorboard"))
    log(f"tune: best {best['name']} ({settings.metric} {best['metric']:.4f}); "
        f"`raylm {settings.command} --config {storage.join(sweep_dir, 'best-config.yaml')}` trains it")
    return results


def summarize(config: Config, grid: ray_tune.ResultGrid) -> dict:
    """results.json: every trial's point, last metric, steps and status, and the best trial."""
    settings, trials_dir = config.tune, storage.join(sweep_folder(config), "trials")
    trials = []
    for result in grid:
        metrics = result.metrics or {}
        name = f"trial-{metrics['trial_id']}" if "trial_id" in metrics else os.path.basename(result.path)
        steps = metrics.get("step", 0)
        status = ("ERROR" if result.error else "TERMINATED" if steps >= config.train.max_steps else "EARLY_STOPPED")
        trials.append({"name": name, "run": storage.join(trials_dir, name), "params": result.config,
                       "metric": metrics.get(settings.metric), "steps": steps, "status": status})
    scored = [t for t in trials if t["metric"] is not None]
    pick = min if settings.mode == "min" else max
    best = pick(scored, key=lambda t: t["metric"])["name"] if scored else None
    return {"metric": settings.metric, "mode": settings.mode, "best": best, "trials": trials}


def results_table(results: dict) -> str:
    keys = list(results["trials"][0]["params"]) if results["trials"] else []
    header = ["trial", *keys, results["metric"], "steps", "status"]
    rows = [[t["name"], *(_short(t["params"].get(k)) for k in keys), _short(t["metric"]), str(t["steps"]),
             t["status"] + ("  <- best" if t["name"] == results["best"] else "")] for t in results["trials"]]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in [header, *rows])


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_hparams(results: dict, folder: str) -> None:
    """One TensorBoard hparams entry per trial: the HPARAMS tab compares the points."""
    from torch.utils.tensorboard import SummaryWriter

    with tempfile.TemporaryDirectory() as local:
        with SummaryWriter(local) as writer:
            for trial in results["trials"]:
                if trial["metric"] is not None:
                    writer.add_hparams({k: _scalar(v) for k, v in trial["params"].items()},
                                       {f"hparam/{results['metric']}": trial["metric"]}, run_name=trial["name"])
        storage.upload_dir(local, folder)


def _scalar(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) else yaml.safe_dump(value).strip()
