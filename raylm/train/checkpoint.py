"""Checkpoints: model and optimizer through torch.distributed.checkpoint (DCP), plus training state.

DCP has every rank write only its own shards under distinct file names, so each worker can save
into its own local folder and Ray Train merges the folders into one checkpoint; DDP and FSDP2 runs
share the format, and a checkpoint loads on another number of workers or in a single process.
Every rank also writes the SHA-256 of each file it wrote: a checkpoint is used only when all of
them match, so a truncated or corrupted one is skipped (with a warning) for the one before it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from raylm import storage
from raylm.config import Config, DataConfig, ModelConfig, run_config
from raylm.data.tokenizer import TOKENIZER, TokenizerFiles
from raylm.errors import RaylmError
from raylm.model import hf
from raylm.model.gpt import GPT
from raylm.model.lora import apply_lora, merge_lora

WEIGHTS = "weights"
STATE = "state.json"
CHECKSUMS = "checksums-rank{rank}.json"
PREFIX = "checkpoint-"


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:07d}"


def latest_complete(run_dir: str, warn=None) -> str | None:
    """The newest checkpoint folder of a run that every rank finished writing and whose files all
    match their checksums; `warn(message)` hears of each newer one skipped as corrupt. (Ray Train
    registers checkpoints asynchronously, so after a crash the folder can be ahead of its registry.)"""
    fs, inner = storage.filesystem(run_dir)
    entries = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    for name in sorted((e.base_name for e in entries if e.base_name.startswith(PREFIX)), reverse=True):
        problem = _verify(fs, f"{inner}/{name}")
        if problem is None:
            return storage.join(run_dir, name)
        if problem != INCOMPLETE and warn:
            warn(f"checkpoint {storage.join(run_dir, name)} is corrupt ({problem}): skipped, using an older one")
    return None


INCOMPLETE = "incomplete"


def _verify(fs: pafs.FileSystem, folder: str) -> str | None:
    """None when the checkpoint is whole; else what is wrong with it (INCOMPLETE: still being
    written or abandoned part-way, which is not corruption)."""
    try:
        with fs.open_input_stream(f"{folder}/{STATE}") as f:
            world = json.loads(f.read())["world_size"]
    except (OSError, ValueError, KeyError):
        return INCOMPLETE
    for rank in range(world):
        try:
            with fs.open_input_stream(f"{folder}/{CHECKSUMS.format(rank=rank)}") as f:
                checksums = json.loads(f.read())
        except (OSError, ValueError):
            return INCOMPLETE
        for relative, expected in checksums.items():
            try:
                actual = _sha256(fs, f"{folder}/{relative}")
            except OSError:
                return f"{relative} is missing"
            if actual != expected:
                return f"{relative} does not match its checksum"
    return None


def _sha256(fs: pafs.FileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _write_checksums(directory: str, rank: int) -> None:
    """The SHA-256 of every file this rank wrote into its folder, written last: its presence means
    the rank finished."""
    checksums = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            checksums[os.path.relpath(path, directory)] = _sha256(pafs.LocalFileSystem(), path)
    with open(os.path.join(directory, CHECKSUMS.format(rank=rank)), "w") as f:
        json.dump(checksums, f, indent=0)


def saved_state(checkpoint: str) -> dict:
    """The training state rank 0 saved with a checkpoint: step, data position, world size."""
    return json.loads(storage.read_bytes(storage.join(checkpoint, STATE)))


def save_checkpoint(directory: str, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, rank: int) -> None:
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=os.path.join(directory, WEIGHTS))
    torch.save(_rng_states(), os.path.join(directory, f"rng-rank{rank}.pt"))
    if rank == 0:
        with open(os.path.join(directory, STATE), "w") as f:
            json.dump(state, f)
    _write_checksums(directory, rank)


def load_checkpoint(directory: str, model: nn.Module, optimizer: torch.optim.Optimizer, rank: int) -> dict:
    """Restore model, optimizer and this rank's RNG streams; return the training state."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    states = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(states, checkpoint_id=os.path.join(directory, WEIGHTS))
    set_state_dict(model, optimizer, model_state_dict=states["model"], optim_state_dict=states["optimizer"])
    rng_path = os.path.join(directory, f"rng-rank{rank}.pt")
    if os.path.exists(rng_path):  # absent when resuming on more workers than saved
        _set_rng_states(torch.load(rng_path, weights_only=False))
    with open(os.path.join(directory, STATE)) as f:
        return json.load(f)


def save_weights(directory: str, model: nn.Module, step: int) -> None:
    """Model weights only, from one process, as a checkpoint every reader of run folders loads."""
    with _single_process():
        dcp.save({"model": model.state_dict()}, checkpoint_id=os.path.join(directory, WEIGHTS))
    torch.save(_rng_states(), os.path.join(directory, "rng-rank0.pt"))
    with open(os.path.join(directory, STATE), "w") as f:
        json.dump({"step": step, "world_size": 1}, f)
    _write_checksums(directory, 0)


def load_weights(directory: str, model: nn.Module) -> None:
    """Model weights only, in one process without a process group (evaluation, generation)."""
    state = {"model": model.state_dict()}
    with _single_process():
        dcp.load(state, checkpoint_id=os.path.join(directory, WEIGHTS))
    model.load_state_dict(state["model"])


@contextlib.contextmanager
def _single_process():
    """DCP warns that it assumes a single process when no process group exists: that is the point here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def _set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


@dataclass(frozen=True)
class ModelSource:
    """A model to read or to start from: a run folder's latest complete checkpoint, or a Hugging
    Face model folder (Llama, Mistral, Qwen2 in safetensors; see raylm.model.hf)."""

    folder: str
    config: Config  # the run's; for a Hugging Face folder, the defaults around its model
    tokenizer: TokenizerFiles
    checkpoint: str  # the DCP checkpoint folder; the folder itself for a Hugging Face one
    hf: bool


def model_source(path: str, key: str) -> ModelSource:
    """What `path` holds, checked without reading any weights (a Hugging Face folder's safetensors
    headers are checked against its config.json); `key` names the setting in errors."""
    folder = storage.absolute(path)
    if hf.is_hf_folder(folder):
        model = ModelConfig(**hf.model_fields(hf.read_config(folder), path))
        if not storage.exists(storage.join(folder, TOKENIZER)):
            raise RaylmError(f"{key}: {path} has no {TOKENIZER}; raylm needs the fast tokenizer's file "
                             "(transformers writes it: AutoTokenizer.from_pretrained(...).save_pretrained(folder))")
        hf.SafetensorsFolder(folder).check(model)
        data = DataConfig(seq_len=min(DataConfig().seq_len, model.block_size))
        return ModelSource(folder, Config(model=model, data=data), TokenizerFiles.read(folder), folder, True)
    checkpoint = latest_complete(folder, warn=lambda message: print(f"raylm: warning: {message}", file=sys.stderr))
    if checkpoint is None:
        raise RaylmError(f"{key}: no checkpoint in {path}: give a run folder (<train.storage>/<train.name>) or a "
                         "Hugging Face model folder (config.json, safetensors, tokenizer.json)")
    return ModelSource(folder, run_config(folder), TokenizerFiles.read(folder), checkpoint, False)


def load_source_weights(model: nn.Module, source: ModelSource) -> int | None:
    """The source's weights into `model` (a plain or an FSDP2-sharded GPT); the bytes read of a
    Hugging Face folder, which is read by the rows each process holds. A DCP checkpoint is read
    whole into a plain model (None)."""
    if source.hf:
        return hf.load_into(model, source.checkpoint)
    with storage.local_dir(source.checkpoint) as local:
        load_weights(local, model)
    return None


def load_model(path: str, key: str = "--checkpoint") -> tuple[GPT, ModelSource]:
    """A run's latest complete checkpoint (LoRA adapters merged) or a Hugging Face folder as a
    plain model in this process, with where it came from: what evaluation, generation, reports and
    export read."""
    source = model_source(path, key)
    model = GPT(source.config.model)
    if source.config.finetune.method == "lora":  # its checkpoints hold the frozen weights and the adapters
        apply_lora(model, source.config.finetune.lora)
    load_source_weights(model, source)
    return merge_lora(model).eval(), source
