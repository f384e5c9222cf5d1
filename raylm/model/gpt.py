"""A decoder-only transformer in the shape of nanoGPT's model.py, with modern defaults.

Pre-norm blocks with RMSNorm, fused-qkv causal attention through scaled_dot_product_attention
(grouped-query when there are fewer key/value heads than query heads), RoPE (optionally with Llama
3's frequency scaling) or a learned position table, SwiGLU or GELU feed-forward, no biases but
Qwen2's optional qkv ones, and an lm_head tied (or not) to a token embedding padded to a multiple
of 64. Llama, Mistral and Qwen2 checkpoints are this model with their options set. `blocks` is a ModuleList of `Block`s so that training
code can wrap each one with FSDP2 `fully_shard` and activation checkpointing. For generation, a
`KVCache` keeps the keys and values of the tokens already seen, so each new token costs one
position's forward pass instead of the whole context's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from raylm.config import ModelConfig, RopeScaling
from raylm.model.loss import chunked_linear_cross_entropy


class RMSNorm(nn.Module):
    """Scale-only normalisation, computed in fp32 so bf16 parameters (FSDP2 mixed precision) stay stable."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return h.type_as(x) * self.weight


def rope_tables(head_dim: int, length: int, theta: float, scaling: RopeScaling | None = None,
                device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles, [length, head_dim / 2], in fp32 whatever the model dtype."""
    inv_freq = theta ** -(torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    if scaling is not None:
        inv_freq = llama3_scaled(inv_freq, scaling)
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def llama3_scaled(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    """Llama 3.1's long-context frequencies: a wavelength longer than the original context over
    low_freq_factor turns `factor` times slower, one shorter than it over high_freq_factor stays,
    and those between blend the two linearly in context / wavelength."""
    wavelength = 2 * math.pi / inv_freq
    context = s.original_max_position_embeddings
    blend = ((context / wavelength - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)).clamp(0, 1)
    return (1 - blend) * inv_freq / s.factor + blend * inv_freq


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of each head by the angles of its position (x: [B, H, T, head_dim]).

    The caller picks the rows of cos/sin, so a KV cache only has to slice them at its offset.
    """
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).type_as(x)


class KVCache:
    """Every layer's keys and values for the first `length` positions of a batch of sequences,
    preallocated for block_size positions so that appending a token copies one position, not all."""

    def __init__(self, config: ModelConfig, batch_size: int, device: torch.device, dtype: torch.dtype):
        shape = (config.n_layer, batch_size, config.kv_heads, config.block_size, config.head_size)
        self.keys = torch.empty(shape, device=device, dtype=dtype)
        self.values = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0  # advanced by GPT.forward once every layer has stored its positions

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store `layer`'s keys and values of the new positions (k, v: [B, H_kv, T, head_dim]) after the
        cached ones; return all of that layer's keys and values so far."""
        end = self.length + k.shape[2]
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


class CausalSelfAttention(nn.Module):
    """One fused projection gives the queries of n_head heads, then the keys and values of
    n_kv_head heads; each key/value head serves n_head / n_kv_head query heads."""

    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer  # its slot in a KVCache
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_size
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.n_embd, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=config.qkv_bias)
        self.proj = nn.Linear(self.n_head * self.head_dim, config.n_embd, bias=False)
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None, cache: KVCache | None = None
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split([self.n_head * self.head_dim, *[self.n_kv_head * self.head_dim] * 2], dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if cos is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask = None
        if cache is not None:
            if cache.length and T > 1:  # new token t sees every cached position and the new ones up to t
                mask = torch.ones(T, cache.length + T, dtype=torch.bool, device=x.device).tril(cache.length)
            k, v = cache.update(self.layer, k, v)
        # Plain causal when no keys come from the cache; a lone new token after them sees them all.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=k.shape[2] == T, dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_head != self.n_head,
        )
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)))


class MLP(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), or GELU: w2(gelu(w1 x)) when there is no gate w3."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        gated, hidden = config.mlp == "swiglu", config.ffn_size
        self.w1 = nn.Linear(config.n_embd, hidden, bias=False)
        self.w3 = nn.Linear(config.n_embd, hidden, bias=False) if gated else None
        self.w2 = nn.Linear(hidden, config.n_embd, bias=False)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.w1(x)) * self.w3(x) if self.w3 is not None else F.gelu(self.w1(x))
        return self.drop(self.w2(h))


class Block(nn.Module):
    """One pre-norm transformer layer: the unit that FSDP2 shards and activation checkpointing recomputes."""

    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.attn = CausalSelfAttention(config, layer)
        self.mlp_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None, cache: KVCache | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, cache)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("model.vocab_size is not set: it comes from the tokenizer of the prepared data")
        head_dim = config.head_size
        if config.positions == "rope" and head_dim % 2:
            raise ValueError(f"RoPE needs an even head size, got {head_dim} (model.head_dim, or n_embd / n_head)")
        self.config = config
        self.vocab_size = config.vocab_size
        self.padded_vocab_size = -(-config.vocab_size // 64) * 64
        self.loss_chunk_rows: int | None = None  # see forward
        self.wte = nn.Embedding(self.padded_vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.positions == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layer))
        self.norm = RMSNorm(config.n_embd, config.norm_eps)
        self.lm_head = nn.Linear(config.n_embd, self.padded_vocab_size, bias=False)  # tied in init_weights
        if config.positions == "rope":
            cos, sin = rope_tables(head_dim, config.block_size, config.rope_theta, config.rope_scaling)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2 init, residual projections scaled by 1/sqrt(2 * n_layer) so the residual stream's
        variance does not grow with depth. Called again after building on the meta device and
        materialising with `to_empty()`, which leaves parameters and the RoPE tables uninitialised
        and gives lm_head and wte separate tensors, so the tie is (re)made here."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # one matrix reads tokens in and scores them out
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.w2):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))
        if self.config.positions == "rope":
            c = self.config
            cos, sin = rope_tables(c.head_size, c.block_size, c.rope_theta, c.rope_scaling, device=self.rope_cos.device)
            self.rope_cos.copy_(cos)
            self.rope_sin.copy_(sin)

    def new_cache(self, batch_size: int) -> KVCache:
        """An empty KVCache on the device and in the dtype of the weights, which are those of the
        keys and values outside autocast."""
        return KVCache(self.config, batch_size, self.wte.weight.device, self.wte.weight.dtype)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits [B, T, vocab_size] and, given targets, the mean cross-entropy over all positions;
        with `loss_chunk_rows` set (training sets it from train.loss_chunk_rows), no logits, only
        the loss, computed that many positions at a time (raylm/model/loss.py).

        With a cache, idx continues the cached sequences: its tokens take the positions after
        cache.length, attend to the cached ones too, and are added to the cache.
        """
        T = idx.shape[1]
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size {self.config.block_size}")
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(start, start + T, device=idx.device))
        x = self.drop(x)
        if self.config.positions == "rope":
            cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]
        else:
            cos, sin = None, None
        for block in self.blocks:
            x = block(x, cos, sin, cache)
        if cache is not None:
            cache.length += T
        x = self.norm(x)
        if targets is not None and self.loss_chunk_rows:  # the training step's loss, no logits held
            head = self.lm_head.weight[: self.vocab_size]
            return None, chunked_linear_cross_entropy(x.flatten(0, 1), head, targets.flatten(), self.loss_chunk_rows)
        logits = self.lm_head(x)[..., : self.vocab_size]
        if targets is None:
            return logits, None
        # fp32 loss: under FSDP2 mixed precision the logits arrive in bf16 and no autocast upcasts them.
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return logits, loss

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters, a tied matrix once; non_embedding drops the lookup tables that do no
        matmul: the position table and an untied token embedding (a tied one is also the
        lm_head, so it stays, as nanoGPT counts)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.wpe is not None:
            n -= self.wpe.weight.numel()
        if non_embedding and not self.config.tie_embeddings:
            n -= self.wte.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (PaLM, app. B): 6N for the matmuls forward and backward plus
        attention's QK^T and AV, which grow with the sequence length."""
        c = self.config
        T = seq_len or c.block_size
        return float(6 * self.num_params() + 12 * c.n_layer * c.n_head * c.head_size * T)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: matmul weights decayed; embeddings (so the tied head), norms and 1-D
        parameters not. parameters() yields the tied matrix once."""
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        decay, no_decay = [], []
        for p in self.parameters():
            (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
