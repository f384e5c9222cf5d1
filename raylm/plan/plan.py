"""`raylm plan`: what a pretraining config will need and cost, from the config alone (no GPU, no Ray).

Parameters and FLOPs per token come from the model itself, built on the meta device (no memory,
any size). Memory per GPU is counted from what raylm's training step keeps, in the dtypes it keeps
it in:

- DDP on a GPU (raylm/train/loop.py): fp32 master weights, fp32 gradients (written into DDP's
  buckets: no second copy), AdamW's two fp32 moments, and bf16 autocast over forward *and*
  backward, whose cache keeps a bf16 copy of every Linear weight for the whole step. Activations
  are what autograd saves under autocast: bf16 matmul inputs and outputs, an fp32 residual stream
  and fp32 RMSNorm internals.
- FSDP2 on a GPU (raylm/train/parallelize.py): fp32 weights, gradients and moments sharded over
  the workers; compute in bf16 by its mixed-precision policy (no autocast), so the model's
  activations are bf16 but for RMSNorm's and RoPE's fp32 internals; one block's bf16 weights
  gathered at a time plus the next one prefetched, the root's (embedding, final norm) gathered for
  the whole step, and a block's bf16 gradients cast to fp32 for the reduce-scatter.
- CPU (fp32 everything, one worker): the mode the tests measure against peak RSS.

The per-layer activation counts below are the bytes of the tensors autograd saves, term by term;
`benchmarks/plan_memory.py` checks them against saved-tensor hooks (equal to 0.1%) and the peak
against the resident memory of real training steps on CPU, and derives the constants quoted in the
README (CPU fp32 with SwiGLU: 24·n_embd fp32 values per token per layer). The GPU modes use the
same counts under GPU dtypes; they are counted, not measured on a GPU.

The peak is not the sum of the parts: during backward a block's gradients are allocated as its
activations are freed, so the peak is the largest of four moments — the end of forward (all
activations and the loss's transients), the start of backward, the blocks' backward (activations
of the blocks below, gradients of those above) and the optimizer step (all gradients).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml

from raylm.config import Config, ModelConfig
from raylm.data.manifest import find_manifest
from raylm.errors import RaylmError
from raylm.model.gpt import GPT
from raylm.train.metrics import GPU_MEMORY_BYTES, PEAK_BF16_FLOPS, duration, si_number
from raylm.train.schedule import rows_per_window, step_plan

GiB = 2**30
CHINCHILLA_TOKENS_PER_PARAMETER = 20  # Hoffmann et al. 2022: compute-optimal tokens grow with parameters, ~20:1

# plan.mfu's default: measured by benchmarks/train_throughput.py on one H200 (BENCHMARKS.md, "GPU:
# throughput, MFU ..."): gpt2-124m, batch 16 x 1,024, bf16 autocast, fused AdamW. One GPU: a
# multi-GPU run adds gradient all-reduces, which these figures do not include.
MEASURED_MFU = {False: 0.191, True: 0.316}  # train.compile off / on
MFU_SOURCE = "BENCHMARKS.md: gpt2-124m, 16 x 1,024, one H200, {}"

# On-demand list prices (USD per instance-hour, Linux) of the instance types the cluster YAMLs use,
# as the providers' public price lists gave them in 2025: AWS us-west-2 (aws.amazon.com/ec2/pricing/
# on-demand, after the June 2025 P5 price cut), Google Cloud us-central1 (cloud.google.com/compute/
# vm-instance-pricing, machine + GPUs). Transcribed, not fetched: the machine this was written on had
# no web access to re-check them on 2026-12-01. Prices change and differ by region and contract, so
# set plan.price_per_gpu_hour for a real budget.
LIST_PRICES = {
    "p5.48xlarge": 55.04,     # 8x H100 80 GB
    "g6.xlarge": 0.8048,      # 1x L4
    "g5.xlarge": 1.006,       # 1x A10G
    "a3-highgpu-8g": 88.49,   # 8x H100 80 GB
    "g2-standard-8": 0.8536,  # 1x L4
}
LIST_PRICE_SOURCE = "{} on-demand, 2025 list price"

STRATEGIES = (("ddp", False), ("ddp", True), ("fsdp", False), ("fsdp", True))


def strategy_name(strategy: str, checkpointing: bool) -> str:
    return ("DDP" if strategy == "ddp" else "FSDP2") + ("+ckpt" if checkpointing else "")


# ------------------------------------------------------------------------------------ the model


@dataclass(frozen=True)
class Shapes:
    """What the memory counts need of a model, read off the model built on the meta device."""

    params: int          # all parameters, a tied matrix once
    block_params: int    # one transformer block's
    root_params: int     # outside the blocks: embeddings, final norm, an untied lm_head
    linear_params: int   # weights of the blocks' Linear layers (autocast casts them to bf16)
    largest_param: int   # the largest single tensor (the embedding)
    n_layer: int
    n_embd: int
    q_width: int         # n_head x head_dim
    kv_width: int        # n_kv_head x head_dim
    ffn: int
    n_head: int
    swiglu: bool
    dropout: bool
    vocab: int           # the rows the loss scores (model.vocab_size)
    padded_vocab: int    # the embedding's rows (a multiple of 64)
    tied: bool


def meta_model(model: ModelConfig) -> GPT:
    """The model with shapes and no memory: a 1B model costs nothing to build."""
    with torch.device("meta"):
        return GPT(model)


def shapes_of(gpt: GPT) -> Shapes:
    c = gpt.config
    block = gpt.blocks[0]
    block_params = sum(p.numel() for p in block.parameters())
    params = sum(p.numel() for p in gpt.parameters())
    linear = sum(m.weight.numel() for m in block.modules() if isinstance(m, torch.nn.Linear)) * c.n_layer
    return Shapes(
        params=params, block_params=block_params, root_params=params - block_params * c.n_layer, linear_params=linear,
        largest_param=max(p.numel() for p in gpt.parameters()), n_layer=c.n_layer, n_embd=c.n_embd,
        q_width=c.n_head * c.head_size, kv_width=c.kv_heads * c.head_size, ffn=c.ffn_size, n_head=c.n_head,
        swiglu=c.mlp == "swiglu", dropout=c.dropout > 0, vocab=gpt.vocab_size, padded_vocab=gpt.padded_vocab_size,
        tied=c.tie_embeddings)


# ------------------------------------------------------------------------------------ activations

# How each mode stores the tensors a step keeps: "fp32" (CPU), "autocast" (DDP on a GPU: bf16
# matmuls, fp32 residual stream), "bf16" (FSDP2's bf16 parameters, no autocast).


def layer_activation_bytes(s: Shapes, mode: str) -> float:
    """Bytes autograd saves per token in one block, summed from the model's code (raylm/model/gpt.py):

    - each RMSNorm: its fp32 input and normalised value (8·h bytes; under "bf16" an fp32 copy of the
      bf16 input, the bf16 normalised value and the bf16 output: 8·h too); the norm's output is the
      next Linear's saved input: fp32 (4·h, once for w1 and w3), or cast to bf16 by autocast once
      per Linear (2·h for qkv, w1 and w3 each);
    - attention: the fused qkv output (q + 2·kv wide; RoPE keeps views of it and SDPA takes v), the
      rotated q and k, SDPA's output (and its fp32 log-sum-exp per head) and proj's input, a copy:
      4·q + 3·kv values;
    - the MLP: SwiGLU keeps w1's output, silu's, w3's and their product (4·ffn values); GELU w1's
      output and gelu's (2·ffn);
    - with dropout, a one-byte mask per residual branch (2·h).
    """
    h, q, kv = s.n_embd, s.q_width, s.kv_width
    values = 4 * q + 3 * kv + (4 if s.swiglu else 2) * s.ffn
    lse = 4 * s.n_head
    masks = 2 * h if s.dropout else 0
    if mode == "fp32":
        return 4 * (6 * h + values) + lse + masks
    norms = 2 * 8 * h
    casts = 2 * h * (1 + (2 if s.swiglu else 1)) if mode == "autocast" else 0
    return norms + casts + 2 * values + lse + masks


def checkpoint_bytes(s: Shapes, mode: str) -> float:
    """Per token per block with activation checkpointing: only the block's input (the residual
    stream: fp32 but under FSDP2's bf16 parameters) is kept; backward recomputes the rest."""
    return (2 if mode == "bf16" else 4) * s.n_embd


# ---------------------------------------------------------------------------------------- memory


@dataclass
class Memory:
    """Bytes per GPU of one configuration: the parts, and the peak of a step (not their sum)."""

    weights: float
    gradients: float
    optimizer: float
    bf16_weights: float
    activations: float
    loss: float
    peak: float


def memory(s: Shapes, *, batch_size: int, seq_len: int, world: int, strategy: str, checkpointing: bool,
           loss_chunk_rows: int | None, device: str = "gpu") -> Memory:
    """Peak memory of a training step on one worker (see the module docstring for what is kept in
    which dtype). device="cpu" is raylm on CPU: fp32 throughout, DDP (or none for one worker)."""
    if device == "cpu" and strategy != "ddp":
        raise ValueError("the CPU mode counts DDP (fp32) only")
    mode = "fp32" if device == "cpu" else ("autocast" if strategy == "ddp" else "bf16")
    n = world if strategy == "fsdp" else 1
    P, Pb, Proot = s.params, s.block_params, s.root_params
    h, V, Vp, L = s.n_embd, s.vocab, s.padded_vocab, s.n_layer
    tokens = batch_size * seq_len
    chunked = bool(loss_chunk_rows)

    weights, gradients, optimizer = 4 * P / n, 4 * P / n, 8 * P / n
    if mode == "autocast":  # the autocast cache: a bf16 copy of each Linear weight (and a leaf lm_head's) per step
        bf16_weights = 2 * (s.linear_params + (0 if chunked else Vp * h))
    elif mode == "bf16":  # the root gathered for the step, a block gathered and the next prefetched
        bf16_weights = 2 * Proot + 2 * 2 * Pb
    else:
        bf16_weights = 0
    states = weights + optimizer

    layer = layer_activation_bytes(s, mode) * tokens
    kept = checkpoint_bytes(s, mode) * tokens if checkpointing else layer
    activations = L * kept + (layer if checkpointing else 0)  # checkpointing recomputes one block at a time

    # The loss: the final norm, then the lm_head and cross-entropy.
    hidden = 2 if mode == "bf16" else 4  # bytes of the final hidden state
    norm = (6 if mode == "bf16" else 8) * h * tokens
    if chunked:  # raylm/model/loss.py: gradients computed in forward, a chunk of positions at a time
        rows = min(loss_chunk_rows, tokens)
        saved = norm + hidden * h * tokens + 4 * V * h  # d(hidden), d(weight) in fp32
        # The loop over chunks allocates a chunk's logits while the previous chunk's logits and
        # softmax gradient are still bound (fp32: 3 x 4 bytes per logit; under autocast also the
        # bf16 matmul output; with bf16 weights the gradient is cast to bf16), or later the weight's
        # gradient of the chunk (grad.t() @ h, [V, h]: in bf16 and fp32 on a GPU) beside its logits.
        cV, Vh, previous = rows * V, V * h, tokens > rows
        forward = {"fp32": max((8 + 4 * previous) * cV, 8 * cV + 4 * Vh),
                   "autocast": max((6 + 8 * previous) * cV, 10 * cV + 6 * Vh),
                   "bf16": max((6 + 6 * previous) * cV, 6 * cV + 6 * Vh)}[mode]
        weight = 2 if mode == "bf16" else 4
        backward = hidden * h * tokens + 4 * V * h + weight * Vp * h * (2 if mode == "bf16" else 1)
    else:
        logits = 4 if mode == "fp32" else 2  # the lm_head's output, which the loop keeps (`_, loss = model(...)`)
        head_input = 4 if mode == "fp32" else 2
        saved = norm + head_input * h * tokens + 4 * tokens * V + logits * tokens * Vp  # + log_softmax's fp32 output
        forward = 0 if mode == "fp32" else 4 * tokens * V  # the fp32 copy of bf16 logits cross-entropy reads
        backward = 8 * tokens * V  # cross-entropy's backward: the gradient in and out of log_softmax
    loss = saved + max(forward, backward)

    # The blocks' backward, from the top: gradients of the blocks above, activations of those below.
    grad_block = 4 * Pb / n
    if strategy == "fsdp":  # the root's gradient stays gathered in bf16; a block's is cast to fp32 to reduce
        grad_root, block_extra = 2 * Proot, 6 * Pb
    else:
        grad_root, block_extra = 4 * Proot, 0
    grad_bytes = 4 if mode == "fp32" else 2
    flowing = (grad_bytes * 2 * s.ffn + 4 * h) * tokens  # the gradients flowing through one block's backward
    blocks = grad_root + (L - 1) * max(kept, grad_block) + layer + grad_block + block_extra + flowing
    # Forward and backward hold the bf16 copies (autocast's cache lives until its context, around both,
    # ends; FSDP2 reshards after backward); the optimizer step all gradients (CPU AdamW: a tensor's temporaries).
    step = gradients + (8 * s.largest_param if mode == "fp32" else 0)
    peak = states + max(bf16_weights + L * kept + saved + max(forward, backward), bf16_weights + blocks, step)
    return Memory(weights, gradients, optimizer, bf16_weights, activations, loss, peak)


def largest_batch(s: Shapes, budget: float, **options) -> int:
    """The largest micro-batch (sequences per GPU) whose peak fits `budget` bytes; 0 when none does."""
    def fits(batch: int) -> bool:
        return memory(s, batch_size=batch, **options).peak <= budget

    if not fits(1):
        return 0
    low, high = 1, 2
    while fits(high) and high < 1 << 20:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


# ---------------------------------------------------------------------------------- cluster files


@dataclass
class NodeType:
    name: str
    cluster: str
    gpus: int
    accelerator: str
    instance: str | None
    max_nodes: int | None


def read_node_type(cluster: str, name: str | None) -> NodeType:
    """A GPU node type of a Ray cluster launcher YAML (available_node_types) or a KubeRay RayCluster /
    RayJob (workerGroupSpecs): its GPUs per node, their type ("accelerator_type:H100": 1 in its
    resources, or the raylm/accelerator label), its instance type and how many nodes it may scale to."""
    try:
        document = yaml.safe_load(Path(cluster).read_text())
    except OSError as err:
        raise RaylmError(f"cannot read --cluster {cluster}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise RaylmError(f"--cluster {cluster}: not valid YAML ({getattr(err, 'problem', err)})") from None
    types = _node_types(document if isinstance(document, dict) else {})
    if not types:
        raise RaylmError(f"--cluster {cluster}: no node types found (expected a Ray cluster launcher YAML with "
                         "available_node_types, or a KubeRay RayCluster/RayJob with workerGroupSpecs)")
    gpu_types = [t for t, spec in types.items() if spec["gpus"]]
    if name is None or name not in types:
        what = "--node-type is needed with --cluster" if name is None else f"unknown --node-type {name!r} in {cluster}"
        raise RaylmError(f"{what}; its GPU node types: {', '.join(gpu_types) or 'none'} "
                         f"(all types: {', '.join(types)})")
    spec = types[name]
    if not spec["gpus"]:
        raise RaylmError(f"node type {name!r} of {cluster} has no GPU; raylm plan sizes GPU training: choose one of "
                         f"{', '.join(gpu_types) or '(none in this file)'}")
    if spec["accelerator"] is None:
        raise RaylmError(f"node type {name!r} of {cluster} does not say its GPU: give it a resource like "
                         '"accelerator_type:H100": 1 or a label raylm/accelerator: H100')
    return NodeType(name, cluster, spec["gpus"], spec["accelerator"], spec["instance"], spec["max_nodes"])


def _node_types(document: dict) -> dict[str, dict]:
    if isinstance(document.get("available_node_types"), dict):
        types = {}
        for name, node in document["available_node_types"].items():
            resources, labels = node.get("resources") or {}, node.get("labels") or {}
            accelerator = next((key.split(":", 1)[1] for key in resources if key.startswith("accelerator_type:")),
                               labels.get("raylm/accelerator"))
            config = node.get("node_config") or {}
            types[name] = {"gpus": int(resources.get("GPU", 0)), "accelerator": accelerator,
                           "instance": config.get("InstanceType") or config.get("machineType"),
                           "max_nodes": node.get("max_workers")}
        return types
    spec = document.get("spec") or {}
    spec = spec.get("rayClusterSpec", spec)
    types = {}
    for group in spec.get("workerGroupSpecs") or []:
        containers = ((group.get("template") or {}).get("spec") or {}).get("containers") or [{}]
        limits = (containers[0].get("resources") or {}).get("limits") or {}
        types[group.get("groupName")] = {"gpus": int(limits.get("nvidia.com/gpu", 0)),
                                         "accelerator": (group.get("labels") or {}).get("raylm/accelerator"),
                                         "instance": None, "max_nodes": group.get("maxReplicas")}
    return types


def gpu_spec(accelerator: str, where: str) -> tuple[int, float]:
    """(memory bytes, dense bf16 peak FLOP/s) of a GPU type, from raylm/train/metrics.py's tables."""
    memory_bytes = GPU_MEMORY_BYTES.get(accelerator)
    peak = next((value for key, value in PEAK_BF16_FLOPS.items() if accelerator.startswith(key)), None)
    if memory_bytes is None or peak is None:
        known = ", ".join(k for k in GPU_MEMORY_BYTES if k != "A100")
        raise RaylmError(f"{where}: raylm plan does not know the GPU {accelerator!r}; it knows {known}")
    return memory_bytes, peak


# ----------------------------------------------------------------------------------------- plan


def training_shape(config: Config) -> tuple[ModelConfig, int, str, str]:
    """The model with its vocabulary, the sequence length the loop trains on, and where each came
    from: model.vocab_size, else the prepared train.data's tokenizer, else the tokenizer prepare
    would train; the data's windows (its manifest, else data.seq_len), as rows of at most the
    model's context, as training takes them."""
    model = config.model
    manifest = find_manifest(config.train.data)
    if model.vocab_size is not None:
        vocab_from = "model.vocab_size"
    elif manifest is not None:
        model = model.model_copy(update={"vocab_size": manifest["tokenizer"]["vocab_size"]})
        vocab_from = f"the tokenizer of {config.train.data}"
    else:
        model = model.model_copy(update={"vocab_size": config.data.tokenizer.vocab_size})
        vocab_from = "data.tokenizer.vocab_size, the tokenizer prepare trains; set model.vocab_size for another"
    seq_len, seq_from = (manifest["seq_len"], f"the windows of {config.train.data}") if manifest else (
        config.data.seq_len, "data.seq_len")
    rows = rows_per_window(seq_len, model.block_size, f"{seq_from} ({seq_len})",
                           "prepare with data.seq_len equal to it or a multiple of it")
    if rows > 1:
        seq_from += f", as rows of model.block_size {model.block_size}"
        seq_len //= rows
    return model, seq_len, vocab_from, seq_from


def make_plan(config: Config, node: NodeType | None = None) -> dict:
    """Everything `raylm plan` prints, as one JSON-ready dict."""
    train, plan = config.train, config.plan
    model_config, seq_len, vocab_from, seq_from = training_shape(config)
    gpt = meta_model(model_config)
    s = shapes_of(gpt)
    world = train.max_workers
    accelerator = node.accelerator if node else plan.gpu
    memory_bytes, peak_flops = gpu_spec(accelerator, f"node type {node.name!r} of {node.cluster}" if node else "plan.gpu")
    budget = plan.usable_memory * memory_bytes

    strategies = {}
    for strategy, checkpointing in STRATEGIES:
        options = dict(seq_len=seq_len, world=world, strategy=strategy, checkpointing=checkpointing,
                       loss_chunk_rows=train.loss_chunk_rows)
        estimate = memory(s, batch_size=train.batch_size, **options)
        strategies[strategy_name(strategy, checkpointing)] = {
            **{key: round(value) for key, value in asdict(estimate).items()},
            "fits": estimate.peak <= budget, "largest_micro_batch": largest_batch(s, budget, **options)}
    chosen = strategy_name(train.strategy, train.activation_checkpointing)

    accumulate, tokens_per_step, steps = step_plan(train, seq_len, world)
    flops_per_token = gpt.flops_per_token(seq_len)
    mfu = plan.mfu or MEASURED_MFU[train.compile]
    mfu_from = "plan.mfu" if plan.mfu else MFU_SOURCE.format("compiled" if train.compile else "eager")
    recompute = 4 / 3 if train.activation_checkpointing else 1.0  # a second forward pass of every block
    tokens_per_s = world * peak_flops * mfu / (flops_per_token * recompute)
    step_seconds = tokens_per_step / tokens_per_s
    train_seconds = steps * step_seconds
    if train.max_minutes is not None:
        train_seconds = min(train_seconds, train.max_minutes * 60)
    gpus_per_node = node.gpus if node else None
    nodes = math.ceil(world / node.gpus) if node else None
    if plan.price_per_gpu_hour is not None:
        price, price_from = plan.price_per_gpu_hour, "plan.price_per_gpu_hour"
    elif node and node.instance in LIST_PRICES:
        price, price_from = LIST_PRICES[node.instance] / node.gpus, LIST_PRICE_SOURCE.format(node.instance)
    else:
        price, price_from = None, "unknown: set plan.price_per_gpu_hour"
    billed_gpus = nodes * gpus_per_node if node else world  # whole nodes are billed
    gpu_hours = train_seconds / 3600 * world
    cost = price * train_seconds / 3600 * billed_gpus if price is not None else None
    trained_tokens = steps * tokens_per_step if train.max_minutes is None else round(train_seconds * tokens_per_s)
    optimal = CHINCHILLA_TOKENS_PER_PARAMETER * s.params

    result = {
        "model": {"preset": model_config.preset, "parameters": s.params, "non_embedding_parameters": gpt.num_params(),
                  "n_layer": s.n_layer, "n_embd": s.n_embd, "block_size": model_config.block_size,
                  "vocab_size": s.vocab, "vocab_from": vocab_from, "flops_per_token": flops_per_token},
        "run": {"workers": world, "batch_size": train.batch_size, "seq_len": seq_len, "seq_from": seq_from,
                "accumulate": accumulate, "tokens_per_step": tokens_per_step, "steps": steps,
                "tokens": trained_tokens, "strategy": chosen, "loss_chunk_rows": train.loss_chunk_rows},
        "gpu": {"type": accelerator, "memory_bytes": memory_bytes, "usable_bytes": round(budget),
                "peak_bf16_flops": peak_flops, "node_type": node.name if node else None,
                "cluster": node.cluster if node else None, "instance": node.instance if node else None,
                "gpus_per_node": gpus_per_node, "nodes": nodes, "max_nodes": node.max_nodes if node else None},
        "memory": strategies,
        "time": {"mfu": mfu, "mfu_from": mfu_from, "tokens_per_s": tokens_per_s, "step_seconds": step_seconds,
                 "train_seconds": train_seconds, "gpu_hours": gpu_hours, "price_per_gpu_hour": price,
                 "price_from": price_from, "cost_usd": cost},
        "advice": {"compute_optimal_tokens": optimal, "tokens_over_optimal": trained_tokens / optimal,
                   "notes": []},
    }
    result["advice"]["notes"] = _advice(config, result)
    return result


def _advice(config: Config, plan: dict) -> list[str]:
    train, run, gpu, memory_rows = config.train, plan["run"], plan["gpu"], plan["memory"]
    notes = []
    chosen = memory_rows[run["strategy"]]
    if not chosen["fits"]:
        fitting = [name for name, row in memory_rows.items() if row["fits"]]
        if chosen["largest_micro_batch"]:
            notes.append(f"{run['strategy']} does not fit {train.batch_size} sequences per GPU: train.batch_size="
                         f"{chosen['largest_micro_batch']} does (train.tokens_per_step={run['tokens_per_step']} keeps "
                         "the global batch by accumulating gradients)")
        if fitting:
            notes.append(f"at train.batch_size={train.batch_size} it fits with {', '.join(fitting)} "
                         "(train.strategy=fsdp, train.activation_checkpointing=true)")
        elif not chosen["largest_micro_batch"]:
            notes.append(f"not even one sequence per GPU fits a {gpu['type']}: shard over more GPUs "
                         "(train.strategy=fsdp with more train.workers) or a larger GPU")
    if train.max_tokens and run["steps"] == train.max_steps and run["steps"] * run["tokens_per_step"] < train.max_tokens:
        needed = math.ceil(train.max_tokens / run["tokens_per_step"])
        notes.append(f"train.max_steps={train.max_steps} ends the run after {_tokens(run['steps'] * run['tokens_per_step'])} "
                     f"tokens, before train.max_tokens={_tokens(train.max_tokens)}: set train.max_steps={needed}")
    if gpu["nodes"] and gpu["max_nodes"] is not None and gpu["nodes"] > gpu["max_nodes"]:
        notes.append(f"{gpu['nodes']} {gpu['node_type']} nodes are needed, and {gpu['cluster']} lets the type scale to "
                     f"{gpu['max_nodes']}: raise its max_workers")
    if gpu["nodes"] and run["workers"] % gpu["gpus_per_node"]:
        notes.append(f"{run['workers']} workers leave {gpu['nodes'] * gpu['gpus_per_node'] - run['workers']} GPUs of the "
                     f"{gpu['nodes']} nodes idle, and whole nodes are billed")
    if not train.use_gpu:
        notes.append("train.use_gpu=false would train on CPUs: set train.use_gpu=true for the GPUs of this plan")
    low, high = train.worker_range
    if low < high:
        notes.append(f"train.workers=[{low}, {high}] is planned at its max; on {low} worker{'s' * (low > 1)} a step "
                     f"takes {high / low:.3g}x as long")
    ratio = plan["advice"]["tokens_over_optimal"]
    optimal = _tokens(plan["advice"]["compute_optimal_tokens"])
    verdict = ("about compute-optimal" if 0.8 <= ratio <= 1.25 else
               "for the same compute, a smaller model trained on more tokens would reach a lower loss" if ratio < 0.8 else
               "past compute-optimal, each token buys less loss, in exchange for a smaller model to serve")
    notes.append(f"Chinchilla: ~{CHINCHILLA_TOKENS_PER_PARAMETER} tokens per parameter, {optimal} for "
                 f"{si_number(plan['model']['parameters'])} parameters; {_tokens(run['tokens'])} planned ({ratio:.2g}x): {verdict}")
    return notes


# --------------------------------------------------------------------------------------- printing


def _tokens(n: float) -> str:
    return si_number(n) if n >= 1e6 else f"{n:,.0f}"


def _seconds(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def _gib(n: float) -> str:
    return f"{n / GiB:.2f}"


def render(plan: dict) -> str:
    """The plan as the table `raylm plan` prints."""
    model, run, gpu, time, advice = plan["model"], plan["run"], plan["gpu"], plan["time"], plan["advice"]
    where = "plan.gpu"
    if gpu["node_type"]:
        instance = f"{gpu['instance']}, " if gpu["instance"] else ""
        where = (f"{gpu['node_type']} of {gpu['cluster']}: {instance}{gpu['gpus_per_node']} GPU"
                 f"{'s' * (gpu['gpus_per_node'] > 1)} per node, {gpu['nodes']} node{'s' * (gpu['nodes'] > 1)}")
    lines = [
        f"raylm plan: {model['preset'] or 'model'} on {run['workers']} x {gpu['type']} ({where})",
        "",
        f"model     {si_number(model['parameters'])} parameters ({model['parameters']:,}), {model['n_layer']} layers x "
        f"{model['n_embd']}, context {model['block_size']:,}, vocabulary {model['vocab_size']:,} ({model['vocab_from']})",
        f"          {si_number(model['flops_per_token'])} FLOPs per token trained (6N + attention at {run['seq_len']:,} tokens)",
        f"batch     {run['batch_size']} x {run['seq_len']:,} tokens per GPU per micro-step ({run['seq_from']}), "
        f"{run['accumulate']} micro-step{'s' * (run['accumulate'] > 1)}, {run['tokens_per_step']:,} tokens per step",
        f"budget    {run['steps']:,} steps, {_tokens(run['tokens'])} tokens",
        "",
        f"memory per GPU, GiB ({gpu['type']}: {_gib(gpu['memory_bytes'])}, plan to use {_gib(gpu['usable_bytes'])})",
    ]
    names = list(plan["memory"])
    marked = [name + ("*" if name == run["strategy"] else "") for name in names]
    rows = [("weights (fp32)", "weights"), ("gradients (fp32)", "gradients"), ("AdamW moments (fp32)", "optimizer"),
            ("bf16 weight copies", "bf16_weights"), ("activations", "activations"),
            ("loss (lm_head, cross-entropy)", "loss"), ("peak of a step", "peak")]
    lines.append(f"  {'':32}" + "".join(f"{name:>12}" for name in marked))
    for label, key in rows:
        lines.append(f"  {label:32}" + "".join(f"{_gib(plan['memory'][name][key]):>12}" for name in names))
    lines.append(f"  {'fits':32}" + "".join(f"{'yes' if plan['memory'][n]['fits'] else 'NO':>12}" for n in names))
    lines.append(f"  {'largest micro-batch':32}" + "".join(f"{plan['memory'][n]['largest_micro_batch'] or 'none':>12}" for n in names))
    loss = (f"in chunks of {run['loss_chunk_rows']:,} positions" if run["loss_chunk_rows"] else
            "over the whole logits (train.loss_chunk_rows=null)")
    lines.append(f"  * train.strategy, train.activation_checkpointing. DDP: bf16 autocast. FSDP2: sharded over "
                 f"{run['workers']} GPUs, bf16 compute. The loss {loss}.")
    lines.append("")
    cost = (f", ${time['cost_usd']:,.0f} at ${time['price_per_gpu_hour']:.2f} per GPU-hour ({time['price_from']})"
            if time["cost_usd"] is not None else f"; cost {time['price_from']}")
    lines += [
        f"time      MFU {time['mfu'] * 100:.1f}% ({time['mfu_from']}{'' if time['mfu_from'] == 'plan.mfu' else '; set plan.mfu'})",
        f"          {si_number(time['tokens_per_s'])} tokens/s, {_seconds(time['step_seconds'])} per step, "
        f"{duration(time['train_seconds'])} of training (no start-up, evaluation or checkpoints)",
        f"cost      {time['gpu_hours']:,.1f} GPU-hours{cost}",
        "",
    ]
    lines += [f"advice    {note}" if i == 0 else f"          {note}" for i, note in enumerate(advice["notes"])]
    return "\n".join(_wrap(line) for line in lines)


def _wrap(line: str, width: int = 110) -> str:
    """A long line as lines of `width`, continued under its text (after `model     `, `  * `)."""
    if len(line) <= width:
        return line
    indent = len(line) - len(line.lstrip()) if line.startswith(" ") else 10
    indent += 2 if line.lstrip().startswith("* ") else 0
    return textwrap.fill(line, width, subsequent_indent=" " * indent, break_on_hyphens=False)
