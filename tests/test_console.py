"""A newcomer's first run, through the console script with the defaults: one book prepares into
train and held-out text that share nothing, its 512-token windows train a model of 128 tokens of
context, and the console shows raylm's lines only (Ray's go to its session logs)."""

from __future__ import annotations

import json
import re

import pytest

from conftest import load_manifest, raylm_command, split_documents
from raylm.config import load_config

pytestmark = pytest.mark.timeout(300)
RAYLM_LINE = re.compile(r"^(raylm: |prepare: |pretrain: |step \d+/\d+ \| |eval (step \d+|before training) \| |"
                        r"2 workers on 1 node, )")
# Ray's C++ core worker logs errors to the driver's stderr, which Python cannot filter: one line when Ray Data
# starts an actor pool, a false alarm about restarts (ray-project/ray#57733, open).
RAY_CORE_WORKER_LINE = re.compile(r"^\[[\d-]+ [\d:,]+ E \d+ \d+\] core_worker\.cc:\d+: Actor with class name: "
                                  r"'MapWorker\(MapBatches\(TokenizeAndWrite\)\)'.*has constructor arguments")


def test_one_book_prepares_with_defaults_into_train_and_held_out_text_that_share_nothing(default_prepared):
    output, _ = default_prepared
    manifest = load_manifest(output)
    kept = manifest["documents"]["kept_per_split"]
    assert manifest["files"]["read"] == 1 and kept["train"] >= 15 and kept["val"] >= 1 and kept["test"] >= 1
    assert manifest["split"]["part_chars"] == 65_536 and manifest["split"]["moved"]  # 1% of 18 parts: filled
    train = "\n".join(split_documents(output, manifest, "train"))
    held_out = [doc for split in ("val", "test") for doc in split_documents(output, manifest, split)]
    paragraphs = [p for doc in held_out for p in doc.split("\n\n") if len(p) >= 100]
    assert len(paragraphs) > 100 and not [p for p in paragraphs if p in train]
    assert sum(s["bytes"] for s in manifest["splits"].values()) > 0.99 * manifest["files"]["bytes"]


def test_a_default_run_prints_raylm_lines_only_and_trains_on_windows_longer_than_its_context(default_prepared, tmp_path):
    output, prepare_lines = default_prepared
    pretrain_lines = raylm_command("pretrain", f"train.data={output}", "model.preset=shakespeare", "train.max_steps=100",
                                   "train.eval_every=25", "train.batch_size=2", cwd=tmp_path)
    lines = [line for line in prepare_lines + pretrain_lines if not RAY_CORE_WORKER_LINE.match(line)]
    assert len(prepare_lines + pretrain_lines) < 40
    assert [line for line in lines if not RAYLM_LINE.match(line)] == []
    assert sum("Ray's own logs are in /tmp/ray/session_" in line for line in lines) == 2  # once per command
    assert any(line.startswith("prepare: wrote ") for line in prepare_lines)
    assert "pretrain: warmup ends at step 10, 10% of the 100 planned, not after train.warmup_steps=100" in pretrain_lines
    assert len([line for line in pretrain_lines if line.startswith("eval step ")]) == 4

    run = tmp_path / "runs" / "pretrain"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 100 and records[-1]["val_bpb"] < records[0]["loss"] / 0.69
    manifest = load_manifest(output)
    assert manifest["seq_len"] == 512
    # Each 513-token window is four rows of the model's 128 + 1: every token predicted once, none lost.
    assert records[-1]["tokens"] == 100 * 2 * 2 * 128
    assert load_config(run / "config.yaml").data.seq_len == 128  # the rows it trained on, for evaluate
