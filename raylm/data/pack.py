"""Tokenize, pack and write: documents become fixed windows of `seq_len + 1` token ids.

Each document is followed by its tokenizer's end-of-text token and the stream is cut into windows with no padding.
A batch's leftover (< one window) is returned instead of written; `write_tail_shards` packs all
leftovers of a split together at the end, so at most `seq_len` tokens per split are not written,
and the manifest counts them.
"""

from __future__ import annotations

import itertools
import os
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raylm import storage
from raylm.data.tokenizer import TokenizerFiles, encode_documents

SPLITS = ("train", "val", "test")
# A dropped document keeps the start of its text (the rest is counted in dropped_bytes and freed):
# rejected/ shows it, and `raylm report` quotes it.
REJECTED_HEAD_CHARS = 240
TAIL_COLUMNS = {split: f"tail_{split}" for split in SPLITS}


def shard_name(split: str, key: int | str) -> str:
    return f"{split}/part-{key:016x}.parquet" if isinstance(key, int) else f"{split}/part-{key}.parquet"


def windows_table(stream: np.ndarray, window: int) -> pa.Table:
    """Full windows as a `tokens: fixed_size_list<uint16|uint32>[window]` column."""
    flat = pa.array(stream[: len(stream) // window * window])
    return pa.table({"tokens": pa.FixedSizeListArray.from_arrays(flat, window)})


def windows_array(tokens: pa.ChunkedArray) -> np.ndarray:
    """A `tokens` column of fixed-size windows as a (windows, window length) array."""
    tokens = tokens.combine_chunks()
    return tokens.flatten().to_numpy().reshape(len(tokens), tokens.type.list_size)


def as_model_rows(table: pa.Table, block_size: int) -> pa.Table:
    """A table of windows as a table of model rows (`model_rows`)."""
    return windows_table(model_rows(windows_array(table.column("tokens")), block_size).reshape(-1), block_size + 1)


def model_rows(windows: np.ndarray, block_size: int) -> np.ndarray:
    """Windows of k * block_size + 1 tokens as rows of block_size + 1 that overlap by one token:
    a row's inputs are block_size tokens and its targets the same shifted by one, so every token
    a window predicts is predicted once, by a row of the model's context. A window is k rows."""
    rows_per_window = (windows.shape[1] - 1) // block_size
    starts = np.arange(rows_per_window) * block_size
    return windows[:, starts[:, None] + np.arange(block_size + 1)].reshape(-1, block_size + 1)


def write_table(table: pa.Table, path: str) -> None:
    fs, inner = storage.filesystem(path)
    fs.create_dir(inner.rpartition("/")[0], recursive=True)
    pq.write_table(table, inner, filesystem=fs, compression="zstd")


class TokenizeAndWrite:
    """Ray Data actor: loads the tokenizer once, writes one shard per split for each batch, and
    returns one row of statistics (plus the unwritten leftover tokens) per batch."""

    def __init__(self, tokenizer: TokenizerFiles, seq_len: int, output: str, dtype: str, clock=None):
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one actor per CPU: no Rayon threads
        self.tokenizer = tokenizer.codec
        self.eos = tokenizer.eos_id
        self.window = seq_len + 1
        self.output = output
        self.dtype = np.dtype(dtype)
        self.clock = clock

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        key = pc.min(batch.column("order")).as_py()
        kept = pc.equal(batch.column("reason"), "")
        rejected = batch.filter(pc.invert(kept))
        by_reason = rejected.group_by("reason").aggregate([("reason", "count"), ("dropped_bytes", "sum")]).to_pylist()
        stats = {
            "dropped": {row["reason"]: row["reason_count"] for row in by_reason},
            "dropped_bytes": {row["reason"]: row["dropped_bytes_sum"] for row in by_reason},
            "lines_removed": pc.sum(batch.column("lines_removed")).as_py() or 0,
            "lines_removed_bytes": pc.sum(batch.filter(kept).column("dropped_bytes")).as_py() or 0,
            "splits": {},
            "shards": [],
        }
        if rejected.num_rows:
            name = f"rejected/part-{key:016x}.parquet"
            ledger = rejected.select(["file", "index", "reason", "text"]).rename_columns(["file", "index", "reason", "head"])
            write_table(ledger, storage.join(self.output, name))
        tails = {}
        for split in SPLITS:
            texts = batch.filter(pc.and_(kept, pc.equal(batch.column("split"), split))).column("text")
            stream = self.encode(texts.to_pylist())
            table = windows_table(stream, self.window)
            if table.num_rows:
                name = shard_name(split, key)
                write_table(table, storage.join(self.output, name))
                stats["shards"].append(name)
            tails[TAIL_COLUMNS[split]] = [stream[table.num_rows * self.window :].tolist()]
            stats["splits"][split] = {
                "documents": len(texts),
                "bytes": pc.sum(pc.binary_length(texts)).as_py() or 0,
                "tokens": len(stream),
                "sequences": table.num_rows,
            }
        if self.clock is not None:
            self.clock.record.remote("tokenize_pack_write", time.perf_counter() - started, batch.num_rows,
                                     sum(s["bytes"] for s in stats["splits"].values()))
        return pa.table({"key": [key], "stats": [json.dumps(stats)], **tails})

    def encode(self, texts: list[str]) -> np.ndarray:
        """Token ids of all texts, each followed by the end-of-text token, as one array."""
        ids = encode_documents(self.tokenizer, texts)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)) + 1
        stream = np.full(int(lengths.sum()), self.eos, dtype=self.dtype)
        is_token = np.ones(len(stream), dtype=bool)
        is_token[np.cumsum(lengths) - 1] = False
        stream[is_token] = np.fromiter(itertools.chain.from_iterable(ids), dtype=self.dtype, count=int(lengths.sum()) - len(ids))
        return stream


def write_tail_shards(leftovers: dict[str, list[list[int]]], seq_len: int, output: str, dtype: str) -> dict:
    """Pack each split's batch leftovers (in batch order) into windows; write them as one shard."""
    result = {}
    for split, pieces in leftovers.items():
        stream = np.fromiter(itertools.chain.from_iterable(pieces), dtype=np.dtype(dtype))
        table = windows_table(stream, seq_len + 1)
        name = shard_name(split, "tail")
        if table.num_rows:
            write_table(table, storage.join(output, name))
        result[split] = {
            "sequences": table.num_rows,
            "tokens_not_written": len(stream) - table.num_rows * (seq_len + 1),
            "shard": name if table.num_rows else None,
        }
    return result
