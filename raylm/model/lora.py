"""LoRA (Hu et al. 2021): train a low-rank update B @ A beside each frozen projection, then merge it.

A small implementation rather than `peft`: our projections are plain `nn.Linear`s (biased only for
Qwen2's qkv), so an adapter is a dozen lines, and it keeps the weight's (and bias's) own name
(`...qkv.weight`) so a pretrained checkpoint loads into an adapted model and a merged model is an
ordinary GPT again. A model transform, so it lives with the model: training applies it, evaluation
and export merge it.
"""

from __future__ import annotations

import math
from typing import get_args

import torch
import torch.nn.functional as F
from torch import nn

from raylm.config import LoraConfig, LoraTarget


class LoRALinear(nn.Module):
    """y = x W^T + scale * dropout(x) A^T B^T, with W frozen and B starting at zero (so training
    starts exactly at the pretrained model)."""

    def __init__(self, base: nn.Linear, config: LoraConfig):
        super().__init__()
        self.weight, self.bias = base.weight, base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        out_features, in_features = base.weight.shape
        self.lora_a = nn.Parameter(torch.empty(config.rank, in_features, device=base.weight.device, dtype=base.weight.dtype))
        self.lora_b = nn.Parameter(torch.empty(out_features, config.rank, device=base.weight.device, dtype=base.weight.dtype))
        self.scale = config.alpha / config.rank
        self.drop = nn.Dropout(config.dropout)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # nn.Linear's own init, as in the paper's code
        nn.init.zeros_(self.lora_b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(self.drop(x), self.lora_a), self.lora_b) * self.scale

    def merged(self) -> nn.Linear:
        linear = nn.Linear(self.weight.shape[1], self.weight.shape[0], bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight + self.scale * self.lora_b @ self.lora_a)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear


def _targets(model: nn.Module, names: list[str], kind: type[nn.Module]):
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if name in names and isinstance(child, kind):
                yield parent, name, child


def apply_lora(model: nn.Module, config: LoraConfig) -> nn.Module:
    """Freeze every weight and put adapters on the projections named in `config.targets`."""
    model.requires_grad_(False)
    for parent, name, linear in list(_targets(model, config.targets, nn.Linear)):
        setattr(parent, name, LoRALinear(linear, config))
    return model


def reset_lora(model: nn.Module) -> None:
    """Initialise every adapter again (after `to_empty()` gave a model built on the meta device its memory)."""
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.reset_parameters()


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight: the result is the plain model, trainable again."""
    for parent, name, adapted in list(_targets(model, list(get_args(LoraTarget)), LoRALinear)):
        setattr(parent, name, adapted.merged())
    return model.requires_grad_(True)
