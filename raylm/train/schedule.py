"""Learning-rate schedules: linear warmup, then cosine decay or warmup-stable-decay (WSD)."""

from __future__ import annotations

import math

from raylm.config import TrainConfig


def learning_rate(step: int, total_steps: int, config: TrainConfig) -> float:
    """The rate for optimizer step `step` (0-based) of a run planned for `total_steps`."""
    peak, floor = config.lr, config.lr * config.min_lr_ratio
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    if config.schedule == "cosine":
        progress = min(1.0, (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps))
        return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))
    decay_start = max(config.warmup_steps, total_steps - round(config.decay_fraction * total_steps))
    if step < decay_start:
        return peak
    return peak - (peak - floor) * min(1.0, (step - decay_start) / max(1, total_steps - decay_start))
