"""`raylm generate`: text sampled from a run's checkpoint, token by token over a KV cache.

Past block_size tokens the context slides: the most recent half of the block is kept and read again
(into a fresh cache), so a long generation costs a prefill every block_size / 2 tokens instead of
a full forward pass per token. Without the cache each token is a forward pass over that same
context, which makes the two paths agree token for token.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tokenizers import Tokenizer

from raylm.data.tokenizer import TokenizerFiles
from raylm.errors import RaylmError
from raylm.model.gpt import GPT


class TextStream:
    """Token ids in, text out as soon as it is final. Byte-level BPE can split a UTF-8 character
    across tokens, which decode to U+FFFD until the rest arrives, so a trailing U+FFFD is held
    back. The tokens are decoded from the last point where all their text was out, not from the
    start, so streaming stays linear in the length."""

    def __init__(self, tokenizer: Tokenizer, on_text: Callable[[str], None] | None):
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.pieces: list[str] = []
        self.pending: list[int] = []  # tokens whose text is not all out yet
        self.pending_sent = ""  # the part of their text that is

    def add(self, token: int) -> None:
        self.pending.append(token)
        text = self.tokenizer.decode(self.pending)
        self._send(text.rstrip("\ufffd"))
        if self.pending_sent == text:
            self.pending, self.pending_sent = [], ""

    def close(self) -> str:
        """Send what is held back (a U+FFFD is final at the end) and return the whole text."""
        self._send(self.tokenizer.decode(self.pending))
        return "".join(self.pieces)

    def _send(self, text: str) -> None:
        piece = text[len(self.pending_sent) :]
        if piece:
            self.pieces.append(piece)
            self.pending_sent = text
            if self.on_text is not None:
                self.on_text(piece)


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Refuse sampling settings that mean nothing, before any model is loaded."""
    if temperature < 0:
        raise RaylmError(f"temperature must be 0 (greedy) or more, got {temperature}")
    if top_k is not None and top_k < 0:
        raise RaylmError(f"top-k must be 0 (off) or more, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise RaylmError(f"top-p must be in (0, 1] (1 is off), got {top_p}")


def sample(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
           generator: torch.Generator) -> int:
    """A token from logits [vocab]: greedy at temperature 0, else from the softmax at `temperature`
    of the top_k most likely tokens, cut further to the smallest set holding top_p of the mass."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k:
        kth_largest = logits.topk(min(top_k, logits.numel())).values[-1]
        logits[logits < kth_largest] = -float("inf")
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token once those ranked above it hold top_p: the most likely one always stays.
        logits[order[probs.cumsum(-1) - probs >= top_p]] = -float("inf")
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


def generate(
    model: GPT,
    tokenizer: TokenizerFiles,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float | None = 0.95,
    seed: int = 0,
    on_text: Callable[[str], None] | None = None,
    use_cache: bool = True,
) -> str:
    """The continuation of `prompt` (without the prompt), up to max_new_tokens or the end-of-text token.

    Top-k of None or 0 and top-p of None or 1 turn those cuts off. on_text gets each new piece
    of text as soon as it is final; the pieces add up to the returned text. The prompt is encoded
    as a document starts in training (a Llama tokenizer puts its BOS first); an empty one, with
    nothing before it, starts after the end-of-text token.
    """
    check_sampling(temperature, top_k, top_p)
    codec, eos = tokenizer.codec, tokenizer.eos_id
    tokens = codec.encode(prompt).ids or [eos]
    block_size = model.config.block_size
    device = model.wte.weight.device
    generator = torch.Generator(device=device).manual_seed(seed)
    stream = TextStream(codec, on_text)
    start = 0  # the model reads tokens[start:]
    cache = model.new_cache(1) if use_cache else None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                if len(tokens) - start > block_size:
                    start = len(tokens) - block_size // 2
                    cache = model.new_cache(1) if use_cache else None
                unread = tokens[start + cache.length :] if cache is not None else tokens[start:]
                logits, _ = model(torch.tensor([unread], device=device), cache=cache)
                token = sample(logits[0, -1], temperature, top_k, top_p, generator)
                if token == eos:
                    break
                tokens.append(token)
                stream.add(token)
    finally:
        model.train(was_training)
    return stream.close()
