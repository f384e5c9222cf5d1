"""Hugging Face model folders of the Llama, Mistral and Qwen2 families as raylm GPTs, and back.

These architectures are raylm's GPT with options set (rotate-half RoPE, RMSNorm, SwiGLU; grouped
key/value heads, untied embeddings, Qwen2's qkv biases, Llama 3's RoPE scaling), so a folder is a
config mapping and a renaming of tensors: `config.json` to ModelConfig fields, `q_proj`, `k_proj`
and `v_proj` to the fused `qkv`, the vocabulary padded to raylm's multiple of 64. Plain JSON and
safetensors (read here by rows, so a worker reads only its shards); no transformers, no Ray.
"""

from __future__ import annotations

import json
import math
import struct

import pyarrow.fs as pafs
import torch
from torch.distributed.tensor import DTensor

from raylm import storage
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
        "architecture": kind,
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


def hf_config(config: ModelConfig, bos_id: int | None, eos_id: int, dtype: str) -> dict:
    """The config.json of a raylm model: the family it was read from, else LlamaForCausalLM, or
    Qwen2ForCausalLM when it has qkv biases."""
    if config.positions != "rope":
        raise RaylmError("model.positions=learned: the Llama family has rotary positions only, so this run cannot be "
                         "exported as a Hugging Face model")
    if config.mlp != "swiglu":
        raise RaylmError("model.mlp=gelu: the Llama family has a SwiGLU feed-forward only, so this run cannot be "
                         "exported as a Hugging Face model")
    kind = config.architecture or ("qwen2" if config.qkv_bias else "llama")
    if config.qkv_bias != (kind == "qwen2"):
        raise RaylmError(f"model.qkv_bias={config.qkv_bias} with model.architecture={kind}: only Qwen2 has biases on "
                         "q, k and v (and always)")
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
        **({"sliding_window": None} if kind == "mistral" else {}),  # raylm attends to its whole context
        "bos_token_id": bos_id,
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


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class SafetensorsFolder:
    """A folder's safetensors files (local or s3://), read by rows. A file is an 8-byte header
    length, a JSON header giving each tensor's dtype, shape and byte range, then the bytes, row after
    row: so the rows of one shard of a tensor are one contiguous read, and a worker that holds a
    shard of the model reads its rows and nothing else (S3: ranged GETs). `bytes_read` counts them."""

    def __init__(self, folder: str):
        self.folder, self.tensors, self.bytes_read, self._open = folder, {}, 0, {}
        for file in weight_files(folder):
            with storage.open_input(storage.join(folder, file), seekable=True) as f:
                (length,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(length))
            header.pop("__metadata__", None)
            for stored, entry in header.items():
                if entry["dtype"] not in SAFETENSORS_DTYPES:
                    raise RaylmError(f"{folder}: {stored} is {entry['dtype']}; raylm reads float tensors only")
                name = stored if stored.startswith(("model.", "lm_head")) else "model." + stored  # older files
                self.tensors[name] = (file, stored, entry["dtype"], tuple(entry["shape"]), 8 + length + entry["data_offsets"][0])

    def check(self, config: ModelConfig) -> dict[str, tuple[str, slice, tuple[int, ...]]]:
        """The tensor map, once every tensor of the architecture is there with the config's shape
        and nothing is left over (headers only; no weights read)."""
        expected = tensor_map(config)
        for name, (_, stored, _, shape, _) in self.tensors.items():
            if name.endswith("rotary_emb.inv_freq") or (name == "lm_head.weight" and config.tie_embeddings):
                continue  # recomputed by raylm; a copy of the tied embedding
            if name not in expected:
                raise RaylmError(f"{self.folder}: tensor {stored} has no place in a {config.n_layer}-layer model")
            if shape != expected[name][2]:
                raise RaylmError(f"{self.folder}: {name} has shape {shape}, its config.json says {expected[name][2]}")
        missing = sorted(set(expected) - set(self.tensors))
        if missing:
            raise RaylmError(f"{self.folder}: no tensor {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        return expected

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of a tensor (elements of a 1-D one), in its stored dtype."""
        file, _, dtype, shape, offset = self.tensors[name]
        dtype = SAFETENSORS_DTYPES[dtype]
        row_bytes = math.prod(shape[1:]) * dtype.itemsize
        if file not in self._open:
            self._open[file] = storage.open_input(storage.join(self.folder, file), seekable=True)
        f = self._open[file]
        f.seek(offset + start * row_bytes)
        data = torch.empty((stop - start) * row_bytes, dtype=torch.uint8)
        if f.readinto(data.numpy()) != data.numel():
            raise RaylmError(f"{self.folder}/{file} is truncated: {name} ends past the end of the file")
        self.bytes_read += data.numel()
        return data.view(dtype).view(stop - start, *shape[1:])

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()


def load_into(model: torch.nn.Module, folder: str) -> int:
    """Copy a folder's tensors into raylm's model in place and return the bytes read. Each tensor
    of the model that is sharded over workers (FSDP2 puts rows [r·⌈n/w⌉, (r+1)·⌈n/w⌉) on rank r)
    gets only its own rows read; a plain tensor, all of them. One piece of one tensor is in memory
    at a time besides the model."""
    weights = SafetensorsFolder(folder)
    config = model.config
    state = model.state_dict()
    try:
        for name, (ours, rows, shape) in weights.check(config).items():
            local, offset = _local_rows(state[ours])
            first = rows.start or 0  # this tensor's rows in ours
            lo, hi = max(first, offset), min(first + shape[0], offset + local.shape[0])
            if lo < hi:
                with torch.no_grad():
                    local[lo - offset : hi - offset].copy_(weights.rows(name, lo - first, hi - first))
    finally:
        weights.close()
    with torch.no_grad():  # the rows past the vocabulary are never a token
        for name in ("wte.weight", "lm_head.weight"):
            local, offset = _local_rows(state[name])
            local[max(0, config.vocab_size - offset):].zero_()
    return weights.bytes_read


def _local_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """This process's part of a parameter and the row of the whole it starts at: all of a plain
    tensor; a DTensor's local shard, as FSDP2 cuts dim 0 (torch.chunk's equal chunks)."""
    if not isinstance(tensor, DTensor):
        return tensor, 0
    if len(tensor.placements) != 1 or not tensor.placements[0].is_shard(0):
        raise RaylmError(f"loading a Hugging Face folder into a {tensor.placements} tensor: raylm reads FSDP2 dim-0 shards only")
    local, rows = tensor.to_local(), tensor.shape[0]
    offset = min(rows, tensor.device_mesh.get_local_rank() * -(-rows // tensor.device_mesh.size()))
    return local, offset


def read_config(folder: str) -> dict:
    try:
        return json.loads(storage.read_bytes(storage.join(folder, CONFIG)))
    except ValueError:
        raise RaylmError(f"{folder}/{CONFIG} is not JSON") from None


def is_hf_folder(folder: str) -> bool:
    """A Hugging Face model folder, not a raylm run (which has config.yaml)."""
    return storage.exists(storage.join(folder, CONFIG)) and not storage.exists(storage.join(folder, "config.yaml"))


def weight_files(folder: str) -> list[str]:
    """The safetensors files of a folder: one, or those its index names."""
    if storage.exists(storage.join(folder, INDEX)):
        return sorted(set(json.loads(storage.read_bytes(storage.join(folder, INDEX)))["weight_map"].values()))
    if storage.exists(storage.join(folder, WEIGHTS)):
        return [WEIGHTS]
    fs, inner = storage.filesystem(folder)
    if any(e.base_name.endswith(".bin") for e in fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))):
        raise RaylmError(f"{folder} has PyTorch .bin weights only; raylm reads safetensors (in transformers: "
                         "model.save_pretrained(folder, safe_serialization=True))")
    raise RaylmError(f"{folder} has no {WEIGHTS} (nor {INDEX})")
