"""`raylm export RUN`: a run's latest checkpoint as a Hugging Face model folder.

transformers, vLLM, lm-eval-harness and the Hub read it as they read any Llama or Qwen2 model:
`config.json`, safetensors weights (sharded with an index above `max_shard_size`, as the Hub
does; a tied matrix written once), the run's own `tokenizer.json` with a `tokenizer_config.json`
(the one of the Hugging Face folder the run started from, unchanged; else one that names
`<|endoftext|>` as bos, eos and pad, and adds nothing before a prompt, as raylm does),
`generation_config.json` and a model card. The safetensors files are
streamed one tensor at a time, each cast as it is written, so the process holds the model plus
one tensor, not two models.
The folder is written beside its destination and published in one step, like prepare's output.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import replace

import torch

from raylm import storage
from raylm.data.manifest import find_manifest
from raylm.errors import RaylmError
from raylm.data.tokenizer import TOKENIZER_CONFIG
from raylm.model.hf import CONFIG, INDEX, WEIGHTS, hf_config, to_hf_tensors
from raylm.train.checkpoint import load_model, saved_state
from raylm.train.metrics import read_metrics

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?B)\s*$", re.I)
UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}


def parse_size(text: str) -> int:
    """'5GB', '200MB', '64KB' or a number of bytes (decimal units, as the Hub counts)."""
    if text.strip().isdigit():
        return int(text)
    match = SIZE.match(text)
    if not match:
        raise RaylmError(f"--max-shard-size {text!r}: give bytes or a size such as 5GB, 200MB, 64KB")
    return int(float(match.group(1)) * UNITS[match.group(2).upper()])


def export(run_dir: str, output: str | None = None, dtype: str = "bfloat16", max_shard_size: str = "5GB",
           log=print) -> str:
    """Write the folder (default <run>/hf) and return its path."""
    if dtype not in DTYPES:
        raise RaylmError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    shard_bytes = parse_size(max_shard_size)
    run_dir = storage.absolute(run_dir)
    model, source = load_model(run_dir, key="export")
    if source.hf:
        raise RaylmError(f"export: {run_dir} is a Hugging Face model folder already; export takes a raylm run folder")
    config, tokenizer = source.config, source.tokenizer
    parameters = model.num_params(non_embedding=False)
    eos, bos = tokenizer.eos_id, tokenizer.codec.token_to_id(tokenizer.bos_token) if tokenizer.bos_token else None
    hf = hf_config(config.model, bos, eos, dtype)
    output = storage.absolute(output or storage.join(run_dir, "hf"))
    storage.check_writable(output)
    staging = storage.staging_folder(output)
    try:
        shards = _write_weights(to_hf_tensors(model.state_dict(), config.model), DTYPES[dtype], shard_bytes, staging)
        if not tokenizer.hf_files:
            tokenizer = replace(tokenizer, hf_files=((TOKENIZER_CONFIG, json.dumps({
                "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": tokenizer.bos_token,
                "eos_token": tokenizer.eos_token, "pad_token": tokenizer.eos_token, "add_bos_token": False,
                "add_eos_token": False, "model_max_length": config.model.block_size,
                "clean_up_tokenization_spaces": False}, indent=2)),))
        tokenizer.write(staging)
        files = {
            "generation_config.json": {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos},
            CONFIG: hf,
        }
        card = _model_card(run_dir, config, parameters, hf, source, dtype, shards)
        storage.write_bytes(storage.join(staging, "README.md"), card.encode())
        for name, content in files.items():  # config.json last: the folder is complete once it is there
            storage.write_bytes(storage.join(staging, name), json.dumps(content, indent=2).encode())
        storage.publish(staging, output, commit_marker=CONFIG)
    finally:
        storage.delete_dir(staging)  # no-op once published
    log(f"export: {hf['architectures'][0]}, {parameters / 1e6:.2f}M parameters in {dtype}, "
        f"{len(shards)} safetensors file{'s' * (len(shards) > 1)} -> {output}")
    return output


def _write_weights(tensors: dict[str, torch.Tensor], dtype: torch.dtype, shard_bytes: int, folder: str) -> list[str]:
    """Consecutive tensors in shards of at most shard_bytes (a larger tensor alone); with more than
    one, the index the loaders follow."""
    groups, size = [[]], 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * dtype.itemsize
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    names = [WEIGHTS] if len(groups) == 1 else [f"model-{i:05d}-of-{len(groups):05d}.safetensors"
                                                  for i in range(1, len(groups) + 1)]
    for file, group in zip(names, groups):
        _write_safetensors(storage.join(folder, file), {name: tensors[name] for name in group}, dtype)
    if len(groups) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * dtype.itemsize for t in tensors.values())},
                 "weight_map": {name: file for file, group in zip(names, groups) for name in group}}
        storage.write_bytes(storage.join(folder, INDEX), json.dumps(index, indent=2).encode())
    return names


def _write_safetensors(path: str, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """The safetensors format written as a stream (the library builds a whole file in memory):
    an 8-byte little-endian header length, the JSON header (dtype, shape and byte range of each
    tensor) padded with spaces to 8 bytes, then the tensors' bytes, each cast only as it is written."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, tensor in tensors.items():
        size = tensor.numel() * dtype.itemsize
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with storage.open_output(path) as stream:
        stream.write(struct.pack("<Q", len(encoded)) + encoded)
        for tensor in tensors.values():
            stream.write(tensor.detach().to(dtype).contiguous().view(torch.uint8).numpy())


def _model_card(run_dir: str, config, parameters: int, hf: dict, source, dtype: str, shards: list[str]) -> str:
    """What the model is, what it saw and how it scored, from the run's own files."""
    checkpoint, start = source.checkpoint, config.finetune.init or config.train.init
    records = read_metrics(run_dir)
    tokens = next((r["tokens"] for r in reversed(records) if "tokens" in r), None)
    last_val = next((r for r in reversed(records) if "val_loss" in r), None)
    m = config.model
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-generation", "tags: [raylm]", "---", "",
        f"# {config.train.name}", "",
        f"A {hf['architectures'][0]} trained with raylm (LLM training on Ray) and exported by `raylm export`.", "",
        "| | |", "|---|---|",
        f"| architecture | {m.n_layer} layers, {m.n_head} query / {m.kv_heads} key-value heads of {m.head_size}, width "
        f"{m.n_embd}, SwiGLU {m.ffn_size}, RoPE θ {m.rope_theta:g}, context {m.block_size} |",
        f"| parameters | {parameters:,} ({'tied' if m.tie_embeddings else 'untied'} embeddings) |",
        f"| vocabulary | {m.vocab_size:,} tokens, `{source.tokenizer.eos_token}` after each document |",
        *([f"| started from | `{start}` |"] if start else []),
        f"| checkpoint | step {saved_state(checkpoint)['step']:,} (`{checkpoint}`) |",
        f"| tokens seen | {tokens:,} |" if tokens is not None else "| tokens seen | not recorded |",
        f"| weights | {dtype}, {len(shards)} safetensors file(s) |",
    ]
    if last_val:
        lines.append(f"| last validation | step {last_val['step']:,}: loss {last_val['val_loss']:.4f}, "
                     f"{last_val.get('val_bpb', float('nan')):.4f} bits per byte |")
    if manifest := find_manifest(config.train.data):
        splits = manifest["splits"]
        lines.append("| data | " + ", ".join(f"{name} {s['documents']:,} documents / {s['tokens']:,} tokens"
                                          for name, s in splits.items()) + f" (`{config.train.data}`) |")
    lines += ["", "Trained by `raylm pretrain --config config.yaml` (or `raylm finetune`) with the run's "
              f"`config.yaml` in `{run_dir}`.", ""]
    return "\n".join(lines)
