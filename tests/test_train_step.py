"""What a training step costs beyond its maths, in one process (a one-rank gloo group, no Ray):
no DDP wrapper for one worker, and no host synchronisation from the time budget off log steps."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from raylm.config import ModelConfig
from raylm.model.gpt import GPT
from raylm.train.loop import Batches, TrainingClock
from raylm.train.parallelize import gradient_sync, parallelize

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def one_rank(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def losses(model: torch.nn.Module, steps: int = 4) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = torch.randint(0, 256, (4, 33), generator=torch.Generator().manual_seed(0))
    out = []
    for micro in range(steps):
        with gradient_sync(model, enabled=micro % 2 == 1):  # accumulation over two micro-steps
            _, loss = model(data[:, :-1], data[:, 1:])
            loss.backward()
        if micro % 2 == 1:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        out.append(loss.item())
    return out


def tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(preset="tiny", vocab_size=256))


def test_one_worker_trains_without_ddp_and_its_losses_are_those_under_ddp(one_rank):
    plain = parallelize(tiny(), "ddp", torch.device("cpu"), compile=False, activation_checkpointing=False)
    assert isinstance(plain, GPT)
    assert losses(plain) == losses(DistributedDataParallel(tiny()))


def test_a_time_budget_synchronises_the_host_on_log_steps_only(one_rank, monkeypatch):
    calls = []
    broadcast, item = dist.broadcast, torch.Tensor.item
    monkeypatch.setattr(dist, "broadcast", lambda *a, **k: calls.append("broadcast") or broadcast(*a, **k))
    monkeypatch.setattr(torch.Tensor, "item", lambda self: calls.append("item") or item(self))
    clock = TrainingClock(seconds_before=100.0, step=50, budget_seconds=600.0, device=torch.device("cpu"))
    seconds = []
    for step in range(51, 71):
        seconds.append(clock.seconds(step, synchronise=step % 10 == 0))
        assert calls == ["broadcast", "item"] * (step // 10 - 5), step  # steps 60 and 70 only
    # Between log steps every worker counts on at the last interval's mean step time.
    per_step = (seconds[9] - 100.0) / 10
    assert seconds[:9] == [100.0] * 9 and seconds[10:19] == pytest.approx([seconds[9] + k * per_step for k in range(1, 10)])
    assert seconds[19] >= seconds[9]
    no_budget = TrainingClock(seconds_before=0.0, step=0, budget_seconds=None, device=torch.device("cpu"))
    calls.clear()
    no_budget.seconds(10, synchronise=True)
    assert calls == []  # a worker's own clock: nothing to agree on


class _ListShard:
    """The part of a dataset shard's interface Batches uses, over a list of rows."""

    def __init__(self, rows: int):
        self.rows = rows

    def iter_torch_batches(self, batch_size: int, drop_last: bool = False):
        return ({"tokens": torch.arange(start, start + batch_size)} for start in range(0, self.rows - batch_size + 1, batch_size))


def test_a_saved_position_past_a_smaller_share_starts_the_next_epoch():
    """Resumed on more workers (an elastic run growing back), each share is smaller than the one
    the position was saved in: the stream moves to the next epoch instead of failing."""
    batches = Batches(_ListShard(rows=12), batch_size=4, shuffle_buffer=0, seed=0, epoch=2, consumed=5)
    assert (batches.epoch, batches.consumed) == (3, 0)
    assert batches.next()["tokens"].tolist() == [0, 1, 2, 3] and batches.consumed == 1
    resumed = Batches(_ListShard(rows=12), batch_size=4, shuffle_buffer=0, seed=0, epoch=2, consumed=2)
    assert resumed.next()["tokens"].tolist() == [8, 9, 10, 11] and (resumed.epoch, resumed.consumed) == (2, 3)
