"""Learning-rate schedules over the run's progress: warmup capped by the budget, cosine and WSD
decays that end as the budget (steps or time) runs out."""

from __future__ import annotations

import math

import pytest

from raylm.config import TrainConfig
from raylm.train.schedule import describe, learning_rate


def rates(total: int, **keys) -> list[float]:
    """The rate of every step of a run planned for `total` steps (progress by steps)."""
    config = TrainConfig(**keys)
    return [learning_rate(step, step / total, config) for step in range(total)]


def test_warmup_ramps_linearly_then_cosine_decays_to_the_floor():
    lr = rates(1000, lr=1e-3, warmup_steps=50, min_lr_ratio=0.1)
    cosine = [1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * step / 1000)) for step in range(1000)]
    assert lr[:50] == pytest.approx([(step + 1) / 50 * cosine[step] for step in range(50)])
    assert lr[50:] == pytest.approx(cosine[50:])
    assert max(lr) == lr[49] and lr[-1] == pytest.approx(1e-4, rel=1e-4)


def test_a_short_run_ends_its_warmup_at_a_tenth_of_its_steps_and_says_so():
    lr = rates(100, lr=1e-3, warmup_steps=100)  # the default warmup, in a 100-step run
    assert lr[10] == pytest.approx(1e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi * 0.1))))  # warm at step 10
    assert lr[5] == pytest.approx(0.5 * lr[10], rel=0.02) and lr[99] < 0.11e-3
    assert describe(TrainConfig(warmup_steps=100), 100) == (
        "warmup ends at step 10, 10% of the 100 planned, not after train.warmup_steps=100")
    assert describe(TrainConfig(warmup_steps=100), 5000) is None


def test_wsd_holds_the_peak_and_decays_over_the_last_fraction():
    lr = rates(100, lr=2e-3, schedule="wsd", warmup_steps=5, decay_fraction=0.2, min_lr_ratio=0.1)
    assert lr[:5] == pytest.approx([2e-3 * (step + 1) / 5 for step in range(5)])
    assert set(lr[5:80]) == {2e-3}
    assert lr[90] == pytest.approx(2e-3 - 1.8e-3 * 0.5) and lr[99] == pytest.approx(2e-3 - 1.8e-3 * 0.95)
    assert rates(10, schedule="wsd", warmup_steps=0, decay_fraction=0) == [1e-3] * 10


def test_a_time_budget_drives_warmup_and_decay():
    config = TrainConfig(lr=1e-3, schedule="wsd", warmup_steps=50, decay_fraction=0.2, min_lr_ratio=0.1,
                         max_minutes=1)
    # 20 steps into a run whose steps take 0.5 s: 10 s of 60 is past the warmup share of the budget.
    assert learning_rate(20, 10 / 60, config) == 1e-3
    assert learning_rate(20, 3 / 60, config) == pytest.approx(1e-3 * 0.5)  # 3 s: half way into it
    assert learning_rate(100, 0.9, config) == pytest.approx(1e-3 - 0.9e-3 * 0.5)
    assert learning_rate(100, 1.2, config) == pytest.approx(1e-4)  # past the budget: the floor
    assert describe(config, 1000) == ("the wsd schedule runs on the 1-minute budget: warmup ends after 50 steps or "
                                      "6s, and the decay ends as the time runs out (or at step 1000)")
    assert describe(TrainConfig(warmup_steps=0, max_minutes=2), 80) == (
        "the cosine schedule runs on the 2-minute budget: the decay ends as the time runs out (or at step 80)")
