"""`finetune`: full fine-tuning on real Ray Train, instruction masking, LoRA, the tokenizer check.
(LoRA on instruction pairs through Ray Train runs end to end in tests/test_demo.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from conftest import shared_file
from raylm.config import load_config
from raylm.data.tokenizer import EOS, TokenizerFiles
from raylm.errors import RaylmError
from raylm.data.instructions import encode_pairs, read_pairs
from raylm.model.lora import apply_lora, merge_lora
from raylm.model.gpt import GPT
from raylm.train.loop import IGNORE_INDEX, inputs_and_targets
from run_kit import make_run

STEPS = ["train.workers=2", "train.max_steps=8", "train.log_every=1", "train.eval_every=8", "train.checkpoint_every=8",
         "train.warmup_steps=0", "train.batch_size=4", "train.lr=3e-3"]


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return shared_file("tinyshakespeare.txt").read_text()[:60_000]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, shakespeare) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "base", shakespeare, steps=40)


def tokenizer_of(run: Path) -> Tokenizer:
    return Tokenizer.from_file(str(run / "tokenizer.json"))


def test_instruction_rows_mask_everything_but_the_response(pretrained):
    tokenizer = tokenizer_of(pretrained)
    pairs = [("Who is there?\n", "Nay, answer me."), ("x " * 40, "too late"), ("x " * 32, "just")]
    tokens, mask, fits, learned_bytes = encode_pairs(pairs, TokenizerFiles.read(str(pretrained)), seq_len=32)
    assert fits == [True, False, False] and learned_bytes[0] == len("Nay, answer me.")  # prompts that fill the window leave no response token to learn
    eos = tokenizer.token_to_id(EOS)
    assert tokens[0, 0] == eos and tokenizer.decode(tokens[0, mask[0] == 1].tolist(), skip_special_tokens=False) == "Nay, answer me." + EOS
    assert tokenizer.decode(tokens[0, 1 : mask[0].argmax()].tolist()) == "Who is there?\n"

    inputs, targets = inputs_and_targets({"tokens": torch.from_numpy(tokens[:1]), "loss_mask": torch.from_numpy(mask[:1])}, "cpu")
    learned = targets != IGNORE_INDEX
    assert learned.sum() == mask[0].sum() and (targets[learned] == torch.from_numpy(tokens[:1, 1:])[learned]).all()
    # The model's loss is the mean over response positions only, by hand:
    torch.manual_seed(0)
    model = GPT(load_config(None, [f"model.vocab_size={tokenizer.get_vocab_size()}"]).model)
    logits, loss = model(inputs, targets)
    by_hand = -torch.log_softmax(logits[0], -1)[learned[0]].gather(1, targets[0][learned[0]][:, None]).mean()
    assert torch.allclose(loss, by_hand)


def test_unusable_instruction_lines_are_counted_by_reason(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\nnot json\n[1, 2]\n{"prompt": "a"}\n{"prompt": "a", "response": 3}\n\n')
    pairs, skipped = read_pairs([str(path)], "prompt", "response")
    assert [p for _, p, _ in pairs] == ["a"]
    assert skipped == {"malformed_json": 1, "non_object_json": 1, "missing_field": 1, "non_string_or_empty_field": 1}


@pytest.mark.parametrize("qkv_bias", [False, True], ids=["no-bias", "qwen2-qkv-bias"])
def test_lora_starts_at_the_base_model_and_merges_into_it(qkv_bias):
    torch.manual_seed(0)
    config = load_config(None, ["model.vocab_size=300", "finetune.lora.rank=4", f"model.qkv_bias={qkv_bias}"])
    model = GPT(config.model)
    if qkv_bias:
        for block in model.blocks:
            torch.nn.init.normal_(block.attn.qkv.bias, std=0.5)  # frozen, and kept by the merge
    x = torch.randint(300, (2, 16))
    base = model(x)[0]
    apply_lora(model, config.finetune.lora)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in name for name in trainable)
    assert len(trainable) == 2 * 5 * config.model.n_layer  # A and B on qkv, proj, w1, w2, w3 of every block
    assert torch.equal(model(x)[0], base)  # B starts at zero
    for name, p in model.named_parameters():
        if name.endswith("lora_b"):
            torch.nn.init.normal_(p, std=0.05)
    adapted = model(x)[0]
    assert not torch.allclose(adapted, base, atol=1e-3)
    merge_lora(model)
    assert not any(".lora_" in name for name in model.state_dict())
    assert torch.allclose(model(x)[0], adapted, atol=1e-5)


@pytest.mark.timeout(300)
def test_full_finetune_on_data_prepared_with_the_runs_tokenizer(ray_session, run_prepare, pretrained, tmp_path):
    from raylm.finetune.finetune import finetune

    corpus = shared_file("wikitext2-valid.txt")
    run_prepare(f"data.sources=[{corpus}]", r"data.document_separator='\n \n'", "data.filters.profile=none",
                "data.dedup.near=false", "data.seq_len=32", "data.split.val=0.1", "data.split.test=0",
                f"data.tokenizer.path={pretrained / 'tokenizer.json'}")
    config = load_config(None, [f"finetune.init={pretrained}", f"train.data={tmp_path / 'prepared'}",
                                f"train.storage={tmp_path / 'runs'}", *STEPS])
    assert finetune(config, log=lambda _: None).error is None
    run = tmp_path / "runs" / "finetune"  # the default name of a fine-tuning run
    report = json.loads((run / "finetune.json").read_text())
    assert report["before"]["step"] == 0 and report["after"]["step"] == 8
    assert report["after"]["loss"] < report["before"]["loss"]
    assert load_config(run / "config.yaml").model == load_config(pretrained / "config.yaml").model
    assert not (run / "merged").exists()


def test_data_from_another_tokenizer_is_refused_before_training(pretrained, tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text(json.dumps(
        {"tokenizer": {"sha256": "0" * 64, "vocab_size": 300}, "seq_len": 32, "splits": {"train": {"sequences": 100}}}))
    out = subprocess.run([sys.executable, "-m", "raylm", "finetune", f"finetune.init={pretrained}",
                          f"train.data={tmp_path / 'other'}", f"train.storage={tmp_path / 'runs'}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "prepared with another tokenizer" in out.stderr and f"data.tokenizer.path={pretrained / 'tokenizer.json'}" in out.stderr


def test_finetune_needs_a_pretrained_run(tmp_path):
    from raylm.finetune.finetune import plan_finetune

    with pytest.raises(RaylmError, match="finetune.init is not set"):
        plan_finetune(load_config(None, []))
    with pytest.raises(RaylmError, match="no checkpoint in"):
        plan_finetune(load_config(None, [f"finetune.init={tmp_path}"]))
