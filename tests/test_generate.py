"""Generation: the KV cache against full forward passes, the sliding context, sampling, streaming
text, and `raylm generate` on a real run folder (made without Ray)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import shared_file
from raylm.cli import main
from raylm.config import ModelConfig
from raylm.errors import RaylmError
from raylm.train.checkpoint import load_model
from raylm.eval.generate import TextStream, generate, sample
from raylm.model.gpt import GPT
from run_kit import make_run

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "ROMEO:\nWhat say"


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return shared_file("tinyshakespeare.txt").read_text()[:20_000]


@pytest.fixture(scope="module", params=["rope", "learned"])
def run(request, shakespeare, tmp_path_factory):
    """A run folder per position scheme; the tiny preset's block_size is 128."""
    return make_run(tmp_path_factory.mktemp(request.param) / "run", shakespeare, f"model.positions={request.param}")


@pytest.fixture(scope="module")
def loaded(run):
    model, source = load_model(str(run))
    return model, source.tokenizer


# ------------------------------------------------------------------------------- the cache


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_cached_decoding_gives_the_logits_of_a_full_forward(positions):
    torch.manual_seed(0)
    model = GPT(ModelConfig(preset="tiny", vocab_size=300, positions=positions)).eval()
    idx = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(0))
    full, _ = model(idx)
    cache = model.new_cache(2)
    # A prefill, a chunk on top of it (the shifted causal mask), then one token at a time.
    steps = [model(idx[:, :10], cache=cache)[0], model(idx[:, 10:16], cache=cache)[0]]
    steps += [model(idx[:, t : t + 1], cache=cache)[0] for t in range(16, 40)]
    assert cache.length == 40
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_a_full_cache_refuses_more_tokens():
    model = GPT(ModelConfig(preset="tiny", vocab_size=300, block_size=16)).eval()
    cache = model.new_cache(1)
    model(torch.zeros(1, 15, dtype=torch.long), cache=cache)
    model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="17 tokens is longer than block_size 16"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)


def reads_of(model: GPT, *args, **kwargs) -> tuple[str, list[int]]:
    """generate()'s text and the number of tokens each of its forward passes read."""
    reads = []
    hook = model.register_forward_hook(lambda module, inputs, output: reads.append(inputs[0].shape[1]))
    try:
        return generate(model, *args, **kwargs), reads
    finally:
        hook.remove()


def test_greedy_is_the_same_with_and_without_the_cache_past_block_size(loaded):
    model, tokenizer = loaded
    cached, reads = reads_of(model, tokenizer, PROMPT, max_new_tokens=300, temperature=0)
    prompt_tokens = len(tokenizer.codec.encode(PROMPT).ids)
    # The prompt, one token at a time until the block is full, then the kept half read again, ...
    assert reads == ([prompt_tokens] + [1] * (128 - prompt_tokens) + ([64] + [1] * 64) * 3)[:300]
    assert generate(model, tokenizer, PROMPT, max_new_tokens=300, temperature=0, use_cache=False) == cached


def test_a_prompt_longer_than_the_block_is_cut_to_its_end(loaded, shakespeare):
    model, tokenizer = loaded
    prompt = shakespeare[:2000]
    assert len(tokenizer.codec.encode(prompt).ids) > 128
    cached, reads = reads_of(model, tokenizer, prompt, max_new_tokens=10, temperature=0)
    assert reads == [64] + [1] * 9
    assert generate(model, tokenizer, prompt, max_new_tokens=10, temperature=0, use_cache=False) == cached


# -------------------------------------------------------------------------------- sampling


def test_the_seed_decides_the_text(loaded):
    model, tokenizer = loaded
    texts = [generate(model, tokenizer, "", max_new_tokens=40, temperature=1.0, top_k=None, top_p=None, seed=s)
             for s in (0, 0, 1)]
    assert texts[0] == texts[1] and texts[0]
    assert texts[0] != texts[2]


def test_top_k_of_one_is_greedy(loaded):
    model, tokenizer = loaded
    greedy = generate(model, tokenizer, PROMPT, max_new_tokens=40, temperature=0)
    assert generate(model, tokenizer, PROMPT, max_new_tokens=40, temperature=1.5, top_k=1, seed=3) == greedy


def test_top_p_keeps_the_smallest_set_holding_p():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    generator = torch.Generator().manual_seed(0)

    def draws(**cuts) -> set[int]:
        return {sample(logits, 1.0, generator=generator, **cuts) for _ in range(300)}

    assert draws(top_k=None, top_p=0.5) == {0}
    assert draws(top_k=None, top_p=0.6) == {0, 1}
    assert draws(top_k=None, top_p=0.9) == {0, 1, 2}
    assert draws(top_k=0, top_p=1.0) == {0, 1, 2, 3}
    assert draws(top_k=2, top_p=None) == {0, 1}
    assert sample(logits, 0, 1, 0.1, generator) == 0


def test_bad_sampling_settings_are_errors(loaded):
    model, tokenizer = loaded
    with pytest.raises(RaylmError, match="top-p must be in"):
        generate(model, tokenizer, PROMPT, top_p=1.5)


# ------------------------------------------------------------------------------- streaming


def test_streamed_pieces_add_up_to_the_text(loaded):
    model, tokenizer = loaded
    pieces = []
    text = generate(model, tokenizer, PROMPT, max_new_tokens=60, on_text=pieces.append)
    assert len(pieces) > 1 and "".join(pieces) == text


def test_a_character_split_across_tokens_is_held_until_whole():
    from raylm.data.tokenizer import train_bpe

    tokenizer = train_bpe(["plain ascii text and more of it " * 20], vocab_size=280, min_frequency=2)
    text = "日本語 € héllo 🙂!"
    ids = tokenizer.encode(text).ids
    assert len(ids) > len(text)  # the multi-byte characters are split into byte tokens
    pieces = []
    stream = TextStream(tokenizer, pieces.append)
    for token in ids:
        stream.add(token)
    assert stream.close() == "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)


# ------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("run", ["rope"], indirect=True)
def test_cli_prints_the_prompt_and_its_continuation(run, loaded):
    options = ["--max-new-tokens", "30", "--temperature", "0.9", "--top-k", "0", "--top-p", "1", "--seed", "5", "--no-cache"]
    result = subprocess.run([sys.executable, "-m", "raylm", "generate", "--checkpoint", str(run), "--prompt", PROMPT, *options],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    model, tokenizer = loaded
    continuation = generate(model, tokenizer, PROMPT, max_new_tokens=30, temperature=0.9, top_k=None, top_p=None, seed=5,
                            use_cache=False)
    assert result.stdout == PROMPT + continuation + "\n"


@pytest.mark.parametrize("options, message", [
    ([], "--checkpoint: no checkpoint in"),
    (["--temperature", "-1"], "temperature must be 0 (greedy) or more, got -1.0"),
    (["--top-k", "-5"], "top-k must be 0 (off) or more, got -5"),
    (["--top-p", "0"], "top-p must be in (0, 1] (1 is off), got 0.0"),
])
def test_cli_errors_are_one_line_before_any_loading(tmp_path, capsys, options, message):
    assert main(["generate", "--checkpoint", str(tmp_path), *options]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"raylm: error: {message}") and error.count("\n") == 1
