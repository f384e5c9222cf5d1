"""Instruction data for fine-tuning: JSONL prompt/response pairs as fixed-length token rows with a
loss mask, so the model learns to answer and not to predict the prompts it is given.

A plain row is `<end-of-text> prompt response <end-of-text>` (a document boundary first, as in
pretraining; the prompt encoded as a document starts), a chat row the conversation as the
tokenizer's chat template renders a user and an assistant turn; cut to seq_len + 1 tokens and
padded with the end-of-text token. `loss_mask` is 1 on the response tokens and what closes them
(the separator, the template's end of turn), the only targets the loss sees. Instruction sets are small
(thousands to a few hundred thousand pairs), so the driver tokenizes them in one batch call.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pyarrow as pa
from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from raylm import storage
from raylm.config import FinetuneConfig
from raylm.data.tokenizer import TokenizerFiles
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


def encode_pairs(pairs: list[tuple[str, str]], tokenizer: TokenizerFiles, seq_len: int, chat: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, list[bool], list[int]]:
    """Token rows [N, seq_len + 1], loss masks alike, which pairs fit (a prompt that fills the
    window leaves no response token to learn from) and the UTF-8 bytes of each pair's learned text."""
    codec, eos = tokenizer.codec, tokenizer.eos_id
    if chat:
        render = chat_renderer(tokenizer)
        rows = [_chat_row(codec, render, prompt, response) for prompt, response in pairs]
    else:
        prompts = codec.encode_batch_fast([p for p, _ in pairs], add_special_tokens=True)
        responses = codec.encode_batch_fast([r for _, r in pairs], add_special_tokens=False)
        rows = [([eos, *prompt.ids], [*response.ids, eos], len(text.encode()))
                for prompt, response, (_, text) in zip(prompts, responses, pairs)]
    width = seq_len + 1
    tokens = np.full((len(pairs), width), eos, dtype=np.int64)
    mask = np.zeros((len(pairs), width), dtype=np.uint8)
    fits = []
    for row, (head, tail, _) in enumerate(rows):
        tail = tail[: max(0, width - len(head))]
        fits.append(bool(tail))
        if tail:
            tokens[row, : len(head) + len(tail)] = head + tail
            mask[row, len(head) : len(head) + len(tail)] = 1
    return tokens, mask, fits, [learned for _, _, learned in rows]


def _chat_row(codec, render: Callable[[list[dict], bool], str], prompt: str, response: str
              ) -> tuple[list[int], list[int], int]:
    """(prompt tokens, assistant tokens, bytes of the assistant text) of a conversation rendered
    with the chat template: the assistant tokens are those of the text after the prompt rendered
    with its generation prompt (the reply and the template's end of turn)."""
    user, assistant = {"role": "user", "content": prompt}, {"role": "assistant", "content": response}
    head, text = render([user], True), render([user, assistant], False)
    if not text.startswith(head):
        raise RaylmError("finetune.format=chat: the chat template renders a conversation that does not start with its "
                         "prompt turn, so the assistant tokens cannot be told apart; use finetune.format=plain")
    encoding = codec.encode(text, add_special_tokens=False)  # a template writes its own special tokens
    split = next((i for i, (start, _) in enumerate(encoding.offsets) if start >= len(head)), len(encoding.ids))
    return encoding.ids[:split], encoding.ids[split:], len(text[len(head):].encode())


def chat_renderer(tokenizer: TokenizerFiles) -> Callable[[list[dict], bool], str]:
    """render(messages, add_generation_prompt): the tokenizer's Jinja chat template, compiled once
    and rendered the way transformers renders it (sandboxed, trimmed blocks, loop controls,
    `raise_exception`, the tokenizer's special tokens as variables)."""
    template = tokenizer.chat_template
    if template is None:
        raise RaylmError("finetune.format=chat: the tokenizer has no chat_template (its tokenizer_config.json, from a "
                         "Hugging Face folder); use finetune.format=plain")
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    environment.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    environment.globals["raise_exception"] = _template_error
    environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    tokens = {key: value for key in ("bos_token", "eos_token", "pad_token", "unk_token")
              if isinstance(value := tokenizer.special_token(key), str)}
    compiled = environment.from_string(template)

    def render(messages: list[dict], add_generation_prompt: bool) -> str:
        try:
            return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **tokens)
        except TemplateError as err:
            raise RaylmError(f"finetune.format=chat: the chat template failed: {err}") from None

    return render


def _template_error(message: str):
    raise TemplateError(message)


def load_instructions(paths: list[str], tokenizer: TokenizerFiles, seq_len: int, settings: FinetuneConfig,
                      val_fraction: float, seed: int, min_val: int = 1) -> InstructionSet:
    """Rows for training and validation: the val rows are the pairs with the lowest hash of their
    id (file and line), at least `min_val` (one per training worker), so the split is the same on
    every run."""
    pairs, skipped = read_pairs(paths, settings.prompt_field, settings.response_field)
    tokens, mask, fits, learned_bytes = encode_pairs([(p, r) for _, p, r in pairs], tokenizer, seq_len,
                                                     chat=settings.format == "chat")
    skipped["prompt_too_long"] += fits.count(False)
    keep = [i for i, ok in enumerate(fits) if ok]
    n_val = max(min_val, round(len(keep) * val_fraction))
    if len(keep) <= n_val:
        raise RaylmError(f"finetune.instructions: {len(keep)} usable prompt/response pairs in {', '.join(paths)}, "
                         f"not enough to train and validate on {n_val}; skipped {dict(+skipped)}")
    by_hash = sorted(keep, key=lambda i: hashlib.sha256(f"{seed}:{pairs[i][0]}".encode()).digest())
    val, train = sorted(by_hash[:n_val]), sorted(by_hash[n_val:])
    return InstructionSet(_table(tokens[train], mask[train]), _table(tokens[val], mask[val]), +skipped,
                          int(mask[val].sum()), sum(learned_bytes[i] for i in val))


def _table(tokens: np.ndarray, mask: np.ndarray) -> pa.Table:
    width = tokens.shape[1]
    return pa.table({
        "tokens": pa.FixedSizeListArray.from_arrays(pa.array(tokens.ravel()), width),
        "loss_mask": pa.FixedSizeListArray.from_arrays(pa.array(mask.ravel()), width),
    })
