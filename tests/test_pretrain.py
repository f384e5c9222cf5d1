"""`pretrain` on real Ray Train with 2 CPU workers: metrics, checkpoints, exact resume, FSDP2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shared_file
from raylm.config import load_config
from raylm.errors import RaylmError

pytestmark = pytest.mark.timeout(300)
STEPS = ["train.max_steps=16", "train.log_every=1", "train.eval_every=8", "train.checkpoint_every=4",
         "train.warmup_steps=2", "train.lr=2e-3", "train.eval_batches=2", "train.batch_size=8", "train.shuffle_buffer=64"]


@pytest.fixture(scope="module")
def prepared(ray_session, tmp_path_factory) -> Path:
    from raylm.data.prepare import prepare

    out = tmp_path_factory.mktemp("data") / "shakespeare"
    corpus = shared_file("tinyshakespeare.txt")
    prepare(load_config(None, [f"data.sources=[{corpus}]", r"data.document_separator='\n\n'", "data.filters.profile=none",
                               "data.dedup.exact=false", "data.dedup.near=false", "data.tokenizer.vocab_size=320", "data.seq_len=32",
                               "data.split.val=0.05", "data.split.test=0.05", f"data.output={out}"]), log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def reference_run(prepared, tmp_path_factory) -> Path:
    """The uninterrupted run: checked on its own, and reproduced by the interrupted ones."""
    runs = tmp_path_factory.mktemp("runs")
    assert train(prepared, runs, "ref", "train.keep_checkpoints=2").error is None
    return runs / "ref"


@pytest.fixture(scope="module")
def reference(reference_run) -> dict[int, float]:
    return dict(losses(reference_run))


def config(prepared: Path, runs: Path, name: str, *overrides: str):
    return load_config(None, [f"train.data={prepared}", f"train.storage={runs}", f"train.name={name}", *STEPS, *overrides])


def train(prepared: Path, runs: Path, name: str, *overrides: str, log=lambda _: None):
    from raylm.train.trainer import pretrain

    return pretrain(config(prepared, runs, name, *overrides), log=log)


def losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def split_at_resume(history: list[tuple[int, float]]) -> tuple[list, list, int]:
    """(steps logged before the fault, steps after the resume, step resumed from)."""
    steps = [step for step, _ in history]
    restart = next(i for i in range(1, len(steps)) if steps[i] <= steps[i - 1])
    return history[:restart], history[restart:], steps[restart] - 1


def test_tiny_model_trains_writes_metrics_checkpoints_and_evaluates(reference_run):
    run = reference_run
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 17))
    assert records[-1]["loss"] < records[0]["loss"] - 0.5
    assert {"lr", "grad_norm", "tokens_per_s", "step_ms"} <= set(records[0]) and records[0]["mfu"] is None
    assert {"val_loss", "val_ppl", "val_bpb"} <= set(records[7]) and records[15]["val_bpb"] < records[7]["val_bpb"]
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-0000012", "checkpoint-0000016"]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert load_config(run / "config.yaml").model.vocab_size == 320
    out = subprocess.run([sys.executable, "-m", "raylm", "evaluate", "--checkpoint", str(run), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["checkpoint"].endswith("checkpoint-0000016") and "test split" in report["data"]
    assert 0 < report["bits_per_byte"] < records[0]["loss"] / 0.69 and report["loss"] < records[0]["loss"]


def test_evaluate_scores_text_files_in_training_windows_and_refuses_bad_ones(reference_run, tmp_path):
    from tokenizers import Tokenizer

    from raylm.eval.evaluate import evaluate

    text = shared_file("tinyshakespeare.txt").read_text()[:6000]
    files = [tmp_path / "a.txt", tmp_path / "b.txt"]
    files[0].write_text(text[:4000])
    files[1].write_text(text[4000:])
    report = evaluate(str(reference_run), [str(f) for f in files])
    tokenizer = Tokenizer.from_file(str(reference_run / "tokenizer.json"))
    assert report["bytes"] == len(text.encode())
    # Each file then EOS, as in training; every token but the very first is predicted once.
    assert report["tokens"] == sum(len(tokenizer.encode(f.read_text()).ids) + 1 for f in files) - 1
    assert report["data"] == f"{files[0]}, {files[1]}" and 0 < report["bits_per_byte"] < 8
    assert load_config(reference_run / "config.yaml").data.seq_len == 32  # the windows it trained on
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(RaylmError, match="no text to evaluate in"):
        evaluate(str(reference_run), [str(tmp_path / "empty.txt")])
    out = subprocess.run([sys.executable, "-m", "raylm", "evaluate", "--checkpoint", str(reference_run), "missing.txt"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2 and "cannot read" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "raylm", "evaluate", "--checkpoint", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and f"no checkpoint in {tmp_path}" in out.stderr

def test_a_corrupt_checkpoint_is_skipped_with_a_warning_and_the_run_resumes_from_the_one_before(
        prepared, reference_run, reference, tmp_path, capsys):
    from raylm.train.checkpoint import load_model
    from raylm.train.checkpoint import latest_complete

    run = tmp_path / "ref"
    shutil.copytree(reference_run, run)
    shard = next((run / "checkpoint-0000016" / "weights").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-64])  # truncated, as by a full disk or a killed upload
    warned = []
    assert latest_complete(str(run), warn=warned.append) == str(run / "checkpoint-0000012")
    assert warned == [f"checkpoint {run / 'checkpoint-0000016'} is corrupt (weights/{shard.name} does not match its "
                      "checksum): skipped, using an older one"]
    assert load_model(str(run))[1].checkpoint == str(run / "checkpoint-0000012")
    assert "raylm: warning: checkpoint" in capsys.readouterr().err

    said = []
    assert train(prepared, tmp_path, "ref", log=said.append).error is None
    assert any("is corrupt" in line for line in said) and any("resuming from step 12" in line for line in said)
    _, after, resumed_from = split_at_resume(losses(run))
    assert resumed_from == 12 and after == [(step, reference[step]) for step in range(13, 17)]


def test_a_failed_run_resubmitted_resumes_and_then_a_worker_death_restarts_it_exactly(prepared, reference, tmp_path):
    """A run with no restarts allowed dies stepping 6 and fails; submitted again it resumes from its
    step-4 checkpoint, its rank-0 worker dies stepping 10 and Ray Train restarts it from step 8:
    every step logged, each time, has the uninterrupted run's loss, or a resume was not exact."""
    from raylm.train.trainer import build_trainer, plan_pretrain

    with pytest.raises(Exception):
        train(prepared, tmp_path, "again", "train.fault_at_step=6")
    assert [step for step, _ in losses(tmp_path / "again")] == list(range(1, 6))  # rank 0 died stepping 6, before logging it
    said = []
    result = train(prepared, tmp_path, "again", "train.fault_at_step=10", "train.max_failures=1", log=said.append)
    assert result.error is None
    assert f"pretrain: resuming from step 4 ({tmp_path / 'again' / 'checkpoint-0000004'})" in said
    logged = [*range(1, 6), *range(5, 10), *range(9, 17)]  # resubmitted at 4, restarted at 8
    assert losses(tmp_path / "again") == [(step, reference[step]) for step in logged], "losses after a resume differ"
    said.clear()  # the finished run, set up again on one worker: the driver says why the data order differs
    build_trainer(plan_pretrain(config(prepared, tmp_path, "again", "train.workers=1")), log=said.append)
    assert any(line.startswith("pretrain: resuming from step 16") and "saved by 2 workers and this run has 1" in line
               for line in said)


def test_fsdp2_on_cpu_trains_checkpoints_and_resumes_exactly(prepared, tmp_path):
    """A run that dies at step 7 and resumes from its step-4 checkpoint computes steps 5 and 6
    twice: bit for bit the same losses, or the resume was not exact."""
    assert train(prepared, tmp_path, "fsdp", "train.strategy=fsdp", "train.fault_at_step=7", "train.max_failures=1").error is None
    before, after, resumed_from = split_at_resume(losses(tmp_path / "fsdp"))
    assert resumed_from == 4 and [step for step, _ in before + after] == [*range(1, 7), *range(5, 17)]
    assert after[:2] == before[4:6]
    assert after[-1][1] < before[0][1] - 0.5


def test_pretrain_refuses_mismatched_data_before_starting(prepared, tmp_path):
    with pytest.raises(RaylmError, match=r"seq_len \(32\) is larger than model.block_size \(24\) and not a multiple of it"):
        train(prepared, tmp_path, "x", "model.block_size=24")
    with pytest.raises(RaylmError, match="no prepared dataset at"):
        train(tmp_path / "nothing", tmp_path, "x")
    with pytest.raises(RaylmError, match="fewer than train.workers x train.batch_size"):
        train(prepared, tmp_path, "x", "train.batch_size=100000")
    with pytest.raises(RaylmError, match="smaller than the data's tokenizer"):
        train(prepared, tmp_path, "x", "model.vocab_size=100")


def test_a_small_split_is_shared_out_from_the_object_store_in_equal_seeded_shares(ray_session):
    import numpy as np
    import pyarrow as pa
    import ray

    from raylm.train.loop import MemoryShard

    windows = np.arange(11 * 5, dtype=np.uint16).reshape(11, 5)
    ref = ray.put(pa.table({"tokens": pa.FixedSizeListArray.from_arrays(pa.array(windows.ravel()), 5)}))
    shares = [MemoryShard(ref, rank, world=2) for rank in range(2)]
    in_order = [np.concatenate([b["tokens"].numpy() for b in share.iter_torch_batches(batch_size=2)]) for share in shares]
    assert (np.concatenate(in_order) == windows[:10]).all()  # 5 rows each, in order; the 11th row is left out

    def shuffled(seed: int) -> list:
        return [b["tokens"].numpy().tolist() for b in shares[1].iter_torch_batches(
            batch_size=2, drop_last=True, local_shuffle_buffer_size=64, local_shuffle_seed=seed)]

    assert shuffled(3) == shuffled(3) != shuffled(4) and [len(batch) for batch in shuffled(3)] == [2, 2]
    assert {tuple(row) for batch in shuffled(3) for row in batch} < {tuple(row) for row in windows[5:10].tolist()}

