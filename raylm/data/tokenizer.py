"""Byte-level BPE (GPT-2 style) with `tokenizers`: trained on a sample, or loaded from a file.

Byte-level means every input is encodable (no unknown token) and decode(encode(x)) == x.
Each document is encoded as its tokenizer's own post-processor has it (raylm's BPE adds nothing; a
Llama tokenizer puts its BOS first, as transformers does) and followed by the end-of-text token:
`<|endoftext|>` for raylm's tokenizers, the `eos_token` of its `tokenizer_config.json` for one
that came from a Hugging Face folder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from raylm import storage
from raylm.errors import RaylmError

EOS = "<|endoftext|>"
TOKENIZER, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, CHAT_TEMPLATE = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
HF_TOKENIZER_FILES = (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, CHAT_TEMPLATE)


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


@dataclass(frozen=True)
class TokenizerFiles:
    """A tokenizer as raylm keeps it beside prepared data and in runs: the text of its
    tokenizer.json and, for one from a Hugging Face folder, that folder's other tokenizer files
    (tokenizer_config.json with its end-of-text token, a chat template, ...), carried unchanged."""

    json: str
    hf_files: tuple[tuple[str, str], ...] = ()  # (file name, text), in HF_TOKENIZER_FILES order

    @classmethod
    def read(cls, folder: str) -> TokenizerFiles:
        """The tokenizer kept in a folder (prepared data, a run, a Hugging Face model)."""
        return load_tokenizer(storage.join(folder, TOKENIZER))

    def write(self, folder: str) -> None:
        storage.write_bytes(storage.join(folder, TOKENIZER), self.json.encode())
        for name, text in self.hf_files:
            storage.write_bytes(storage.join(folder, name), text.encode())

    @cached_property
    def codec(self) -> Tokenizer:
        """The parsed tokenizer, once per object (a Llama 3 tokenizer.json is 9 MB)."""
        return Tokenizer.from_str(self.json)

    @cached_property
    def _json_files(self) -> dict[str, dict]:
        return {name: json.loads(text) for name, text in self.hf_files if name.endswith(".json") and text}

    def _json_file(self, name: str) -> dict:
        return self._json_files.get(name, {})

    def special_token(self, key: str) -> str | None:
        """A named special token ("eos_token", ...) of a Hugging Face tokenizer's config files."""
        token = self._json_file(TOKENIZER_CONFIG).get(key) or self._json_file(SPECIAL_TOKENS_MAP).get(key)
        return token["content"] if isinstance(token, dict) else token  # transformers also writes AddedToken dicts

    @property
    def eos_token(self) -> str:
        return self.special_token("eos_token") or EOS

    @property
    def bos_token(self) -> str | None:
        """A Hugging Face tokenizer's own (or none); raylm's documents start after `<|endoftext|>`."""
        return self.special_token("bos_token") if self.hf_files else EOS

    @property
    def chat_template(self) -> str | None:
        """tokenizer_config.json's chat_template, else chat_template.jinja (transformers 5 writes that)."""
        template = self._json_file(TOKENIZER_CONFIG).get("chat_template") or dict(self.hf_files).get(CHAT_TEMPLATE)
        if isinstance(template, list):  # several named templates: the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        return template

    @property
    def eos_id(self) -> int | None:
        return self.codec.token_to_id(self.eos_token)

    @property
    def sha256(self) -> str:
        """What a later stage compares to refuse a dataset prepared with another tokenizer."""
        return fingerprint(self.json)


def load_tokenizer(path: str) -> TokenizerFiles:
    """A tokenizer.json (local or s3://) and the Hugging Face tokenizer files beside it, if any,
    checked to parse and to know their end-of-text token."""
    absolute = storage.absolute(path)
    text = storage.read_bytes(absolute).decode("utf-8", errors="replace")
    folder = storage.parent_and_name(absolute)[0]
    beside = [(name, storage.read_bytes(storage.join(folder, name)).decode()) for name in HF_TOKENIZER_FILES
              if storage.exists(storage.join(folder, name))]
    files = TokenizerFiles(text, tuple(beside))
    try:
        files.codec  # parsed here, once, for this error
    except Exception as err:  # tokenizers raises plain Exception subclasses
        raise RaylmError(f"{path} is not a tokenizers JSON file: {str(err).splitlines()[0]}") from None
    for name, content in beside:
        if name.endswith(".json"):
            try:
                json.loads(content)
            except ValueError:
                raise RaylmError(f"{storage.join(folder, name)} is not JSON") from None
    if files.eos_id is None:
        where = f"the eos_token of {folder}/{TOKENIZER_CONFIG}" if files.hf_files else "raylm's end-of-text token"
        raise RaylmError(f"tokenizer {path} has no {files.eos_token} token ({where}); add it as a special token or train one")
    return files


def encode_documents(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Each text's ids as the tokenizer's post-processor makes them, without the end-of-text token."""
    return [encoding.ids for encoding in tokenizer.encode_batch_fast(texts, add_special_tokens=True)]


def fingerprint(tokenizer_json: str) -> str:
    """sha256 of the tokenizer file: what a later stage compares to refuse a mismatched dataset."""
    return hashlib.sha256(tokenizer_json.encode()).hexdigest()


def token_dtype(vocab_size: int) -> str:
    if vocab_size <= 2**16:
        return "uint16"
    if vocab_size <= 2**32:
        return "uint32"
    raise RaylmError(f"vocabulary of {vocab_size} tokens does not fit 32-bit token ids")
