"""nanoGPT's README "CPU run" on Tiny Shakespeare, measured in the same run as raylm's numbers.

A port of nanoGPT (https://github.com/karpathy/nanoGPT, MIT License, Copyright (c) 2022 Andrej
Karpathy): `model.py`, `train.py`, `config/train_shakespeare_char.py`, `data/shakespeare_char/prepare.py`
as on master (warmup lr * (it + 1) / (warmup_iters + 1)), set up as the README's CPU command
  python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
    --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
    --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0
which the README says reaches val loss 1.88 in "about ~3 minutes" on the author's CPU. Left out: DDP,
checkpointing, wandb, torch.compile, GPU/autocast/GradScaler code (inert on CPU), MFU logging,
from_pretrained, sampling. Module order and RNG use follow nanoGPT, so seed 1337 gives its initial
weights and batch stream. Added: a deterministic loss on the WHOLE val split (every non-overlapping
block_size window plus the short tail) whenever training wall time crosses a budget; nanoGPT's own
noisy figure (mean over eval_iters=20 random 12x64 batches) is reported beside it.
"""

import argparse
import inspect
import math
import time
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn
from torch.nn import functional as F

# The README command's effective settings; the comment says which layer of nanoGPT set each one.
HP = dict(
    batch_size=12, block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0,  # CLI
    max_iters=2000, lr_decay_iters=2000, eval_iters=20,  # CLI
    bias=False, weight_decay=1e-1, beta1=0.9, grad_clip=1.0, decay_lr=True,  # train.py defaults
    learning_rate=1e-3, beta2=0.99, min_lr=1e-4, warmup_iters=100,  # config file
    gradient_accumulation_steps=1, eval_interval=250,  # config file
)


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (torch's had no bias=False); nanoGPT runs bias=False here."""
    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, input):
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)  # (attn_dropout is unused on the SDPA path)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in self.c_attn(x).split(self.n_embd, dim=2))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0, is_causal=True)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class Block(nn.Module):
    def __init__(self, config):  # construction order = nanoGPT's, so default-init RNG draws match
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = nn.Sequential(OrderedDict(  # nanoGPT's MLP: same names, order and forward
            c_fc=nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias), gelu=nn.GELU(),
            c_proj=nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias), dropout=nn.Dropout(config.dropout)))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):  # N(0, 0.02) for Linear and Embedding weights, zero biases
        if isinstance(module, (nn.Linear, nn.Embedding)):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            torch.nn.init.zeros_(module.bias)

    def forward(self, idx, targets=None):
        pos = torch.arange(0, idx.size(1), dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))  # the training path: every position
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """>=2-D tensors (matmul weights, embeddings) decay; biases and norm gains do not."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        fused = "fused" in inspect.signature(torch.optim.AdamW).parameters and device_type == "cuda"
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **(dict(fused=True) if fused else {}))


def get_lr(it, h=HP):
    """Linear warmup, then cosine decay to min_lr at lr_decay_iters (train.py's get_lr)."""
    if it < h["warmup_iters"]:
        return h["learning_rate"] * (it + 1) / (h["warmup_iters"] + 1)
    if it > h["lr_decay_iters"]:
        return h["min_lr"]
    ratio = (it - h["warmup_iters"]) / (h["lr_decay_iters"] - h["warmup_iters"])
    return h["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (h["learning_rate"] - h["min_lr"])


@torch.no_grad()
def full_val_loss(model, val, val_bytes, block_size, windows_per_batch=128):
    """Exact loss over every val target: (nats/char, bits/UTF-8 byte). Non-overlapping windows weight
    context positions 0..T-1 as nanoGPT's random batches do; a short tail window scores the rest."""
    model.eval()
    end = (len(val) - 1) // block_size * block_size
    x, y = val[:end].view(-1, block_size), val[1 : end + 1].view(-1, block_size)
    chunks = list(zip(x.split(windows_per_batch), y.split(windows_per_batch)))
    if end < len(val) - 1:
        chunks.append((val[end:-1][None], val[end + 1 :][None]))
    nats = sum(F.cross_entropy(model(xb)[0].flatten(0, 1), yb.flatten(), reduction="sum").item()
               for xb, yb in chunks)
    model.train()
    return nats / (len(val) - 1), nats / math.log(2) / val_bytes


def run_nanogpt(text: str, seconds: list[float], threads: int = 2, max_iters: int = 2000, seed: int = 1337) -> dict:
    """Train nanoGPT's CPU config; each time training time (batching, forward, backward, clip, step;
    not evals) passes a budget, score the whole val split. Restores the global RNG and thread count."""
    h = dict(HP, max_iters=max_iters)
    chars = sorted(set(text))  # prepare.py: vocab = sorted unique characters of the whole text
    stoi = {c: i for i, c in enumerate(chars)}
    train_text, val_text = text[: int(len(text) * 0.9)], text[int(len(text) * 0.9) :]
    train, val = (torch.tensor([stoi[c] for c in t], dtype=torch.long) for t in (train_text, val_text))
    val_bytes = len(val_text[1:].encode("utf-8"))  # bytes of the scored targets (all but the first)
    bs, T = h["batch_size"], h["block_size"]

    def get_batch(split):
        data = train if split == "train" else val
        ix = torch.randint(len(data) - T, (bs,))
        return torch.stack([data[i : i + T] for i in ix]), torch.stack([data[i + 1 : i + 1 + T] for i in ix])

    @torch.no_grad()
    def estimate_loss():  # nanoGPT's noisy estimate: mean of eval_iters random batches per split
        model.eval()
        out = {s: sum(model(*get_batch(s))[1].item() for _ in range(h["eval_iters"])) / h["eval_iters"]
               for s in ("train", "val")}
        model.train()
        return out

    def record(budget):  # budgets passed on the same iteration share one evaluation
        if not budgets or budgets[-1]["iters"] != it:
            budgets.append(dict(zip(("val_loss", "val_bpb"), full_val_loss(model, val, val_bytes, T))))
        else:
            budgets.append(dict(budgets[-1]))
        budgets[-1].update(seconds=budget, iters=it, train_seconds=train_s)

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 0)  # 1337 + seed_offset, seed_offset = 0 without DDP
            keys = ("n_layer", "n_head", "n_embd", "block_size", "bias", "dropout")
            model = GPT(SimpleNamespace(vocab_size=len(chars), **{k: h[k] for k in keys}))  # GPTConfig
            opt = model.configure_optimizers(h["weight_decay"], h["learning_rate"], (h["beta1"], h["beta2"]), "cpu")
            initial = full_val_loss(model, val, val_bytes, T)[0]
            budgets, pending, train_s, it, estimate = [], sorted(seconds), 0.0, 0, None
            X, Y = get_batch("train")  # nanoGPT fetches the first batch before the loop
            while True:
                for g in opt.param_groups:
                    g["lr"] = get_lr(it, h) if h["decay_lr"] else h["learning_rate"]
                if it % h["eval_interval"] == 0:  # kept: its randint draws shape the batch stream
                    estimate = (it, estimate_loss()["val"])
                if it >= h["max_iters"] or not pending:
                    break
                t0 = time.perf_counter()
                for _ in range(h["gradient_accumulation_steps"]):
                    _, loss = model(X, Y)
                    loss = loss / h["gradient_accumulation_steps"]
                    X, Y = get_batch("train")
                    loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), h["grad_clip"])
                opt.step()
                opt.zero_grad(set_to_none=True)
                train_s += time.perf_counter() - t0
                it += 1
                while pending and train_s >= pending[0]:
                    record(pending.pop(0))
            for budget in pending:  # max_iters came first: the remaining budgets get the final model
                record(budget)
            if estimate[0] != it:
                estimate = (it, estimate_loss()["val"])
    finally:
        torch.set_num_threads(old_threads)
    return dict(
        budgets=budgets, iters_per_s=it / train_s if train_s else 0.0, final_iter=it, initial_val_loss=initial,
        nanogpt_estimate_val_loss=estimate[1], nanogpt_estimate_iter=estimate[0], hyperparameters=h,
        vocab_size=len(chars),
        val_loss_method=f"whole val split: all {len(val) - 1} targets, non-overlapping {T}-char windows + tail",
        nanogpt_estimate_method=f"estimate_loss: mean of eval_iters={h['eval_iters']} random {bs}x{T} batches",
    )


def main():
    repo_root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=repo_root / ".." / "shared" / "data" / "tinyshakespeare.txt")
    ap.add_argument("--seconds", type=float, nargs="+", default=[60.0, 120.0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-iters", type=int, default=2000)
    args = ap.parse_args()
    r = run_nanogpt(args.data.read_text(encoding="utf-8"), args.seconds, args.threads, args.max_iters)
    v = r["vocab_size"]
    print(f"nanoGPT CPU config, {args.threads} threads: initial val loss {r['initial_val_loss']:.4f} (ln {v} = "
          f"{math.log(v):.4f}); {r['final_iter']} iters at {r['iters_per_s']:.2f} iters/s")
    for b in r["budgets"]:
        print(f"budget {b['seconds']:g}s: iter {b['iters']} ({b['train_seconds']:.1f}s trained) "
              f"val loss {b['val_loss']:.4f} nats/char, {b['val_bpb']:.4f} bits/byte")
    print(f"nanoGPT's estimate_loss val (eval_iters=20) at iter {r['nanogpt_estimate_iter']}: "
          f"{r['nanogpt_estimate_val_loss']:.4f}")


if __name__ == "__main__":
    main()
