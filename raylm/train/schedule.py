"""Learning-rate schedules: linear warmup, then cosine decay or warmup-stable-decay (WSD), both
over the run's progress — the share of its budget spent, whichever of steps, tokens and time runs
out first — so a run stopped by `train.max_minutes` decays as its time runs out, not part-way; and
the step plan those budgets make (accumulation, tokens per step, planned steps)."""

from __future__ import annotations

import math

from raylm.config import TrainConfig
from raylm.errors import RaylmError

WARMUP_BUDGET_SHARE = 0.1  # warmup ends by 10% of the budget, whatever train.warmup_steps says


def step_plan(train: TrainConfig, seq_len: int, world: int) -> tuple[int, int, int]:
    """(micro-steps per optimizer step, tokens per step, planned steps): gradient accumulation up to
    train.tokens_per_step, and max_steps or fewer when the token budget ends the run sooner. Here,
    free of Ray, so that `raylm plan` counts a run's steps as the training loop does."""
    per_micro_step = train.batch_size * seq_len * world
    accumulate = max(1, round(train.tokens_per_step / per_micro_step)) if train.tokens_per_step else 1
    tokens_per_step = per_micro_step * accumulate
    planned = min(train.max_steps, math.ceil(train.max_tokens / tokens_per_step)) if train.max_tokens else train.max_steps
    return accumulate, tokens_per_step, planned


def rows_per_window(seq_len: int, block_size: int, what: str, fix: str) -> int:
    """1 for windows that fit the model's context; k for windows of k contexts; else an error."""
    if seq_len <= block_size:
        return 1
    if seq_len % block_size:
        raise RaylmError(f"{what} is larger than model.block_size ({block_size}) and not a multiple of it; {fix}, "
                         "or raise model.block_size")
    return seq_len // block_size


def learning_rate(step: int, progress: float, config: TrainConfig) -> float:
    """The rate for optimizer step `step` (0-based), `progress` being the share of the budget
    spent before it (0 to 1). Warmup ramps linearly to the peak over train.warmup_steps, or sooner
    when 10% of the budget is spent first; the decay multiplies it."""
    warmup = 1.0
    if config.warmup_steps:
        warmup = min(1.0, max((step + 1) / config.warmup_steps, progress / WARMUP_BUDGET_SHARE))
    return warmup * _decayed(min(1.0, progress), config)


def _decayed(progress: float, config: TrainConfig) -> float:
    peak, floor = config.lr, config.lr * config.min_lr_ratio
    if config.schedule == "cosine":
        return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))
    decay_start = 1 - config.decay_fraction
    if progress < decay_start or not config.decay_fraction:
        return peak
    return peak - (peak - floor) * (progress - decay_start) / config.decay_fraction


def describe(config: TrainConfig, planned_steps: int) -> str | None:
    """What the schedule will do when it is not simply what the keys say: warmup cut short by a
    short run, or a time budget driving the decay."""
    if config.max_minutes is not None:
        warmup = (f"warmup ends after {config.warmup_steps} steps or {WARMUP_BUDGET_SHARE * config.max_minutes * 60:.0f}s, "
                  "and " if config.warmup_steps else "")
        return (f"the {config.schedule} schedule runs on the {config.max_minutes:g}-minute budget: {warmup}the decay "
                f"ends as the time runs out (or at step {planned_steps})")
    capped = math.ceil(WARMUP_BUDGET_SHARE * planned_steps)
    if config.warmup_steps > capped:
        return (f"warmup ends at step {capped}, 10% of the {planned_steps} planned, not after "
                f"train.warmup_steps={config.warmup_steps}")
    return None
