"""Byte-level BPE (GPT-2 style) with `tokenizers`: trained on a sample, or loaded from a file.

Byte-level means every input is encodable (no unknown token) and decode(encode(x)) == x.
`<|endoftext|>` separates documents in the packed token stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from raylm import storage
from raylm.errors import RaylmError

EOS = "<|endoftext|>"


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def load_tokenizer_json(path: str) -> str:
    """The JSON text of a tokenizer file, checked to parse and to know `<|endoftext|>`."""
    text = storage.read_bytes(storage.absolute(path)).decode("utf-8", errors="replace")
    try:
        tokenizer = Tokenizer.from_str(text)
    except Exception as err:  # tokenizers raises plain Exception subclasses
        raise RaylmError(f"{path} is not a tokenizers JSON file: {str(err).splitlines()[0]}") from None
    if tokenizer.token_to_id(EOS) is None:
        raise RaylmError(f"tokenizer {path} has no {EOS} token; add it as a special token or train one")
    return text


def vocabulary(tokenizer_json: str) -> tuple[int, int]:
    """(vocabulary size, id of <|endoftext|>)."""
    tokenizer = Tokenizer.from_str(tokenizer_json)
    return tokenizer.get_vocab_size(), tokenizer.token_to_id(EOS)


def fingerprint(tokenizer_json: str) -> str:
    """sha256 of the tokenizer file: what a later stage compares to refuse a mismatched dataset."""
    return hashlib.sha256(tokenizer_json.encode()).hexdigest()


def token_dtype(vocab_size: int) -> str:
    if vocab_size <= 2**16:
        return "uint16"
    if vocab_size <= 2**32:
        return "uint32"
    raise RaylmError(f"vocabulary of {vocab_size} tokens does not fit 32-bit token ids")
