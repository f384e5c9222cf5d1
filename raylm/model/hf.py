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
    return {
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
        "rope_scaling": scaling.model_dump() if scaling else None,
        "tie_word_embeddings": config.tie_embeddings,
        **({} if kind == "qwen2" else {"attention_bias": False, "mlp_bias": False}),
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "torch_dtype": dtype,
        "use_cache": True,
    }


def tensor_map(config: ModelConfig) -> dict[str, tuple[str, slice, tuple[int, ...]]]:
    """Every Hugging Face tensor of the architecture -> (the raylm tensor it is part of, its rows
    there, its shape): q, k and v are row ranges of the fused qkv, the vocabulary the first rows of
    the padded embedding (and of an untied lm_head). A tied model has no lm_head tensor."""
    width, vocab, hidden = config.n_embd, config.vocab_size, config.ffn_size
    q_rows, kv_rows = config.n_head * config.head_size, config.kv_heads * config.head_size
    everything = slice(None)
    entries = {"model.embed_tokens.weight": ("wte.weight", slice(0, vocab), (vocab, width)),
               "model.norm.weight": ("norm.weight", everything, (width,))}
    if not config.tie_embeddings:
        entries["lm_head.weight"] = ("lm_head.weight", slice(0, vocab), (vocab, width))
    fused = {"q": slice(0, q_rows), "k": slice(q_rows, q_rows + kv_rows), "v": slice(q_rows + kv_rows, q_rows + 2 * kv_rows)}
    layer_shapes = {"attn_norm.weight": (width,), "attn.proj.weight": (width, q_rows), "mlp_norm.weight": (width,),
                    "mlp.w1.weight": (hidden, width), "mlp.w3.weight": (hidden, width), "mlp.w2.weight": (width, hidden)}
    for i in range(config.n_layer):
        layer, block = f"model.layers.{i}.", f"blocks.{i}."
        for p, rows in fused.items():
            entries[f"{layer}self_attn.{p}_proj.weight"] = (block + "attn.qkv.weight", rows, (rows.stop - rows.start, width))
            if config.qkv_bias:
                entries[f"{layer}self_attn.{p}_proj.bias"] = (block + "attn.qkv.bias", rows, (rows.stop - rows.start,))
        for ours, theirs in LAYER_TENSORS.items():
            entries[layer + theirs] = (block + ours, everything, layer_shapes[ours])
    return entries


def to_hf_tensors(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """A Hugging Face state dict from raylm's, as views (the padding rows left out; a tied matrix once)."""
    return {name: state[ours][rows].contiguous() for name, (ours, rows, _) in tensor_map(config).items()}


def load_into(model: torch.nn.Module, path: str) -> None:
    """Copy a local folder's tensors into raylm's model in place, one tensor at a time (safetensors
    maps the files; nothing else is read whole), checking each name and shape against the config."""
    from safetensors import safe_open

    expected = tensor_map(model.config)
    state, seen = model.state_dict(), set()
    for file in weight_files(path):
        with safe_open(str(Path(path) / file), "pt") as weights:
            for stored in weights.keys():
                name = stored if stored in expected or stored.startswith("lm_head") else "model." + stored
                if name.endswith("rotary_emb.inv_freq") or (name == "lm_head.weight" and model.config.tie_embeddings):
                    continue  # recomputed by raylm; a copy of the tied embedding
                if name not in expected:
                    raise RaylmError(f"{path}: tensor {stored} has no place in a {model.config.n_layer}-layer model")
                ours, rows, shape = expected[name]
                tensor = weights.get_tensor(stored)
                if tuple(tensor.shape) != shape:
                    raise RaylmError(f"{path}: {name} has shape {tuple(tensor.shape)}, the config says {shape}")
                with torch.no_grad():
                    state[ours][rows].copy_(tensor)
                seen.add(name)
    missing = sorted(set(expected) - seen)
    if missing:
        raise RaylmError(f"{path}: no tensor {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    with torch.no_grad():  # the rows past the vocabulary are never a token
        for name in ("wte.weight", "lm_head.weight"):
            state[name][model.config.vocab_size:].zero_()


def read_config(path: str) -> dict:
    return json.loads((Path(path) / CONFIG).read_text())


def weight_files(path: str) -> list[str]:
    """The safetensors files of a local folder: one, or those its index names."""
    folder = Path(path)
    if (folder / INDEX).is_file():
        return sorted(set(json.loads((folder / INDEX).read_text())["weight_map"].values()))
    if (folder / WEIGHTS).is_file():
        return [WEIGHTS]
    if any(folder.glob("*.bin")):
        raise RaylmError(f"{path} has PyTorch .bin weights only; raylm reads safetensors (in transformers: "
                         "model.save_pretrained(folder, safe_serialization=True))")
    raise RaylmError(f"{path} has no {WEIGHTS} (nor {INDEX})")


