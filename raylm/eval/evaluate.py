"""`raylm evaluate`: held-out loss, perplexity and bits per byte of a run's latest checkpoint.

On a prepared folder it scores the test split (val if test is empty); on text files it tokenizes
them with the run's own tokenizer and scores every token once, so bits per byte there is exact:
total nats / ln 2 / UTF-8 bytes of the files. Next to the model it reports a unigram baseline, the
score of knowing nothing but token frequencies, so a user can see how much the model learned.

A few windows are scored in this process (no Ray start); more than RAY_WINDOWS, or an explicit
number of workers, are scored by Ray Data actors that load the model once each, and the driver
only sums one small row per batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import ray.data
import torch

from raylm import runtime, storage
from raylm.data.manifest import has_manifest, read_manifest
from raylm.data.pack import as_model_rows, model_rows, windows_array
from raylm.data.tokenizer import TokenizerFiles, encode_documents
from raylm.errors import RaylmError
from raylm.model.gpt import GPT
from raylm.train.checkpoint import load_model
from raylm.train.schedule import rows_per_window
from raylm.train.trainer import DATA_CPUS

BATCH = 16  # windows per forward pass
RAY_WINDOWS = 4096  # more windows than this are scored on Ray
# Windows per Ray Data batch: each batch returns one row with a vocabulary-sized token histogram,
# which stays small next to this many windows of data.
RAY_BATCH = 256


@dataclass(frozen=True)
class Heldout:
    """The windows to score (seq_len + 1 tokens, each predicting all but its first), in memory (text
    files) or in a prepared split's Parquet shards, and the tokens and UTF-8 bytes of the text they
    come from: their ratio turns nats per token into bits per byte."""

    what: str
    num_windows: int
    tokens: int
    bytes: int
    windows: list[np.ndarray] | None = None
    shards: list[str] | None = None
    block_size: int | None = None  # shards' windows are cut into rows of this context, as in training

    def read(self) -> list[np.ndarray]:
        if self.windows is not None:
            return self.windows
        return [window for shard in self.shards for window in self._read_shard(shard)]

    def _read_shard(self, path: str) -> np.ndarray:
        fs, inner = storage.filesystem(path)
        windows = windows_array(pq.read_table(inner, filesystem=fs).column("tokens"))
        return model_rows(windows, self.block_size) if self.block_size else windows

    def dataset(self) -> ray.data.Dataset:
        """A `tokens` column read by the cluster, not the driver (except text windows, tokenized here)."""
        if self.windows is not None:
            return ray.data.from_items([{"tokens": window} for window in self.windows])
        dataset = ray.data.read_parquet(self.shards, filesystem=storage.filesystem(self.shards[0])[0],
                                        ray_remote_args=runtime.data_task(1))
        if self.block_size:
            dataset = dataset.map_batches(as_model_rows, fn_kwargs={"block_size": self.block_size}, batch_format="pyarrow",
                                          **runtime.data_task(1))
        return dataset


@torch.no_grad()
def _score(model: GPT, windows: list[np.ndarray]) -> tuple[float, int, np.ndarray]:
    """Summed nats, number of predicted tokens and their histogram (for the unigram baseline) over
    windows."""
    nats, count = 0.0, 0
    histogram = np.zeros(model.vocab_size, dtype=np.int64)
    for start in range(0, len(windows), BATCH):
        for length in sorted({len(w) for w in windows[start : start + BATCH]}):
            same = [w for w in windows[start : start + BATCH] if len(w) == length]
            tokens = torch.from_numpy(np.stack(same).astype(np.int64))
            targets = tokens[:, 1:]
            _, loss = model(tokens[:, :-1], targets)
            nats += loss.item() * targets.numel()
            count += targets.numel()
            histogram += np.bincount(targets.flatten().numpy(), minlength=model.vocab_size)
    return nats, count, histogram


class _Scorer:
    """A Ray Data actor: loads the checkpoint once, then scores batches of windows into one row each."""

    def __init__(self, run_dir: str):
        self.model = load_model(run_dir)[0]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        nats, count, histogram = _score(self.model, list(batch["tokens"]))
        return {"nats": np.array([nats]), "count": np.array([count]), "histogram": histogram[None]}


def _score_on_ray(run_dir: str, heldout: Heldout, workers: int) -> tuple[float, int, np.ndarray]:
    """_score's totals from `workers` actors. On a small cluster each reserves less than a CPU, so
    that Ray Data's read tasks (a whole CPU each) still get one: a pool holding every CPU waits forever."""
    cpus = max(0.1, min(1.0, (runtime.data_cpus() - DATA_CPUS) / workers))
    rows = heldout.dataset().map_batches(_Scorer, fn_constructor_args=(run_dir,), batch_size=RAY_BATCH,
                                         batch_format="numpy", concurrency=workers, **runtime.data_task(cpus))
    nats, count, histogram = 0.0, 0, 0
    for batch in rows.iter_batches(batch_format="numpy", batch_size=None):
        nats += float(batch["nats"].sum())
        count += int(batch["count"].sum())
        histogram = histogram + batch["histogram"].sum(axis=0)
    return nats, count, histogram


def _unigram_entropy(histogram: np.ndarray) -> float:
    """Nats per token of the best model that knows only how often each token occurs: the entropy of
    the scored tokens' own frequencies (fit on those very tokens, so a slightly flattering bar). A
    checkpoint that learned nothing beyond token frequencies scores this; learning shows below it."""
    p = histogram[histogram > 0] / histogram.sum()
    return float(-(p * np.log(p)).sum())


def _metrics(nats_per_token: float, heldout: Heldout) -> dict:
    return {"loss": nats_per_token, "perplexity": math.exp(nats_per_token),
            "bits_per_byte": nats_per_token / math.log(2) * heldout.tokens / heldout.bytes}


def _prepared_split(path: str, block_size: int, tokenizer: TokenizerFiles) -> Heldout:
    """The test split of a prepared folder, else its val split; windows longer than the model's
    context are scored as rows of it, as training reads them."""
    manifest = read_manifest(path)
    if manifest["tokenizer"]["sha256"] != tokenizer.sha256:
        raise RaylmError(f"{path} was prepared with another tokenizer than the model's: its token ids mean other text; "
                         "prepare it with data.tokenizer.path=<the model's folder>/tokenizer.json, or give text files")
    split = "test" if manifest["splits"]["test"]["sequences"] else "val"
    stats = manifest["splits"][split]
    if not stats["sequences"]:
        raise RaylmError(f"{path} has no test or val sequences to evaluate on")
    rows = rows_per_window(manifest["seq_len"], block_size, f"{path}: its seq_len ({manifest['seq_len']})",
                           "prepare it with data.seq_len equal to it or a multiple of it")
    # The split's bytes per token, as in training's bits per byte.
    return Heldout(f"{path} ({split} split)", stats["sequences"] * rows, stats["tokens"], stats["bytes"],
                   shards=[storage.join(storage.absolute(path), shard) for shard in stats["shards"]],
                   block_size=block_size if rows > 1 else None)


def _text_files(paths: list[str], tokenizer: TokenizerFiles, seq_len: int) -> Heldout:
    """The files' tokens, each file a document as in training (end-of-text after it), cut into the
    windows the model trained on (seq_len + 1 tokens, overlapping by one so every token but the
    first is predicted once)."""
    texts = [storage.read_bytes(storage.absolute(p)).decode("utf-8", errors="replace") for p in paths]
    stream = np.array([t for ids in encode_documents(tokenizer.codec, texts) for t in [*ids, tokenizer.eos_id]])
    if len(stream) < 2:
        raise RaylmError(f"no text to evaluate in {', '.join(paths)}")
    windows = [stream[i : i + seq_len + 1] for i in range(0, len(stream) - 1, seq_len)]
    return Heldout(", ".join(paths), len(windows), len(stream) - 1, sum(len(t.encode()) for t in texts), windows=windows)


def evaluate(run_dir: str, inputs: list[str], workers: int | None = None, address: str | None = None,
             num_cpus: int | None = None) -> dict:
    """`workers` scores on Ray with that many actors even when the data is small (default: one per
    CPU, above RAY_WINDOWS windows); `address` and `num_cpus` say which Ray to join or start then.
    `workers` in the report is 0 when this process scored alone."""
    if workers is not None and workers < 1:
        raise RaylmError(f"the number of workers must be at least 1, got {workers}")
    model, source = load_model(run_dir)
    config = source.config
    if not inputs and source.hf:
        raise RaylmError(f"{run_dir} is a Hugging Face model folder, which names no data: give text files or a prepared folder")
    if not inputs:
        inputs = [config.train.data]
    if len(inputs) == 1 and has_manifest(inputs[0]):
        heldout = _prepared_split(inputs[0], config.model.block_size, source.tokenizer)
    else:
        heldout = _text_files(inputs, source.tokenizer, config.data.seq_len)
    if workers is None and heldout.num_windows <= RAY_WINDOWS:
        nats, count, histogram = _score(model, heldout.read())
    else:
        runtime.init_ray(address, num_cpus)
        workers = workers or max(1, int(runtime.data_cpus()))
        nats, count, histogram = _score_on_ray(storage.absolute(run_dir), heldout, workers)
    return {
        "checkpoint": source.checkpoint,
        "data": heldout.what,
        **_metrics(nats / count, heldout),
        "tokens": count,
        "bytes": heldout.bytes,
        "baseline": _metrics(_unigram_entropy(histogram), heldout),
        "workers": workers or 0,
    }
