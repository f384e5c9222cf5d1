"""The training loop each Ray Train worker runs: stream batches, step, evaluate, checkpoint, report.

Resuming reproduces the uninterrupted run: model, optimizer, RNG streams and the position in the
data stream are restored, and the data stream is deterministic (ordered reads, seeded shuffles),
so the steps after a resume see the same batches and give the same losses.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from raylm import storage
from raylm.config import Config, TrainConfig
from raylm.data.pack import windows_array
from raylm.model.lora import apply_lora, reset_lora
from raylm.model.gpt import GPT
from raylm.model.loss import IGNORE_INDEX
from raylm.runtime import say
from raylm.train.checkpoint import (ModelSource, checkpoint_name, latest_complete, load_checkpoint, load_source_weights,
                                   save_checkpoint)
from raylm.train.metrics import RunLog, peak_flops
from raylm.train.parallelize import gradient_sync, parallelize, unwrap
from raylm.train.schedule import learning_rate, step_plan

FAULT_MARKER = "fault-injected"
START = "start.json"


class MemoryShard:
    """A worker's equal share of a small split the driver put in the object store as one table,
    with the part of a Ray Data shard's interface the loop uses. Its shuffle is a permutation of
    the whole share, seeded per epoch (a Ray Data shard shuffles within a local buffer)."""

    def __init__(self, table_ref: ray.ObjectRef, rank: int, world: int):
        table = ray.get(table_ref)
        rows = table.num_rows // world  # equal shares, as Ray Data's split(equal=True)
        share = table.slice(rank * rows, rows)
        self.rows, self.columns = rows, {name: windows_array(share.column(name)) for name in share.column_names}

    def iter_torch_batches(self, batch_size: int, drop_last: bool = False, local_shuffle_buffer_size: int | None = None,
                           local_shuffle_seed: int | None = None):
        order = (np.random.default_rng(local_shuffle_seed).permutation(self.rows) if local_shuffle_buffer_size
                 else np.arange(self.rows))
        end = self.rows - self.rows % batch_size if drop_last else self.rows
        for start in range(0, end, batch_size):
            chosen = order[start : start + batch_size]
            yield {name: torch.from_numpy(column[chosen]) for name, column in self.columns.items()}


def shard_of(split: str, payload: dict, rank: int, world: int):
    """This worker's part of a split: its share of a table in the object store, or its Ray Data shard."""
    if split in payload["in_memory"]:
        return MemoryShard(payload["in_memory"][split], rank, world)
    return ray.train.get_dataset_shard(split)


class Batches:
    """A worker's endless stream of token windows: epoch after epoch over its shard of the data,
    shuffled alike on every run (the seed is the run's seed plus the epoch), with its position kept
    as (epoch, batches consumed) so a resumed run continues where the checkpoint was taken."""

    def __init__(self, shard, batch_size: int, shuffle_buffer: int, seed: int, epoch: int = 0, consumed: int = 0):
        self.shard, self.batch_size, self.shuffle_buffer, self.seed = shard, batch_size, shuffle_buffer, seed
        self.epoch, self.consumed = epoch, consumed
        self.batches = self._epoch(skip=consumed)

    def _epoch(self, skip: int):
        shuffle = {"local_shuffle_buffer_size": self.shuffle_buffer, "local_shuffle_seed": self.seed + self.epoch} if self.shuffle_buffer else {}
        batches = iter(self.shard.iter_torch_batches(batch_size=self.batch_size, drop_last=True, **shuffle))
        for _ in range(skip):
            if next(batches, None) is None:  # a share smaller than the saved position: more workers now
                self.epoch, self.consumed = self.epoch + 1, 0
                return self._epoch(skip=0)
        return batches

    def next(self) -> dict[str, torch.Tensor]:
        batch = next(self.batches, None)
        if batch is None:
            self.epoch, self.consumed = self.epoch + 1, 0
            self.batches = self._epoch(skip=0)
            batch = next(self.batches)
        self.consumed += 1
        return batch


def inputs_and_targets(batch: dict[str, torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token pairs of a batch of windows. Instruction rows carry a `loss_mask`: targets outside
    it (prompts, padding) become the index cross-entropy ignores, so only responses are learned."""
    tokens = batch["tokens"].to(device=device, dtype=torch.int64, non_blocking=True)
    targets = tokens[:, 1:]
    if "loss_mask" in batch:
        keep = batch["loss_mask"][:, 1:].to(device=device, non_blocking=True).bool()
        targets = targets.masked_fill(~keep, IGNORE_INDEX)
    return tokens[:, :-1], targets


def train_loop_per_worker(payload: dict) -> None:
    config = Config.model_validate(payload["config"])
    train, seq_len, run_dir = config.train, payload["seq_len"], payload["run_dir"]

    def console(line: str) -> None:  # a Tune trial's lines start with its name
        say(payload["console_prefix"] + line)

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(train.cpus_per_worker)))

    checkpoint = _resume_point(run_dir, warn=console)
    init = payload["init"] if checkpoint is None else None
    model, bytes_read = build_model(config, device, init)
    flops_per_token = unwrap(model).flops_per_token(seq_len)
    if init is not None:
        _record_start(run_dir, init, bytes_read, rank, world)
    groups = [{**group, "params": [p for p in group["params"] if p.requires_grad]}
              for group in unwrap(model).param_groups(train.weight_decay)]
    optimizer = torch.optim.AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2), fused=device.type == "cuda")
    accumulate, tokens_per_step, total_steps = step_plan(train, seq_len, world)

    state = {"step": 0, "tokens": 0, "epoch": 0, "consumed": 0, "train_seconds": 0.0, "world_size": world}
    if checkpoint:
        with checkpoint.as_directory() as directory:
            state = {**load_checkpoint(directory, model, optimizer, rank), "world_size": world}
    else:
        torch.manual_seed(train.seed + 1 + rank)  # each rank its own dropout stream
    batches = Batches(shard_of("train", payload, rank, world), train.batch_size, train.shuffle_buffer, train.seed,
                      state["epoch"], state["consumed"])
    val_shard = shard_of("val", payload, rank, world) if payload["has_val"] else None
    budget_seconds = train.max_minutes * 60 if train.max_minutes else None
    log = RunLog(run_dir, total_steps, budget_seconds) if rank == 0 else None
    nodes = [None] * world  # Ray node ids: Train's node rank goes by IP, and nodes may share one
    dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    if log:
        nodes = len(set(nodes))
        console(f"{world} worker{'s' * (world > 1)} on {nodes} node{'s' * (nodes > 1)}, "
                f"{train.batch_size} x {seq_len} tokens each per micro-step, {tokens_per_step:,} tokens per step")
    if log and checkpoint:
        console(f"resumed from step {state['step']} ({checkpoint.path})")
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and train.strategy == "ddp"
                else contextlib.nullcontext())
    peak = peak_flops(device)
    if payload["eval_at_start"] and state["step"] == 0 and val_shard is not None:
        before = {"step": 0, **_evaluate(unwrap(model), val_shard, train, device, autocast, payload["val_tokens_per_byte"])}
        if log:
            log.write(before)
            console(f"eval before training | val loss {before['val_loss']:.4f} | ppl {before['val_ppl']:.2f} | bpb {before['val_bpb']:.4f}")
    clock = TrainingClock(state["train_seconds"], state["step"], budget_seconds, device)
    interval_started, interval_step = time.perf_counter(), state["step"]

    finished = state["step"] >= total_steps
    while not finished:
        progress = max(state["step"] / total_steps, state["train_seconds"] / budget_seconds if budget_seconds else 0.0)
        lr = learning_rate(state["step"], progress, train)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        for micro in range(accumulate):
            inputs, targets = inputs_and_targets(batches.next(), device)
            with gradient_sync(model, enabled=micro == accumulate - 1), autocast:
                loss = model(inputs, targets)[1]  # not the logits: held, they would outlive the next forward
                (loss / accumulate).backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.update(step=state["step"] + 1, tokens=state["tokens"] + tokens_per_step, epoch=batches.epoch,
                     consumed=batches.consumed)
        if rank == 0 and state["step"] == train.fault_at_step:
            _inject_fault_once(run_dir, train.fault_at_step)

        step = state["step"]
        state["train_seconds"] = clock.seconds(step, synchronise=step % train.log_every == 0)
        finished = (step >= total_steps or (train.max_tokens is not None and state["tokens"] >= train.max_tokens)
                    or (budget_seconds is not None and state["train_seconds"] >= budget_seconds))
        metrics = {}
        if step % train.log_every == 0 or finished:
            step_seconds = _mean_step_seconds(interval_started, step - interval_step, device)
            metrics = _step_metrics(state, loss_sum / accumulate, grad_norm, lr, tokens_per_step, step_seconds,
                                    flops_per_token, peak, world)
        if val_shard is not None and (step % train.eval_every == 0 or finished):
            metrics.update(_evaluate(unwrap(model), val_shard, train, device, autocast, payload["val_tokens_per_byte"]))
        if log and metrics:
            metrics.setdefault("step", step)
            log.write(metrics)
            if "loss" in metrics:
                console(log.progress(metrics, step_seconds))
            if "val_loss" in metrics:
                console(f"eval step {step} | val loss {metrics['val_loss']:.4f} | ppl {metrics['val_ppl']:.2f} | "
                        f"bpb {metrics['val_bpb']:.4f}")
        if step % train.checkpoint_every == 0 or finished:
            if log:
                log.upload_events()
            with tempfile.TemporaryDirectory() as directory:
                save_checkpoint(directory, model, optimizer, state, rank)
                ray.train.report({"step": step, **metrics}, checkpoint=ray.train.Checkpoint.from_directory(directory),
                                 checkpoint_dir_name=checkpoint_name(step))
        elif "val_loss" in metrics:
            ray.train.report({"step": step, **metrics})
        if metrics or step % train.checkpoint_every == 0:
            interval_started, interval_step = time.perf_counter(), step
    if log:
        log.close()


def build_model(config: Config, device: torch.device, init: ModelSource | None = None) -> tuple[torch.nn.Module, int | None]:
    """The worker's model, parallelized, with its starting weights: seeded random ones, or `init`'s
    (and the bytes read of a Hugging Face folder). With FSDP from a Hugging Face folder the model
    is built on the meta device, sharded, given memory for its own shards only and filled with
    their rows: a model larger than one worker's memory loads."""
    train = config.train
    sharded_read = init is not None and init.hf and train.strategy == "fsdp"
    torch.manual_seed(train.seed)  # identical initial weights on every rank
    with torch.device("meta") if sharded_read else contextlib.nullcontext():
        model = GPT(config.model)
    model.loss_chunk_rows = train.loss_chunk_rows
    model = model if sharded_read else model.to(device)
    bytes_read = load_source_weights(model, init) if init is not None and not sharded_read else None
    if config.finetune.method == "lora":
        apply_lora(model, config.finetune.lora)
    model = parallelize(model, train.strategy, device, compile=train.compile,
                        activation_checkpointing=train.activation_checkpointing)
    if sharded_read:
        model.to_empty(device=device)
        with torch.no_grad():
            unwrap(model).init_weights()  # the RoPE tables (the weights come next)
            reset_lora(model)
        bytes_read = load_source_weights(model, init)
    return model, bytes_read


def _mean_step_seconds(started: float, steps: int, device) -> float:
    """Mean step time since the last logged step. On a GPU the clock waits for the device first:
    kernels run asynchronously, so one step's launch time says little about its cost."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / max(steps, 1)


def _resume_point(run_dir: str, warn) -> ray.train.Checkpoint | None:
    """The run folder's newest whole checkpoint, checksums verified. Ray Train's registered one is
    not taken as is: a crash right after a checkpoint can leave it written but not yet registered,
    and a registered one that is corrupt must be passed over. Rank 0 alone reads the files to
    verify them and tells the others its choice, so a resume hashes the checkpoint once, not once
    per worker."""
    found = [latest_complete(run_dir, warn=warn) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(found, src=0)
    found = found[0]
    if found is None:
        return None
    fs, inner = storage.filesystem(found)
    return ray.train.Checkpoint(path=inner, filesystem=fs)


def _record_start(run_dir: str, init: ModelSource, bytes_read: int | None, rank: int, world: int) -> None:
    """<run>/start.json: the weights the run started from and the bytes each worker read of them
    (FSDP workers reading a Hugging Face folder read their own shards' rows only)."""
    per_worker = [None] * world
    dist.all_gather_object(per_worker, bytes_read)
    if rank == 0:
        storage.write_bytes(storage.join(run_dir, START), json.dumps(
            {"folder": init.folder, "checkpoint": init.checkpoint, "hugging_face": init.hf,
             "bytes_read_per_worker": per_worker}, indent=2).encode())


def _step_metrics(state, loss, grad_norm, lr, tokens_per_step, step_seconds, flops_per_token, peak, world) -> dict:
    """The global view of a step: loss averaged over all workers (one all-reduce, on log steps)."""
    dist.all_reduce(loss)  # a sum: gloo has no average
    loss = loss / world
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    tokens_per_s = tokens_per_step / step_seconds
    return {
        "step": state["step"], "loss": loss.item(), "lr": lr, "grad_norm": grad_norm.item(), "tokens": state["tokens"],
        "tokens_per_s": tokens_per_s, "step_ms": step_seconds * 1e3, "train_seconds": round(state["train_seconds"], 3),
        "mfu": flops_per_token * tokens_per_s / (peak * world) if peak else None, "workers": world,
    }


def _evaluate(model, shard, train: TrainConfig, device, autocast, tokens_per_byte: float) -> dict:
    """Mean next-token loss over this worker's share of the val split, summed over all workers;
    bits per byte = loss / ln 2 * tokens per byte of the split (comparable across tokenizers)."""
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.no_grad():
        for i, batch in enumerate(shard.iter_torch_batches(batch_size=train.batch_size)):
            if train.eval_batches is not None and i >= train.eval_batches:
                break
            inputs, targets = inputs_and_targets(batch, device)
            count = (targets != IGNORE_INDEX).sum()
            if not count:
                continue
            with autocast:
                loss = model(inputs, targets)[1]  # not the logits: held, they would outlive the next forward
            totals += torch.stack([loss.double() * count, count.double()])
    model.train()
    dist.all_reduce(totals)
    val_loss = (totals[0] / totals[1]).item() if totals[1] else float("nan")
    return {"val_loss": val_loss, "val_ppl": math.exp(val_loss), "val_bpb": val_loss / math.log(2) * tokens_per_byte}


class TrainingClock:
    """The training seconds so far. Without a time budget, this worker's. With one, they drive the
    schedule and the stop, which must be the same on every worker, yet a broadcast per step would
    make each step wait for the host: so rank 0's clock is sent to all on log steps only (which
    wait for the loss anyway), and between them every worker counts on at the mean step time of
    the last interval, the same numbers everywhere."""

    def __init__(self, seconds_before: float, step: int, budget_seconds: float | None, device):
        self.started, self.seconds_before = time.perf_counter(), seconds_before
        self.budget_seconds, self.device = budget_seconds, device
        self.synced_seconds, self.synced_step, self.step_seconds = seconds_before, step, 0.0

    def seconds(self, step: int, synchronise: bool) -> float:
        local = self.seconds_before + time.perf_counter() - self.started
        if self.budget_seconds is None:
            return local
        if not synchronise:
            return self.synced_seconds + (step - self.synced_step) * self.step_seconds
        clock = torch.tensor(local, dtype=torch.float64, device=self.device)
        dist.broadcast(clock, src=0)
        shared = clock.item()
        self.step_seconds = (shared - self.synced_seconds) / max(1, step - self.synced_step)
        self.synced_seconds, self.synced_step = shared, step
        return shared


def _inject_fault_once(run_dir: str, step: int) -> None:
    """train.fault_at_step, for tests: the rank-0 process dies once at that step; the marker keeps
    it to once (per step, so a resubmitted run may die again at a later one)."""
    marker = storage.join(run_dir, f"{FAULT_MARKER}-{step}")
    if not storage.exists(marker):
        storage.write_bytes(marker, b"")
        say("fault_at_step: rank 0 exits now (test fault injection)")
        os._exit(1)
