"""`raylm evaluate`: held-out loss, perplexity and bits per byte of a run's latest checkpoint.

On a prepared folder it scores the test split (val if test is empty); on text files it tokenizes
them with the run's own tokenizer and scores every token once, so bits per byte there is exact:
total nats / ln 2 / UTF-8 bytes of the files.
"""

from __future__ import annotations

import math
import tempfile

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
import yaml
from tokenizers import Tokenizer

from raylm import storage
from raylm.config import Config
from raylm.data.tokenizer import EOS
from raylm.errors import RaylmError
from raylm.model.gpt import GPT
from raylm.train.checkpoint import latest_complete, load_weights
from raylm.train.trainer import read_manifest

BATCH = 16


def load_model(run_dir: str) -> tuple[GPT, Tokenizer, Config, str]:
    run_dir = storage.absolute(run_dir)
    checkpoint = latest_complete(run_dir)
    if checkpoint is None:
        raise RaylmError(f"no checkpoint in {run_dir}: is it a run folder (<train.storage>/<train.name>)?")
    config = Config.model_validate(yaml.safe_load(storage.read_bytes(storage.join(run_dir, "config.yaml"))))
    tokenizer = Tokenizer.from_str(storage.read_bytes(storage.join(run_dir, "tokenizer.json")).decode())
    model = GPT(config.model)
    with tempfile.TemporaryDirectory() as local:
        if storage.is_remote(checkpoint):
            fs, inner = storage.filesystem(checkpoint)
            pafs.copy_files(inner, local, source_filesystem=fs)
            checkpoint_dir = local
        else:
            checkpoint_dir = checkpoint
        load_weights(checkpoint_dir, model)
    return model.eval(), tokenizer, config, checkpoint


@torch.no_grad()
def _score(model: GPT, windows: list[np.ndarray]) -> tuple[float, int]:
    """Summed nats and number of predicted tokens over windows (each predicts all but its first)."""
    nats, count = 0.0, 0
    for start in range(0, len(windows), BATCH):
        for length in sorted({len(w) for w in windows[start : start + BATCH]}):
            same = [w for w in windows[start : start + BATCH] if len(w) == length]
            tokens = torch.from_numpy(np.stack(same).astype(np.int64))
            _, loss = model(tokens[:, :-1], tokens[:, 1:])
            nats += loss.item() * tokens[:, 1:].numel()
            count += tokens[:, 1:].numel()
    return nats, count


def _prepared_split(path: str) -> tuple[list[np.ndarray], int, int, str]:
    manifest = read_manifest(path)
    split = "test" if manifest["splits"]["test"]["sequences"] else "val"
    stats = manifest["splits"][split]
    if not stats["sequences"]:
        raise RaylmError(f"{path} has no test or val sequences to evaluate on")
    windows = []
    for shard in stats["shards"]:
        fs, inner = storage.filesystem(storage.join(storage.absolute(path), shard))
        windows.extend(np.asarray(row) for row in pq.read_table(inner, filesystem=fs).column("tokens").to_pylist())
    # The split's bytes per token, as in training's bits per byte.
    return windows, stats["tokens"], stats["bytes"], f"{path} ({split} split)"


def _text_files(paths: list[str], tokenizer: Tokenizer, seq_len: int) -> tuple[list[np.ndarray], int, int, str]:
    """The files' tokens, each file followed by EOS as in training, cut into the windows the model
    trained on (seq_len + 1 tokens, overlapping by one so every token but the first is predicted once)."""
    texts = [storage.read_bytes(storage.absolute(p)).decode("utf-8", errors="replace") for p in paths]
    eos = tokenizer.token_to_id(EOS)
    stream = np.array([t for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False) for t in [*e.ids, eos]])
    if len(stream) < 2:
        raise RaylmError(f"no text to evaluate in {', '.join(paths)}")
    windows = [stream[i : i + seq_len + 1] for i in range(0, len(stream) - 1, seq_len)]
    return windows, len(stream) - 1, sum(len(t.encode()) for t in texts), ", ".join(paths)


def evaluate(run_dir: str, inputs: list[str]) -> dict:
    model, tokenizer, config, checkpoint = load_model(run_dir)
    if not inputs:
        inputs = [config.train.data]
    if len(inputs) == 1 and storage.exists(storage.join(storage.absolute(inputs[0]), "manifest.json")):
        windows, tokens, nbytes, what = _prepared_split(inputs[0])
    else:
        windows, tokens, nbytes, what = _text_files(inputs, tokenizer, config.data.seq_len)
    nats, count = _score(model, windows)
    loss = nats / count
    return {
        "checkpoint": checkpoint,
        "data": what,
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": loss / math.log(2) * tokens / nbytes,
        "tokens": count,
        "bytes": nbytes,
    }
