"""Instruction data for fine-tuning: JSONL prompt/response pairs as fixed-length token rows with a
loss mask, so the model learns to answer and not to predict the prompts it is given.

A row is `<|endoftext|> prompt response <|endoftext|>` (a document boundary first, as in
pretraining), cut to seq_len + 1 tokens and padded with `<|endoftext|>`; `loss_mask` is 1 on the
response tokens and the closing separator, the only targets the loss sees. Instruction sets are small
(thousands to a few hundred thousand pairs), so the driver tokenizes them in one batch call.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from tokenizers import Tokenizer

from raylm import storage
from raylm.data.tokenizer import EOS
from raylm.errors import RaylmError


@dataclass
class InstructionSet:
    train: pa.Table
    val: pa.Table
    skipped: Counter = field(default_factory=Counter)
    val_tokens: int = 0  # loss tokens of the val rows, and the UTF-8 bytes they encode: bits per byte
    val_bytes: int = 0


def read_pairs(paths: list[str], prompt_field: str, response_field: str) -> tuple[list[tuple[str, str, str]], Counter]:
    """(id, prompt, response) of every usable line; unusable lines are counted by reason."""
    pairs, skipped = [], Counter()
    for path in paths:
        absolute = storage.absolute(path)
        if not storage.exists(absolute):
            raise RaylmError(f"finetune.instructions: {path} does not exist")
        for number, raw in enumerate(storage.read_bytes(absolute).splitlines(), 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (UnicodeDecodeError, ValueError):
                skipped["malformed_json"] += 1
                continue
            if not isinstance(record, dict):
                skipped["non_object_json"] += 1
                continue
            prompt, response = record.get(prompt_field), record.get(response_field)
            if prompt is None or response is None:
                skipped["missing_field"] += 1
            elif not isinstance(prompt, str) or not isinstance(response, str) or not response:
                skipped["non_string_or_empty_field"] += 1
            else:
                pairs.append((f"{path}:{number}", prompt, response))
    return pairs, skipped


def encode_pairs(pairs: list[tuple[str, str]], tokenizer: Tokenizer, seq_len: int) -> tuple[np.ndarray, np.ndarray, list[bool]]:
    """Token rows [N, seq_len + 1], loss masks alike, and which pairs fit (a prompt that fills the
    window leaves no response token to learn from)."""
    eos = tokenizer.token_to_id(EOS)
    prompts = tokenizer.encode_batch_fast([p for p, _ in pairs], add_special_tokens=False)
    responses = tokenizer.encode_batch_fast([r for _, r in pairs], add_special_tokens=False)
    width = seq_len + 1
    tokens = np.full((len(pairs), width), eos, dtype=np.int64)
    mask = np.zeros((len(pairs), width), dtype=np.uint8)
    fits = []
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        head = [eos, *prompt.ids]
        tail = [*response.ids, eos][: max(0, width - len(head))]
        fits.append(bool(tail))
        if tail:
            tokens[row, : len(head) + len(tail)] = head + tail
            mask[row, len(head) : len(head) + len(tail)] = 1
    return tokens, mask, fits


def load_instructions(paths: list[str], tokenizer_json: str, seq_len: int, prompt_field: str, response_field: str,
                      val_fraction: float, seed: int, min_val: int = 1) -> InstructionSet:
    """Rows for training and validation: the val rows are the pairs with the lowest hash of their
    id (file and line), at least `min_val` (one per training worker), so the split is the same on
    every run."""
    pairs, skipped = read_pairs(paths, prompt_field, response_field)
    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokens, mask, fits = encode_pairs([(p, r) for _, p, r in pairs], tokenizer, seq_len)
    skipped["prompt_too_long"] += fits.count(False)
    keep = [i for i, ok in enumerate(fits) if ok]
    n_val = max(min_val, round(len(keep) * val_fraction))
    if len(keep) <= n_val:
        raise RaylmError(f"finetune.instructions: {len(keep)} usable prompt/response pairs in {', '.join(paths)}, "
                         f"not enough to train and validate on {n_val}; skipped {dict(+skipped)}")
    by_hash = sorted(keep, key=lambda i: hashlib.sha256(f"{seed}:{pairs[i][0]}".encode()).digest())
    val, train = sorted(by_hash[:n_val]), sorted(by_hash[n_val:])
    response_bytes = sum(len(pairs[i][2].encode()) for i in val)
    return InstructionSet(_table(tokens[train], mask[train]), _table(tokens[val], mask[val]), +skipped,
                          int(mask[val].sum()), response_bytes)


def _table(tokens: np.ndarray, mask: np.ndarray) -> pa.Table:
    width = tokens.shape[1]
    return pa.table({
        "tokens": pa.FixedSizeListArray.from_arrays(pa.array(tokens.ravel()), width),
        "loss_mask": pa.FixedSizeListArray.from_arrays(pa.array(mask.ravel()), width),
    })
