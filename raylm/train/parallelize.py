"""How a single-device model becomes a distributed one, applied from outside (torchtitan's idea).

The model code never mentions DDP, FSDP, checkpointing or compilation; `parallelize` wraps each
transformer block and then the whole model, in the order torchtitan uses: activation
checkpointing, then torch.compile, then FSDP2 sharding (or DDP replication).
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from raylm.model.gpt import GPT


def parallelize(
    model: GPT, strategy: str, device: torch.device, *, compile: bool, activation_checkpointing: bool
) -> nn.Module:
    """DDP (none for one worker) or FSDP2 around `model` (already on `device`); bf16 compute on GPU for FSDP2 through its
    mixed-precision policy (DDP runs get bf16 from autocast in the training step)."""
    for i, block in enumerate(model.blocks):
        if activation_checkpointing:
            block = checkpoint_wrapper(block)
        if compile:
            block.compile()
        model.blocks[i] = block
    if strategy == "fsdp":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if device.type == "cuda" else MixedPrecisionPolicy()
        for block in model.blocks:
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return model  # one worker: no gradients to all-reduce, so no DDP hooks and buckets to pay for
    # Gradients written straight into the all-reduce buckets: no copy in or out of them.
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   gradient_as_bucket_view=True)


def unwrap(model: nn.Module) -> GPT:
    """The GPT inside: DDP wraps it, FSDP2 changes it in place."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def gradient_sync(model: nn.Module, enabled: bool):
    """Skip the gradient all-reduce on all but the last micro-step of an accumulated step."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()
    return model.no_sync() if isinstance(model, DistributedDataParallel) and not enabled else contextlib.nullcontext()
