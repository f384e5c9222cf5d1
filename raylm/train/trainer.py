"""`raylm pretrain`: the driver side — check the inputs, then run a Ray Train `TorchTrainer`.

The driver reads the prepared dataset's manifest (never its shards), writes the run's resolved
config and tokenizer next to its checkpoints, and hands each worker a streaming shard of the data.
"""

from __future__ import annotations

import json
import random

import ray
import ray.data
import ray.train
from ray.data import ExecutionOptions
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from raylm import runtime, storage
from raylm.config import Config, dump_config
from raylm.errors import RaylmError
from raylm.train.checkpoint import latest_complete, saved_state
from raylm.train.loop import train_loop_per_worker

MANIFEST = "manifest.json"
DATA_CPUS = 1.0  # left to Ray Data: its file-listing and read tasks each need a whole CPU
CACHE_BYTES = 512 << 20  # a train split this small is read once and kept in the object store


def read_manifest(data: str) -> dict:
    path = storage.join(storage.absolute(data), MANIFEST)
    if not storage.exists(path):
        raise RaylmError(f"no prepared dataset at {data} (no {MANIFEST}); run `raylm prepare` first or set train.data")
    return json.loads(storage.read_bytes(path))


def resolve(config: Config, manifest: dict) -> Config:
    """The config the workers run: the model's vocabulary and the window length from the data,
    which must fit the model."""
    vocab = manifest["tokenizer"]["vocab_size"]
    model = config.model
    if model.vocab_size is None:
        model = model.model_copy(update={"vocab_size": vocab})
    elif model.vocab_size < vocab:
        raise RaylmError(f"model.vocab_size={model.vocab_size} is smaller than the data's tokenizer ({vocab} tokens)")
    if manifest["seq_len"] > model.block_size:
        raise RaylmError(f"the data's seq_len ({manifest['seq_len']}) is larger than model.block_size "
                         f"({model.block_size}); prepare with a smaller data.seq_len or raise model.block_size")
    train = config.train
    sequences = manifest["splits"]["train"]["sequences"]
    if sequences < train.workers * train.batch_size:
        raise RaylmError(f"the train split has {sequences} sequences, fewer than train.workers x train.batch_size "
                         f"({train.workers} x {train.batch_size}): lower them or prepare more data")
    # data.seq_len records the windows the model trains on (evaluate windows text files alike).
    return config.model_copy(update={"model": model, "data": config.data.model_copy(update={"seq_len": manifest["seq_len"]})})


def run_folder(config: Config) -> str:
    return storage.join(storage.absolute(config.train.storage), config.train.name)


def pretrain(config: Config, address: str | None = None, num_cpus: int | None = None, log=print) -> ray.train.Result:
    train = config.train
    data = storage.absolute(train.data)
    manifest = read_manifest(data)
    config = resolve(config, manifest)
    run_dir = run_folder(config)
    storage.check_writable(run_dir)
    runtime.init_ray(address, num_cpus)

    from raylm.model.gpt import GPT  # the driver builds it once on the meta device, for the summary
    import torch

    with torch.device("meta"):
        model = GPT(config.model)
    log(f"pretrain: {config.model.preset} model, {model.num_params() / 1e6:.2f}M parameters, "
        f"{model.flops_per_token(manifest['seq_len']) / 1e6:.1f} MFLOPs per token; run folder {run_dir}")
    storage.write_bytes(storage.join(run_dir, "config.yaml"), dump_config(config).encode())
    storage.write_bytes(storage.join(run_dir, "tokenizer.json"), storage.read_bytes(storage.join(data, "tokenizer.json")))

    resume = latest_complete(run_dir)
    if resume:
        saved = saved_state(resume)
        note = "" if saved["world_size"] == train.workers else (
            f"; it was saved by {saved['world_size']} workers and this run has {train.workers}, so the data order "
            "from here on is not the one an uninterrupted run would have seen")
        log(f"pretrain: resuming from step {saved['step']} ({resume}){note}")

    splits = manifest["splits"]
    shards = [storage.join(data, shard) for shard in splits["train"]["shards"]]
    random.Random(train.seed).shuffle(shards)  # file-level shuffle, the same on every run
    train_data = _read_in_order(shards, data)
    token_bytes = 2 if manifest["dtype"] == "uint16" else 4
    if splits["train"]["sequences"] * (manifest["seq_len"] + 1) * token_bytes < CACHE_BYTES:
        train_data = train_data.materialize()  # epochs then start without re-reading the shards
    datasets = {"train": train_data}
    has_val = splits["val"]["sequences"] >= train.workers
    if has_val:
        # Held-out data is small and read at every evaluation: read it once, into the object store.
        val_shards = [storage.join(data, s) for s in splits["val"]["shards"]]
        datasets["val"] = _read_in_order(val_shards, data).materialize()
    storage_fs, storage_path = storage.filesystem(storage.absolute(train.storage))
    reserved = worker_cpus(config, runtime.cluster_cpus())
    if reserved < train.cpus_per_worker:
        log(f"pretrain: each worker reserves {reserved:g} CPU (not {train.cpus_per_worker:g}) so Ray Data can read "
            f"on this {runtime.cluster_cpus():g}-CPU cluster; it still runs {max(1, int(train.cpus_per_worker))} torch thread(s)")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.model_dump(mode="json"),
            "run_dir": run_dir,
            "seq_len": manifest["seq_len"],
            "has_val": has_val,
            "val_tokens_per_byte": splits["val"]["tokens"] / max(1, splits["val"]["bytes"]),
        },
        scaling_config=ScalingConfig(num_workers=train.workers, use_gpu=train.use_gpu,
                                     resources_per_worker={"CPU": reserved}),
        run_config=RunConfig(
            name=train.name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=train.keep_checkpoints),
            failure_config=FailureConfig(max_failures=train.max_failures),
        ),
        datasets=datasets,
        # Ordered reads, no locality reshuffling: every run sees the same batches in the same order.
        dataset_config=DataConfig(execution_options=ExecutionOptions(preserve_order=True), enable_shard_locality=False),
    )
    result = trainer.fit()
    log(f"pretrain: finished; checkpoint {result.checkpoint.path if result.checkpoint else None}")
    return result


def worker_cpus(config: Config, cluster_cpus: float) -> float:
    """CPUs each worker reserves: train.cpus_per_worker, or less on a CPU cluster too small to also
    run the data tasks, which would otherwise wait forever behind the workers."""
    train = config.train
    if train.use_gpu:
        return train.cpus_per_worker
    return max(0.1, min(train.cpus_per_worker, (cluster_cpus - DATA_CPUS) / train.workers))


def _read_in_order(shards: list[str], data: str) -> ray.data.Dataset:
    """The shards' windows in the order given, also when materialized in the driver (which runs
    with the dataset's own context, not the trainer's DataConfig). No Ray Data progress bars: the
    run's step line is its progress, and per-epoch split bars only fill the log."""
    dataset = ray.data.read_parquet(shards, **_filesystem(data))
    dataset.context.execution_options.preserve_order = True
    dataset.context.enable_progress_bars = False
    return dataset


def _filesystem(path: str) -> dict:
    return {"filesystem": storage.filesystem(path)[0]} if storage.is_remote(path) else {}
