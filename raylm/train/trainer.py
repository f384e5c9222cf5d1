"""`raylm pretrain` (and the training half of `finetune` and `tune`): the driver side — check the
inputs, then run a Ray Train `TorchTrainer`.

The driver reads the prepared dataset's manifest (and its shards only when they are small), writes
the run's resolved config and tokenizer next to its checkpoints, and hands each worker a shard of
the data, streamed from the files when it is large.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data
import ray.train
from ray.data import ExecutionOptions
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from raylm import runtime, storage
from raylm.config import Config, dump_config
from raylm.data.pack import as_model_rows
from raylm.data.tokenizer import TOKENIZER, TokenizerFiles
from raylm.errors import RaylmError
from raylm.data.instructions import InstructionSet
from raylm.data.manifest import read_manifest
from raylm.train.checkpoint import ModelSource, latest_complete, model_source, saved_state
from raylm.train import schedule
from raylm.train.loop import train_loop_per_worker
from raylm.train.schedule import rows_per_window, step_plan

DATA_CPUS = 1.0  # left to Ray Data: its file-listing and read tasks each need a whole CPU
CACHE_BYTES = 512 << 20  # a split this small is read once and kept in the object store
DRIVER_READ_BYTES = 64 << 20  # ... and one this small is read by the driver and shared out by the workers


@dataclass
class TrainingJob:
    """What the driver settles before Ray starts: the resolved config, the run folder, and what the
    workers read — a prepared dataset or instruction rows — plus, to fine-tune, the starting weights."""

    config: Config
    run_dir: str
    tokenizer: TokenizerFiles
    seq_len: int
    data: str | None = None
    manifest: dict | None = None
    rows_per_window: int = 1  # model rows per prepared window (seq_len = rows_per_window x the model's context)
    instructions: InstructionSet | None = None
    init: ModelSource | None = None  # the weights to start from (not resuming)
    eval_at_start: bool = False
    command: str = "pretrain"  # what the driver's log lines start with
    console_prefix: str = ""  # what the workers' console lines start with (a Tune trial's name)


def resolve(config: Config, manifest: dict) -> tuple[Config, int]:
    """The config the workers run, and how many model rows each prepared window makes: the model's
    vocabulary from the data, which must fit it, and the data fitted to the model's context."""
    vocab = manifest["tokenizer"]["vocab_size"]
    model = config.model
    if model.vocab_size is None:
        model = model.model_copy(update={"vocab_size": vocab})
    elif model.vocab_size < vocab:
        raise RaylmError(f"model.vocab_size={model.vocab_size} is smaller than the data's tokenizer ({vocab} tokens)")
    return fit_to_context(config.model_copy(update={"model": model}), manifest)


def fit_to_context(config: Config, manifest: dict) -> tuple[Config, int]:
    """Prepared windows longer than the model's context train as rows of it (see
    `raylm.data.pack.model_rows`) when their length is a multiple of it. The returned config's
    data.seq_len is the rows the model trains on (evaluate windows text files alike)."""
    seq_len = manifest["seq_len"]
    rows = rows_per_window(seq_len, config.model.block_size, f"the data's seq_len ({seq_len})",
                           "prepare with data.seq_len equal to it or a multiple of it")
    check_batch(config, manifest["splits"]["train"]["sequences"] * rows)
    return config.model_copy(update={"data": config.data.model_copy(update={"seq_len": seq_len // rows})}), rows


def check_batch(config: Config, train_rows: int) -> None:
    """Enough training rows for one step of every worker."""
    train = config.train
    if train_rows < train.max_workers * train.batch_size:
        raise RaylmError(f"the training data has {train_rows} sequences, fewer than train.workers x train.batch_size "
                         f"({train.max_workers} x {train.batch_size}): lower them or give more data")


def run_folder(config: Config) -> str:
    return storage.join(storage.absolute(config.train.storage), config.train.name)


def check_tokenizer(manifest: dict, source: ModelSource, data: str, key: str) -> None:
    """Data prepared with the tokenizer of the model it trains."""
    if manifest["tokenizer"]["sha256"] != source.tokenizer.sha256:
        raise RaylmError(f"train.data {data} was prepared with another tokenizer than {key}'s; prepare it again with "
                         f"data.tokenizer.path={storage.join(source.folder, TOKENIZER)}")


def plan_pretrain(config: Config) -> TrainingJob:
    data = storage.absolute(config.train.data)
    manifest = read_manifest(data)
    init = None
    if config.train.init:  # continued pretraining: the model is the one the weights are for
        init = model_source(config.train.init, "train.init")
        check_tokenizer(manifest, init, config.train.data, "train.init")
        config = config.model_copy(update={"model": init.config.model})
    config, rows = resolve(config, manifest)
    job = TrainingJob(config, run_folder(config), TokenizerFiles.read(data), config.data.seq_len, data=data,
                      manifest=manifest, rows_per_window=rows, init=init)
    storage.check_writable(job.run_dir)
    return job


def pretrain(config: Config, address: str | None = None, num_cpus: int | None = None, log=print) -> ray.train.Result:
    job = plan_pretrain(config)
    runtime.init_ray(address, num_cpus)
    return run(job, log)


def run(job: TrainingJob, log=print, callbacks: tuple = ()) -> ray.train.Result:
    _short_run_settings()
    result = build_trainer(job, log, callbacks).fit()
    log(f"{job.command}: finished; checkpoint {result.checkpoint.path if result.checkpoint else None}")
    return result


def _short_run_settings() -> None:
    """Ray Train settings (read from the driver's environment, which the user's overrides) that cost
    short runs seconds: the controller polls its workers every 2 s by default, so a finished run
    waited up to that long to end; 0.5 s is cheap. And on a Ray raylm started itself, where no
    node is ever drained, no preemption watcher: an actor process less per run."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    if not runtime.joined_cluster():
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def build_trainer(job: TrainingJob, log=print, callbacks: tuple = ()) -> TorchTrainer:
    """The run's TorchTrainer; writes the run's config and tokenizer and says whether it resumes."""
    config, train, run_dir = job.config, job.config.train, job.run_dir
    from raylm.model.gpt import GPT  # the driver builds it once on the meta device, for the summary
    import torch

    with torch.device("meta"):
        model = GPT(config.model)
    if job.init and job.init.hf:
        what = f"{config.model.architecture} model from {job.init.folder}"
    else:
        what = f"{config.model.preset or 'custom'} model"
    log(f"{job.command}: {what}, {model.num_params() / 1e6:.2f}M parameters, "
        f"{model.flops_per_token(job.seq_len) / 1e6:.1f} MFLOPs per token; run folder {run_dir}")
    note = schedule.describe(train, step_plan(train, job.seq_len, train.max_workers)[2])
    if note:
        log(f"{job.command}: {note}")
    storage.write_bytes(storage.join(run_dir, "config.yaml"), dump_config(config).encode())
    job.tokenizer.write(run_dir)

    low, high = train.worker_range
    if low < high:
        log(f"{job.command}: elastic, {low} to {high} workers: it starts with what the cluster has, goes on with fewer "
            f"when a node is lost{'' if train.max_failures else ' (but train.max_failures=0 ends the run then)'} and grows "
            f"back when nodes return; each change resumes from the newest checkpoint, with "
            + ("the same tokens per step" if train.tokens_per_step else "tokens per step following the worker count "
               "(set train.tokens_per_step to keep them)"))
    resume = latest_complete(run_dir, warn=log)
    if resume:
        saved = saved_state(resume)
        note = "" if low == high == saved["world_size"] else (
            f"; it was saved by {saved['world_size']} workers and this run has {high if low == high else f'up to {high}'}, "
            "so the data order from here on is not the one an uninterrupted run would have seen")
        log(f"{job.command}: resuming from step {saved['step']} ({resume}){note}")

    splits, val_tokens_per_byte = _datasets(job)
    in_memory = {name: split for name, split in splits.items() if isinstance(split, ray.ObjectRef)}
    storage_fs, storage_path = storage.filesystem(storage.absolute(train.storage))
    reserved = worker_cpus(config, runtime.cluster_cpus())
    if reserved < train.cpus_per_worker:
        log(f"{job.command}: each worker reserves {reserved:g} CPU (not {train.cpus_per_worker:g}) so Ray Data can read "
            f"on this {runtime.cluster_cpus():g}-CPU cluster; it still runs {max(1, int(train.cpus_per_worker))} torch thread(s)")
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.model_dump(mode="json"),
            "run_dir": run_dir,
            "seq_len": job.seq_len,
            "has_val": "val" in splits,
            "in_memory": in_memory,
            "val_tokens_per_byte": val_tokens_per_byte,
            "init": job.init,
            "eval_at_start": job.eval_at_start,
            "console_prefix": job.console_prefix,
        },
        scaling_config=ScalingConfig(num_workers=train.workers, use_gpu=train.use_gpu,
                                     resources_per_worker={"CPU": reserved},
                                     elastic_resize_monitor_interval_s=train.resize_check_seconds),
        run_config=RunConfig(
            name=train.name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=train.keep_checkpoints),
            failure_config=FailureConfig(max_failures=train.max_failures),
            callbacks=list(callbacks),
        ),
        datasets={name: split for name, split in splits.items() if name not in in_memory},
        # Ordered reads, no locality reshuffling: every run sees the same batches in the same order.
        dataset_config=DataConfig(execution_options=ExecutionOptions(preserve_order=True), enable_shard_locality=False),
    )


def _datasets(job: TrainingJob) -> tuple[dict[str, ray.data.Dataset | ray.ObjectRef], float]:
    """The train and (when every worker gets a row) val splits, and the val split's tokens per
    byte for bits per byte. A small split is one table in the object store, which the workers
    share out among themselves (`loop.MemoryShard`); a large one a Ray Data dataset."""
    workers = job.config.train.max_workers
    if job.instructions is not None:
        rows = job.instructions
        splits = {"train": ray.put(rows.train)}
        if rows.val.num_rows >= workers:
            splits["val"] = ray.put(rows.val)
        return splits, rows.val_tokens / max(1, rows.val_bytes)

    splits, manifest = job.manifest["splits"], job.manifest
    block_size = job.seq_len if job.rows_per_window > 1 else None
    shards = [storage.join(job.data, shard) for shard in splits["train"]["shards"]]
    random.Random(job.config.train.seed).shuffle(shards)  # file-level shuffle, the same on every run
    datasets = {"train": _split(shards, job.data, _split_bytes(manifest, "train"), block_size)}
    if splits["val"]["sequences"] * job.rows_per_window >= workers:  # small, and read at every evaluation: read once
        val_shards = [storage.join(job.data, s) for s in splits["val"]["shards"]]
        datasets["val"] = _split(val_shards, job.data, _split_bytes(manifest, "val"), block_size)
    return datasets, splits["val"]["tokens"] / max(1, splits["val"]["bytes"])


def _split_bytes(manifest: dict, split: str) -> int:
    token_bytes = 2 if manifest["dtype"] == "uint16" else 4
    return manifest["splits"][split]["sequences"] * (manifest["seq_len"] + 1) * token_bytes


def _split(shards: list[str], data: str, nbytes: int, block_size: int | None) -> ray.data.Dataset | ray.ObjectRef:
    """A split's windows in shard order, as rows of block_size + 1 tokens when given (windows longer
    than the model's context): streamed from the shards when large; read once into the object store
    when small, so epochs start without re-reading them — by the driver itself below
    DRIVER_READ_BYTES, as one table the workers take their shares of: a Ray Data job and its
    coordinator actors would cost more (seconds, five processes) than the read."""
    if nbytes < DRIVER_READ_BYTES:
        fs = storage.filesystem(data)[0]
        table = pa.concat_tables(pq.read_table(storage.filesystem(shard)[1], filesystem=fs) for shard in shards)
        return ray.put(as_model_rows(table, block_size) if block_size else table)
    dataset = _in_order(ray.data.read_parquet(shards, **_filesystem(data)))
    if block_size:
        dataset = dataset.map_batches(as_model_rows, fn_kwargs={"block_size": block_size}, batch_format="pyarrow")
    return dataset.materialize() if nbytes < CACHE_BYTES else dataset


def worker_cpus(config: Config, cluster_cpus: float) -> float:
    """CPUs each worker reserves: train.cpus_per_worker, or less on a local CPU instance too small to
    also run the data tasks, which would otherwise wait forever behind the workers. A joined cluster
    gets the full request: its autoscaler adds nodes for it (shrinking it would pack the run onto
    the nodes already up)."""
    train = config.train
    if train.use_gpu or runtime.joined_cluster():
        return train.cpus_per_worker
    return max(0.1, min(train.cpus_per_worker, (cluster_cpus - DATA_CPUS) / train.max_workers))


def _in_order(dataset: ray.data.Dataset) -> ray.data.Dataset:
    """The rows in the order given, also when materialized in the driver (which runs with the
    dataset's own context, not the trainer's DataConfig). No Ray Data progress bars: the run's step
    line is its progress, and per-epoch split bars only fill the log."""
    dataset.context.execution_options.preserve_order = True
    dataset.context.enable_progress_bars = False
    return dataset


def _filesystem(path: str) -> dict:
    return {"filesystem": storage.filesystem(path)[0]} if storage.is_remote(path) else {}
