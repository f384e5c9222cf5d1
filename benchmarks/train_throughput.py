"""Training throughput and MFU of raylm's model on one device: tokens/s of full training steps.

    python benchmarks/train_throughput.py                       # CPU: tiny preset, a quick check
    python benchmarks/train_throughput.py --preset gpt2-124m --seq 1024 --batch 16 --compile   # one GPU
    python benchmarks/train_throughput.py --preset gpt2-124m --seq 512 --batch 8 --loss-chunk-rows 1024   # its memory

MFU uses PaLM's FLOPs per token (6N + 12·L·H·Q·T) against the device's dense bf16 peak
(raylm.train.metrics.PEAK_BF16_FLOPS). On a GPU the step runs in bf16 autocast with fused AdamW,
as `raylm pretrain` does; data are random tokens already on the device, so this measures the model
and optimizer, not the input pipeline.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from raylm.config import ModelConfig
from raylm.model.gpt import GPT
from raylm.train.metrics import peak_flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    parser.add_argument("--preset", default="gpt2-124m" if cuda else "tiny")
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--seq", type=int, default=1024 if cuda else 128)
    parser.add_argument("--batch", type=int, default=16 if cuda else 8)
    parser.add_argument("--steps", type=int, default=30 if cuda else 10)
    parser.add_argument("--warmup", type=int, default=10 if cuda else 3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--loss-chunk-rows", type=int, default=None,
                        help="train.loss_chunk_rows: the loss a chunk of positions at a time, no whole logits")
    args = parser.parse_args()

    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    model = GPT(ModelConfig(preset=args.preset, vocab_size=args.vocab, block_size=max(args.seq, 2))).to(device)
    model.loss_chunk_rows = args.loss_chunk_rows
    flops_per_token = model.flops_per_token(args.seq)
    if args.compile:
        for block in model.blocks:
            block.compile()
    optimizer = torch.optim.AdamW(model.param_groups(0.1), lr=3e-4, betas=(0.9, 0.95), fused=cuda)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1), device=device)

    def step() -> float:
        with autocast:
            _, loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    loss.item()  # waits for the device
    seconds = (time.perf_counter() - started) / args.steps
    tokens_per_s = args.batch * args.seq / seconds
    peak = peak_flops(device)
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    # Peak memory of the whole process: the GPU's allocations, or the resident set on a CPU (Linux: KiB).
    peak_gib = (torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
    print(f"{name}: {args.preset} ({model.num_params() / 1e6:.1f}M params), seq {args.seq}, batch {args.batch}, "
          f"compile {args.compile}, loss_chunk_rows {args.loss_chunk_rows}: {seconds * 1e3:.1f} ms/step, "
          f"{tokens_per_s:,.0f} tokens/s, peak memory {peak_gib:.2f} GiB"
          + (f", MFU {flops_per_token * tokens_per_s / peak * 100:.1f}% of {peak / 1e12:.0f} TFLOP/s" if peak else ""))


if __name__ == "__main__":
    main()
