"""Generation speed with and without the KV cache: per-token time as the context grows.

    python benchmarks/generate_speed.py                  # CPU: shakespeare preset, 512-token context
    python benchmarks/generate_speed.py --preset gpt2-124m --tokens 1000   # one GPU

Greedy decoding of a random-weight model (speed does not depend on the weights) with EOS never
emitted, from a one-token prompt, timing each new token. With the cache a token costs one
position's forward pass (plus attention over the cache), so the per-token time stays nearly flat;
without it each token re-reads the whole context, so the time grows with it. Prints the per-token
time over the first and last quarter of the run and the cached/uncached speed ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from raylm.config import ModelConfig
from raylm.eval.generate import sample
from raylm.model.gpt import GPT


def per_token_seconds(model: GPT, tokens: int, use_cache: bool, device: str) -> list[float]:
    """The same loop as raylm.eval.generate, timed per token (greedy, no tokenizer)."""
    ids = [0]
    cache = model.new_cache(1) if use_cache else None
    generator = torch.Generator(device=device)
    times = []
    with torch.inference_mode():
        for _ in range(tokens):
            started = time.perf_counter()
            unread = ids[cache.length :] if cache is not None else ids
            logits, _ = model(torch.tensor([unread], device=device), cache=cache)
            ids.append(sample(logits[0, -1], 0.0, None, None, generator))
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    parser.add_argument("--preset", default="gpt2-124m" if cuda else "shakespeare")
    parser.add_argument("--vocab", type=int, default=50257 if cuda else 4096)
    parser.add_argument("--tokens", type=int, default=1000 if cuda else 500)
    args = parser.parse_args()
    device = "cuda" if cuda else "cpu"
    config = ModelConfig(preset=args.preset, vocab_size=args.vocab, block_size=max(args.tokens + 1, 128))
    torch.manual_seed(0)
    model = GPT(config).to(device).eval()
    quarter = args.tokens // 4
    print(f"{args.preset}, {model.num_params() / 1e6:.1f}M parameters, {args.tokens} tokens, {device}")
    results = {}
    for use_cache in (True, False):
        per_token_seconds(model, 20, use_cache, device)  # warm-up
        times = per_token_seconds(model, args.tokens, use_cache, device)
        results[use_cache] = sum(times)
        first, last = sum(times[:quarter]) / quarter, sum(times[-quarter:]) / quarter
        print(f"{'KV cache' if use_cache else 'no cache'}: {args.tokens / sum(times):8.1f} tokens/s | per token "
              f"{first * 1e3:.2f} ms (first quarter) -> {last * 1e3:.2f} ms (last quarter), x{last / first:.2f}")
    print(f"speed-up of the KV cache over the whole run: x{results[False] / results[True]:.1f}")


if __name__ == "__main__":
    main()
