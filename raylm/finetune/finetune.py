"""`raylm finetune`: continue training a pretrained run's model on new data, through the same
TorchTrainer path as pretraining, and report validation before and after.

The model and tokenizer come from `finetune.init`: a run folder or a Hugging Face model folder.
The data is a folder prepared with that tokenizer (`data.tokenizer.path=<init>/tokenizer.json`)
or instruction JSONL (`finetune.instructions`).
A LoRA run ends with merge-and-save: `<run>/merged/` is an ordinary run folder with the adapters
folded into the weights, for every other command (and another fine-tune) to use.
"""

from __future__ import annotations

import json
import math
import tempfile

import ray.train

from raylm import runtime, storage
from raylm.config import Config, dump_config
from raylm.errors import RaylmError
from raylm.data.instructions import load_instructions
from raylm.data.manifest import read_manifest
from raylm.train.checkpoint import checkpoint_name, model_source, saved_state, save_weights
from raylm.train.metrics import read_metrics
from raylm.train.trainer import (TrainingJob, check_batch, check_tokenizer, fit_to_context, run,
                                 run_folder)

MERGED = "merged"
REPORT = "finetune.json"


def plan_finetune(config: Config) -> TrainingJob:
    """Check everything a fine-tune needs before Ray starts: the pretrained run, the data and its
    tokenizer, the output folder."""
    settings = config.finetune
    if settings.init is None:
        raise RaylmError("finetune.init is not set: give the run folder of the pretrained model, e.g. finetune.init=runs/pretrain, "
                         "or a Hugging Face model folder")
    source = model_source(start_folder(storage.absolute(settings.init)), "finetune.init")
    if "name" not in config.train.model_fields_set:
        config = config.model_copy(update={"train": config.train.model_copy(update={"name": "finetune"})})
    config = config.model_copy(update={"model": source.config.model})
    run_dir = run_folder(config)
    if run_dir.rstrip("/") == source.folder.rstrip("/"):
        raise RaylmError(f"train.name: the fine-tuning run would write into {source.folder}, the run it starts from; choose another train.name")

    job = TrainingJob(config, run_dir, source.tokenizer, config.data.seq_len, init=source, eval_at_start=True,
                      command="finetune")
    if settings.instructions:
        rows = load_instructions(settings.instructions, source.tokenizer, config.data.seq_len, settings,
                                 config.data.split.val, config.data.split.seed, min_val=config.train.max_workers)
        if config.data.seq_len > config.model.block_size:  # a row is one padded pair: it cannot be cut into several
            raise RaylmError(f"data.seq_len ({config.data.seq_len}) is larger than model.block_size "
                             f"({config.model.block_size}); set a smaller data.seq_len")
        check_batch(config, rows.train.num_rows)
        job.instructions = rows
    else:
        data = storage.absolute(config.train.data)
        manifest = read_manifest(data)
        check_tokenizer(manifest, source, config.train.data, "finetune.init")
        job.config, job.rows_per_window = fit_to_context(config, manifest)
        job.data, job.manifest, job.seq_len = data, manifest, job.config.data.seq_len
    storage.check_writable(run_dir)
    return job


def start_folder(run_dir: str) -> str:
    """The plain-weights folder of a run: a LoRA run's merged model, any other run itself."""
    merged = storage.join(run_dir, MERGED)
    return merged if storage.exists(storage.join(merged, "config.yaml")) else run_dir


def finetune(config: Config, address: str | None = None, num_cpus: int | None = None, log=print) -> ray.train.Result:
    job = plan_finetune(config)
    if job.instructions is not None and job.instructions.skipped:
        log(f"finetune: skipped instruction lines: {dict(job.instructions.skipped)}")
    runtime.init_ray(address, num_cpus)
    result = run(job, log)
    if result.error is None:
        report = before_and_after(job.run_dir)
        if report:
            log(f"finetune: val loss {report['before']['loss']:.4f} -> {report['after']['loss']:.4f}, bits per byte "
                f"{report['before']['bits_per_byte']:.4f} -> {report['after']['bits_per_byte']:.4f} ({job.run_dir}/{REPORT})")
        if job.config.finetune.method == "lora":
            log(f"finetune: merged the LoRA adapters into {merge_and_save(job.run_dir)}")
    return result


def before_and_after(run_dir: str) -> dict | None:
    """The first and last validation of the run (before any fine-tuning step, and at the end),
    written to <run>/finetune.json; None without a val split."""
    evaluations = [r for r in read_metrics(run_dir) if "val_loss" in r]
    if not evaluations:
        return None

    def summary(record: dict) -> dict:
        return {"step": record["step"], "loss": record["val_loss"], "perplexity": math.exp(record["val_loss"]),
                "bits_per_byte": record["val_bpb"]}

    report = {"before": summary(evaluations[0]), "after": summary(evaluations[-1])}
    storage.write_bytes(storage.join(run_dir, REPORT), json.dumps(report, indent=2).encode())
    return report


def merge_and_save(run_dir: str) -> str:
    """Fold a LoRA run's adapters into its weights and save the plain model as <run>/merged/."""
    from raylm.train.checkpoint import load_model

    model, source = load_model(run_dir)
    merged = storage.join(run_dir, MERGED)
    config = source.config
    plain = config.model_copy(update={"finetune": config.finetune.model_copy(update={"method": "full"})})
    storage.write_bytes(storage.join(merged, "config.yaml"), dump_config(plain).encode())
    source.tokenizer.write(merged)  # byte for byte: data prepared with it must keep matching its fingerprint
    step = saved_state(source.checkpoint)["step"]
    with tempfile.TemporaryDirectory() as local:
        save_weights(local, model, step)
        storage.upload_dir(local, storage.join(merged, checkpoint_name(step)))
    return merged
