"""Hugging Face folders wherever raylm takes a model: evaluate and generate read one as
transformers does (its BOS before a text, its end-of-text token), from local disk or S3; prepare
tokenizes with its tokenizer; a chat template renders instruction pairs; and a full fine-tune on
real Ray Train under FSDP2, each worker reading only its shards, exports back to the family it came
from, which transformers loads and scores as raylm does (one fit). The LoRA chat fine-tune of a
folder runs as the README writes it, in tests/test_readme.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from conftest import shared_file
from hf_kit import hf_model, hf_tokenizer, transformers_greedy, transformers_loss
from raylm.config import ModelConfig, load_config
from raylm.data.instructions import encode_pairs
from raylm.data.tokenizer import TokenizerFiles
from raylm.errors import RaylmError
from raylm.eval.evaluate import evaluate
from raylm.eval.generate import generate
from raylm.export.export import export
from raylm.model.hf import model_fields, read_config
from raylm.train.checkpoint import load_model

STEPS = ["train.workers=2", "train.max_steps=6", "train.log_every=1", "train.eval_every=6", "train.checkpoint_every=6",
         "train.warmup_steps=0", "train.batch_size=4", "train.lr=3e-3"]
PROMPT = "ROMEO:\n"


@pytest.fixture(scope="module")
def text() -> str:
    return shared_file("tinyshakespeare.txt").read_text()[:60_000]


@pytest.fixture(scope="module")
def heldout(tmp_path_factory, text) -> Path:
    path = tmp_path_factory.mktemp("heldout") / "heldout.txt"
    path.write_text(text[50_000:52_000])
    return path


@pytest.fixture(scope="module")
def mistral(tmp_path_factory, text) -> Path:
    """A Mistral folder (GQA, untied, head_dim 24) whose tokenizer puts <s> first, ends with </s>
    and has a chat template."""
    folder = tmp_path_factory.mktemp("mistral")
    hf_tokenizer(folder, text, "llama")
    hf_model("mistral", folder, bos_token_id=0, eos_token_id=1)
    return folder


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory, text) -> Path:
    """A Qwen2 folder (qkv biases, tied) whose tokenizer adds nothing and ends with <|endoftext|>."""
    folder = tmp_path_factory.mktemp("qwen2")
    hf_tokenizer(folder, text, "qwen2")
    hf_model("qwen2-qkv-bias", folder, eos_token_id=0)
    return folder


def test_a_folder_is_scored_and_continued_as_transformers_does(mistral, heldout):
    files = TokenizerFiles.read(str(mistral))
    their_tokenizer = transformers.AutoTokenizer.from_pretrained(mistral)
    their_ids = their_tokenizer(PROMPT)["input_ids"]
    assert files.codec.encode(PROMPT).ids == their_ids and their_ids[0] == 0  # <s> first, as transformers puts it
    report = evaluate(str(mistral), [str(heldout)])  # windows of the model's context, 64
    loss, count = transformers_loss(mistral, heldout, 64)
    assert report["tokens"] == count and report["loss"] == pytest.approx(loss, rel=1e-5)
    model, source = load_model(str(mistral))
    assert source.hf and source.config.model.architecture == "mistral" and files.eos_token == "</s>"
    assert generate(model, source.tokenizer, PROMPT, max_new_tokens=12, temperature=0) == transformers_greedy(mistral, PROMPT, 12)


def test_a_folder_on_s3_is_read_by_ranges_as_from_disk(s3_server, qwen2):
    _, client = s3_server
    client.create_bucket(Bucket="models")
    for path in qwen2.iterdir():
        client.upload_file(str(path), "models", f"qwen2/{path.name}")
    remote, source = load_model("s3://models/qwen2")
    local = load_model(str(qwen2))[0]
    assert source.tokenizer == TokenizerFiles.read(str(qwen2))
    ids = torch.arange(40)[None] % 300
    with torch.no_grad():
        assert torch.equal(remote(ids)[0], local(ids)[0])


def test_chat_rows_learn_exactly_the_assistant_turn(mistral, qwen2):
    their_tokenizer = transformers.AutoTokenizer.from_pretrained(mistral)
    user, assistant = {"role": "user", "content": "Who is there?"}, {"role": "assistant", "content": "Nay, answer me."}

    def their_ids(messages, add_generation_prompt):
        rendered = their_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        return their_tokenizer(rendered, add_special_tokens=False)["input_ids"]

    whole, prompt = their_ids([user, assistant], False), their_ids([user], True)
    files = TokenizerFiles.read(str(mistral))
    tokens, mask, fits, learned_bytes = encode_pairs([(user["content"], assistant["content"])], files, seq_len=48, chat=True)
    assert fits == [True] and tokens[0, : len(whole)].tolist() == whole
    assert mask[0].nonzero()[0].tolist() == list(range(len(prompt), len(whole)))
    assert their_tokenizer.decode(tokens[0, mask[0] == 1]) == "Nay, answer me.</s>\n" and learned_bytes == [len("Nay, answer me.</s>\n")]
    # plain rows start as a document does after another: the end-of-text, then this tokenizer's <s>
    tokens, mask, _, _ = encode_pairs([(user["content"], assistant["content"])], files, seq_len=48)
    assert tokens[0, :2].tolist() == [1, 0] and their_tokenizer.decode(tokens[0, mask[0] == 1]) == "Nay, answer me.</s>"
    with pytest.raises(RaylmError, match="no chat_template"):
        encode_pairs([("a", "b")], TokenizerFiles.read(str(qwen2)), seq_len=48, chat=True)


def test_a_folder_without_what_raylm_needs_is_refused_in_one_line(mistral, heldout, tmp_path):
    broken = tmp_path / "no-tokenizer"
    broken.mkdir()
    for name in ("config.json", "model.safetensors"):
        (broken / name).write_bytes((mistral / name).read_bytes())
    out = subprocess.run([sys.executable, "-m", "raylm", "evaluate", "--checkpoint", str(broken), str(heldout)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "has no tokenizer.json" in out.stderr
    with pytest.raises(RaylmError, match="is a Hugging Face model folder already"):
        export(str(mistral), str(tmp_path / "out"), log=lambda _: None)


@pytest.mark.timeout(300)
def test_full_fsdp_finetune_reads_each_workers_shards_and_exports_qwen2(ray_session, run_prepare, qwen2, mistral, text,
                                                                       heldout, tmp_path):
    from raylm.finetune.finetune import finetune
    from raylm.train.trainer import plan_pretrain

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text[:50_000])
    manifest = run_prepare(f"data.sources=[{corpus}]", "data.filters.profile=none", "data.dedup.near=false",
                           "data.seq_len=32", "data.split.val=0.1", "data.split.test=0", "data.split.part_chars=2000",
                           f"data.tokenizer.path={qwen2 / 'tokenizer.json'}")
    prepared = tmp_path / "prepared"
    assert manifest["tokenizer"]["eos_token"] == "<|endoftext|>" and (prepared / "tokenizer_config.json").exists()
    # continued pretraining takes the folder's model; data from another tokenizer is refused
    job = plan_pretrain(load_config(None, [f"train.init={qwen2}", f"train.data={prepared}", f"train.storage={tmp_path}"]))
    assert job.init.hf and job.config.model == ModelConfig(**model_fields(read_config(str(qwen2)), "qwen2"))
    with pytest.raises(RaylmError, match="prepared with another tokenizer than train.init's"):
        plan_pretrain(load_config(None, [f"train.init={mistral}", f"train.data={prepared}"]))

    config = load_config(None, [f"finetune.init={qwen2}", f"train.data={prepared}", f"train.storage={tmp_path / 'runs'}",
                                "train.strategy=fsdp", *STEPS])
    assert finetune(config, log=lambda _: None).error is None
    run = tmp_path / "runs" / "finetune"
    report = json.loads((run / "finetune.json").read_text())
    assert report["after"]["loss"] < report["before"]["loss"]
    per_worker = json.loads((run / "start.json").read_text())["bytes_read_per_worker"]
    weights = qwen2 / "model.safetensors"
    tensor_bytes = weights.stat().st_size - 8 - int.from_bytes(weights.read_bytes()[:8], "little")
    assert sum(per_worker) == tensor_bytes and max(per_worker) < 0.6 * tensor_bytes  # each its own rows, once

    exported = Path(export(str(run), str(tmp_path / "hf"), dtype="float32", log=lambda _: None))
    assert json.loads((exported / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
    loss, count = transformers_loss(exported, heldout, 32)
    scored = evaluate(str(run), [str(heldout)])
    assert scored["tokens"] == count and scored["loss"] == pytest.approx(loss, rel=1e-5)
