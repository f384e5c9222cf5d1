"""Hugging Face model folders of the Llama, Mistral and Qwen2 families as raylm GPTs, and back.

These architectures are raylm's GPT with options set (rotate-half RoPE, RMSNorm, SwiGLU; grouped
key/value heads, untied embeddings, Qwen2's qkv biases, Llama 3's RoPE scaling), so a folder is a
config mapping and a renaming of tensors: `config.json` to ModelConfig fields, `q_proj`, `k_proj`
and `v_proj` to the fused `qkv`, the vocabulary padded to raylm's multiple of 64. Plain JSON and
safetensors; no transformers, no Ray.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from raylm.config import ModelConfig
from raylm.errors import RaylmError

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
CONFIG, WEIGHTS, INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"
LAYER_TENSORS = {  # raylm block tensor <- Hugging Face layer tensor (q/k/v are fused separately)
    "attn_norm.weight": "input_layernorm.weight",
    "attn.proj.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.w1.weight": "mlp.gate_proj.weight",
    "mlp.w3.weight": "mlp.up_proj.weight",
    "mlp.w2.weight": "mlp.down_proj.weight",
}


def is_hf_folder(path: str) -> bool:
    """A local folder with a Hugging Face config.json (a raylm run has config.yaml instead)."""
    return (Path(path) / CONFIG).is_file()


def model_fields(hf: dict, source: str) -> dict:
    """ModelConfig fields of a Hugging Face config.json; one line naming the key for what raylm
    cannot compute the same way."""
    kind = hf.get("model_type")
    if kind not in ARCHITECTURES:
        raise RaylmError(f"{source}: model_type {kind!r} is not supported; raylm reads {', '.join(ARCHITECTURES)} folders")
    if hf.get("hidden_act", "silu") != "silu":
        raise RaylmError(f"{source}: hidden_act {hf['hidden_act']!r}; raylm's gated MLP is SiLU (SwiGLU)")
    for key in ("attention_bias", "mlp_bias"):
        if kind != "qwen2" and hf.get(key):
            raise RaylmError(f"{source}: {key} is true; raylm has biases on the q/k/v projections of Qwen2 models only")
    heads, width = hf["num_attention_heads"], hf["hidden_size"]
    block_size = hf.get("max_position_embeddings", 2048)
    window = hf.get("sliding_window") if kind == "mistral" or hf.get("use_sliding_window") else None
    if window:  # within the window sliding attention is full causal attention
        block_size = min(block_size, window)
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise RaylmError(f"{source}: rope_type {rope_type!r}; raylm applies plain RoPE and llama3 scaling only")
    fields = {
        "preset": None,
        "n_layer": hf["num_hidden_layers"],
        "n_head": heads,
        "n_kv_head": hf.get("num_key_value_heads") or heads,
        "n_embd": width,
        "head_dim": hf.get("head_dim") or width // heads,
        "block_size": block_size,
        "vocab_size": hf["vocab_size"],
        "mlp": "swiglu",
        "mlp_hidden": hf["intermediate_size"],
        "positions": "rope",
        "rope_theta": hf.get("rope_theta") or rope.get("rope_theta", 10000.0),
        "rope_scaling": {k: rope[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                               "original_max_position_embeddings")} if rope_type == "llama3" else None,
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "qkv_bias": kind == "qwen2",
        "norm_eps": hf.get("rms_norm_eps", 1e-6),
        "dropout": 0.0,
    }
    return fields


def hf_config(config: ModelConfig, eos_id: int, dtype: str) -> dict:
    """The config.json of a raylm model: LlamaForCausalLM, or Qwen2ForCausalLM when it has qkv
    biases. `<|endoftext|>` is bos and eos, as raylm trains (a document starts after one)."""
    if config.positions != "rope":
        raise RaylmError("model.positions=learned: the Llama family has rotary positions only, so this run cannot be "
                         "exported as a Hugging Face model")
    if config.mlp != "swiglu":
        raise RaylmError("model.mlp=gelu: the Llama family has a SwiGLU feed-forward only, so this run cannot be "
                         "exported as a Hugging Face model")
    kind = "qwen2" if config.qkv_bias else "llama"
    scaling = config.rope_scaling
    return {
        "architectures": [ARCHITECTURES[kind]],
        "model_type": kind,
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.ffn_size,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_size,
        "max_position_embeddings": config.block_size,
        "hidden_act": "silu",
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": {"rope_type": "llama3", **scaling.model_dump(exclude={"rope_type"})} if scaling else None,
        "tie_word_embeddings": config.tie_embeddings,
        **({} if kind == "qwen2" else {"attention_bias": False, "mlp_bias": False}),
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "torch_dtype": dtype,
        "use_cache": True,
    }


def from_hf_tensors(tensors: dict[str, torch.Tensor], config: ModelConfig, source: str) -> dict[str, torch.Tensor]:
    """raylm's state dict from a Hugging Face one (names without or with the `model.` prefix)."""
    get = _getter(tensors, source)
    padded = -(-config.vocab_size // 64) * 64
    state = {"wte.weight": _pad_rows(get("model.embed_tokens.weight", (config.vocab_size, config.n_embd)), padded),
             "norm.weight": get("model.norm.weight", (config.n_embd,))}
    state["lm_head.weight"] = state["wte.weight"] if config.tie_embeddings else _pad_rows(
        get("lm_head.weight", (config.vocab_size, config.n_embd)), padded)
    q_rows, kv_rows = config.n_head * config.head_size, config.kv_heads * config.head_size
    for i in range(config.n_layer):
        layer = f"model.layers.{i}."
        parts = [get(f"{layer}self_attn.{p}_proj.weight", (rows, config.n_embd))
                 for p, rows in (("q", q_rows), ("k", kv_rows), ("v", kv_rows))]
        state[f"blocks.{i}.attn.qkv.weight"] = torch.cat(parts)
        if config.qkv_bias:
            state[f"blocks.{i}.attn.qkv.bias"] = torch.cat([get(f"{layer}self_attn.{p}_proj.bias", (rows,))
                                                           for p, rows in (("q", q_rows), ("k", kv_rows), ("v", kv_rows))])
        for ours, theirs in LAYER_TENSORS.items():
            state[f"blocks.{i}.{ours}"] = get(layer + theirs, _layer_shapes(config)[ours])
    return state


def _layer_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    width, hidden = config.n_embd, config.ffn_size
    return {"attn_norm.weight": (width,), "attn.proj.weight": (width, config.n_head * config.head_size),
            "mlp_norm.weight": (width,), "mlp.w1.weight": (hidden, width), "mlp.w3.weight": (hidden, width),
            "mlp.w2.weight": (width, hidden)}


def to_hf_tensors(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """A Hugging Face state dict from raylm's (the padding rows dropped; a tied matrix once)."""
    vocab, q_rows, kv_rows = config.vocab_size, config.n_head * config.head_size, config.kv_heads * config.head_size
    tensors = {"model.embed_tokens.weight": state["wte.weight"][:vocab], "model.norm.weight": state["norm.weight"]}
    if not config.tie_embeddings:
        tensors["lm_head.weight"] = state["lm_head.weight"][:vocab]
    for i in range(config.n_layer):
        layer, block = f"model.layers.{i}.", f"blocks.{i}."
        for p, part in zip("qkv", state[block + "attn.qkv.weight"].split([q_rows, kv_rows, kv_rows])):
            tensors[f"{layer}self_attn.{p}_proj.weight"] = part
        if config.qkv_bias:
            for p, part in zip("qkv", state[block + "attn.qkv.bias"].split([q_rows, kv_rows, kv_rows])):
                tensors[f"{layer}self_attn.{p}_proj.bias"] = part
        for ours, theirs in LAYER_TENSORS.items():
            tensors[layer + theirs] = state[block + ours]
    return {name: tensor.contiguous() for name, tensor in tensors.items()}


def read_folder(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, every tensor) of a local Hugging Face folder; one-file or sharded safetensors."""
    from safetensors.torch import load_file

    folder = Path(path)
    hf = json.loads((folder / CONFIG).read_text())
    if (folder / INDEX).is_file():
        files = sorted(set(json.loads((folder / INDEX).read_text())["weight_map"].values()))
    elif (folder / WEIGHTS).is_file():
        files = [WEIGHTS]
    elif any(folder.glob("*.bin")):
        raise RaylmError(f"{path} has PyTorch .bin weights only; raylm reads safetensors (in transformers: "
                         "model.save_pretrained(folder, safe_serialization=True))")
    else:
        raise RaylmError(f"{path} has no {WEIGHTS} (nor {INDEX})")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        tensors.update(load_file(folder / name))
    return hf, tensors


def _getter(tensors: dict[str, torch.Tensor], source: str):
    def get(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        tensor = tensors.get(name, tensors.get(name.removeprefix("model.")))
        if tensor is None:
            raise RaylmError(f"{source}: no tensor {name}")
        if tuple(tensor.shape) != shape:
            raise RaylmError(f"{source}: {name} has shape {tuple(tensor.shape)}, the config says {shape}")
        return tensor
    return get


def _pad_rows(matrix: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([matrix, matrix.new_zeros(rows - matrix.shape[0], matrix.shape[1])]) if rows > matrix.shape[0] else matrix
