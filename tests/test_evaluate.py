"""`raylm evaluate` on a run folder trained in-process (tests/run_kit.py): bits per byte and the
unigram baseline against hand computations, Ray scoring against in-process scoring, the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch
from tokenizers import Tokenizer

from raylm.data.pack import model_rows
from raylm.data.tokenizer import EOS, fingerprint
from raylm.errors import RaylmError
from raylm.eval.evaluate import evaluate
from raylm.train.checkpoint import load_model
from run_kit import SEQ_LEN, make_run

ANIMALS, THINGS, COLOURS = ["cat", "dog", "owl", "fox", "hen"], ["mat", "log", "rug", "box"], ["red", "blue", "green"]
CORPUS = "\n".join(f"The {ANIMALS[i % 5]} number {i} sat on the {THINGS[i % 4]}, and it was {COLOURS[i % 3]}."
                   for i in range(60))
HELDOUT = "The naïve owl sat on the café mat — blue."  # multi-byte UTF-8 characters


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("evaluate") / "run", CORPUS, steps=5)


def test_bits_per_byte_and_baseline_match_a_hand_computation(run, tmp_path):
    text_file = tmp_path / "heldout.txt"
    text_file.write_text(HELDOUT)
    report = evaluate(str(run), [str(text_file)])

    tokenizer = Tokenizer.from_file(str(run / "tokenizer.json"))
    ids = [*tokenizer.encode(HELDOUT, add_special_tokens=False).ids, tokenizer.token_to_id(EOS)]
    assert len(ids) <= SEQ_LEN + 1, "the hand computation assumes one window"
    model = load_model(str(run))[0]
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids[:-1]]))
    log_probs = torch.log_softmax(logits[0].double(), dim=-1)
    nats = -sum(log_probs[position, token].item() for position, token in enumerate(ids[1:]))
    nbytes = len(HELDOUT.encode("utf-8"))
    assert nbytes > len(HELDOUT)
    predicted = len(ids) - 1
    assert report["tokens"] == predicted and report["bytes"] == nbytes and report["workers"] == 0
    assert report["bits_per_byte"] == pytest.approx(nats / math.log(2) / nbytes, rel=1e-5)

    entropy = -sum(c / predicted * math.log(c / predicted) for c in Counter(ids[1:]).values())
    assert report["baseline"] == pytest.approx({"loss": entropy, "perplexity": math.exp(entropy),
                                                "bits_per_byte": entropy / math.log(2) * predicted / nbytes})


def write_prepared(folder: Path, run: Path, text: str, shards: int, seq_len: int = SEQ_LEN) -> np.ndarray:
    """A prepared folder as `raylm prepare` lays it out, built by hand (no Ray, so fast): `text`
    packed into windows of seq_len + 1 tokens, all in the test split, over `shards` Parquet files.
    Returns the windows."""
    tokenizer = Tokenizer.from_file(str(run / "tokenizer.json"))
    ids = np.array([*tokenizer.encode(text, add_special_tokens=False).ids, tokenizer.token_to_id(EOS)], dtype=np.uint16)
    windows = ids[: len(ids) // (seq_len + 1) * (seq_len + 1)].reshape(-1, seq_len + 1)
    (folder / "test").mkdir(parents=True)
    names = [f"test/part-{i}.parquet" for i in range(shards)]
    for name, part in zip(names, np.array_split(windows, shards)):
        pq.write_table(pa.table({"tokens": pa.FixedSizeListArray.from_arrays(pa.array(part.ravel()), seq_len + 1)}),
                       folder / name)
    empty = {"documents": 0, "bytes": 0, "tokens": 0, "sequences": 0, "shards": []}
    test = {"documents": 1, "bytes": len(text.encode()), "tokens": len(ids), "sequences": len(windows), "shards": names}
    sha256 = fingerprint((run / "tokenizer.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({"seq_len": seq_len, "tokenizer": {"sha256": sha256},
                                                      "splits": {"train": empty, "val": empty, "test": test}}))
    return windows


def test_model_rows_predict_every_token_of_a_long_window_once():
    windows = np.arange(3 * 513).reshape(3, 513)  # data.seq_len 512
    rows = model_rows(windows, 128)  # model.block_size 128
    assert rows.shape == (12, 129)
    inputs, targets = rows[:, :-1], rows[:, 1:]
    assert (inputs.reshape(3, 512) == windows[:, :-1]).all() and (targets.reshape(3, 512) == windows[:, 1:]).all()
    assert (model_rows(windows, 512) == windows).all()


def test_windows_longer_than_the_model_context_are_scored_as_rows_of_it(run, tmp_path):
    windows = write_prepared(tmp_path / "prepared", run, CORPUS * 3, shards=2, seq_len=4 * SEQ_LEN)
    model = load_model(str(run))[0]
    assert model.config.block_size == 128 > SEQ_LEN
    short_context = make_run(tmp_path / "short", CORPUS, f"model.block_size={SEQ_LEN}", steps=1)
    report = evaluate(str(short_context), [str(tmp_path / "prepared")])
    rows = torch.from_numpy(model_rows(windows, SEQ_LEN).astype(np.int64))
    with torch.no_grad():
        _, loss = load_model(str(short_context))[0](rows[:, :-1], rows[:, 1:])
    assert report["tokens"] == windows.shape[0] * 4 * SEQ_LEN and report["loss"] == pytest.approx(loss.item(), rel=1e-5)
    with pytest.raises(RaylmError, match=r"seq_len \(128\) is larger than model.block_size \(48\) and not a multiple"):
        evaluate(str(make_run(tmp_path / "odd", CORPUS, "model.block_size=48", steps=1)), [str(tmp_path / "prepared")])
    with pytest.raises(RaylmError, match="prepared with another tokenizer than the model's"):
        evaluate(str(make_run(tmp_path / "other", CORPUS, steps=1, vocab_size=280)), [str(tmp_path / "prepared")])


@pytest.mark.timeout(120)
def test_scoring_on_ray_matches_scoring_in_process_on_a_prepared_split(run, ray_session, tmp_path):
    write_prepared(tmp_path / "prepared", run, CORPUS.replace("sat on", "slept under"), shards=2)
    local = evaluate(str(run), [str(tmp_path / "prepared")])
    on_ray = evaluate(str(run), [str(tmp_path / "prepared")], workers=2)
    assert local["workers"] == 0 and on_ray["workers"] == 2 and "test split" in on_ray["data"]
    assert on_ray["tokens"] == local["tokens"] > 0 and on_ray["bytes"] == local["bytes"]
    assert on_ray["loss"] == pytest.approx(local["loss"], rel=1e-6)
    assert on_ray["baseline"] == pytest.approx(local["baseline"], rel=1e-9)


@pytest.mark.timeout(120)
def test_large_text_goes_to_ray_by_itself_and_scores_the_same(run, ray_session, tmp_path, monkeypatch):
    text_file = tmp_path / "heldout.txt"
    text_file.write_text(CORPUS)
    local = evaluate(str(run), [str(text_file)])
    monkeypatch.setattr("raylm.eval.evaluate.RAY_WINDOWS", 2)
    on_ray = evaluate(str(run), [str(text_file)])
    assert local["workers"] == 0 and on_ray["workers"] == ray.cluster_resources()["CPU"]  # one per CPU
    assert on_ray["tokens"] == local["tokens"] and on_ray["loss"] == pytest.approx(local["loss"], rel=1e-6)
    assert on_ray["baseline"] == pytest.approx(local["baseline"], rel=1e-9)


def raylm_evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raylm", "evaluate", *args], capture_output=True, text=True, timeout=120)


def test_cli_prints_a_table_with_the_baseline_or_json(run, tmp_path):
    text_file = tmp_path / "heldout.txt"
    text_file.write_text(HELDOUT)
    table = raylm_evaluate("--checkpoint", str(run), str(text_file))
    assert table.returncode == 0, table.stderr[-2000:]
    lines = table.stdout.splitlines()
    assert lines[-2].startswith("model ") and lines[-1].startswith("unigram baseline (no training) ")
    assert "bits/byte" in lines[-3] and "scored by this process" in lines[1]

    report = json.loads(raylm_evaluate("--checkpoint", str(run), "--json", str(text_file)).stdout)
    assert set(report["baseline"]) == {"loss", "perplexity", "bits_per_byte"}
    assert f"{report['baseline']['bits_per_byte']:.4f}" == lines[-1].split()[-1]


def test_cli_refuses_a_folder_that_is_not_a_run(tmp_path):
    out = raylm_evaluate("--checkpoint", str(tmp_path))
    errors = out.stderr.splitlines()
    assert out.returncode == 2 and out.stdout == ""
    assert len(errors) == 1 and errors[0].startswith("raylm: error: ") and str(tmp_path) in errors[0]
