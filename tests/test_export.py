"""`raylm export`: a run's checkpoint as a Hugging Face folder that transformers loads as it is
(AutoModelForCausalLM and AutoTokenizer), scoring and continuing text as raylm does; bf16, sharded
and s3:// folders; runs Hugging Face cannot express refused. Runs are trained in this process
(tests/run_kit.py), so no Ray is needed."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from conftest import shared_file
from raylm.cli import main
from raylm.errors import RaylmError
from raylm.eval.generate import generate
from raylm.export.export import export, parse_size
from raylm.train.checkpoint import load_model
from run_kit import make_run

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "KING HENRY:\nWhat says"


@pytest.fixture(scope="module")
def text() -> str:
    return shared_file("tinyshakespeare.txt").read_text()[:40_000]


@pytest.fixture(scope="module")
def gqa_run(tmp_path_factory, text):
    """Grouped-query heads and an untied lm_head: the options an export must carry over."""
    return make_run(tmp_path_factory.mktemp("runs") / "gqa", text, "model.n_head=4", "model.n_kv_head=2",
                    "model.tie_embeddings=false", steps=20)


def loaded(folder, dtype=torch.float32):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).eval()
    return model, transformers.AutoTokenizer.from_pretrained(str(folder))


def test_transformers_loads_the_export_and_scores_and_continues_text_as_raylm(gqa_run, text, tmp_path):
    main(["export", str(gqa_run), "--output", str(tmp_path / "hf"), "--dtype", "float32"])
    theirs, their_tokenizer = loaded(tmp_path / "hf")
    ours, source = load_model(str(gqa_run))
    our_tokenizer = source.tokenizer.codec
    assert type(theirs).__name__ == "LlamaForCausalLM" and theirs.config.num_key_value_heads == 2
    sample = text[1000:1250]
    ids = our_tokenizer.encode(sample, add_special_tokens=False).ids
    assert their_tokenizer(sample)["input_ids"] == ids  # nothing added before or after a text
    with torch.no_grad():
        window = torch.tensor([ids[:100]])  # within the context of 128
        torch.testing.assert_close(theirs(window).logits, ours(window)[0], atol=2e-5, rtol=1e-4)
        prompt = their_tokenizer(PROMPT, return_tensors="pt")
        out = theirs.generate(**prompt, max_new_tokens=20, do_sample=False)
    continuation = their_tokenizer.decode(out[0, prompt["input_ids"].shape[1]:])
    assert continuation == generate(ours, source.tokenizer, PROMPT, max_new_tokens=20, temperature=0)
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "LlamaForCausalLM" in card and "step 20" in card and "2 key-value heads" in card
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["eos_token_id"] == config["bos_token_id"] == our_tokenizer.token_to_id("<|endoftext|>")
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == sorted(
        ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"])


def test_bf16_and_sharded_exports_load(gqa_run, tmp_path):
    ours = load_model(str(gqa_run))[0]
    ids = torch.arange(40)[None] % ours.vocab_size
    export(str(gqa_run), str(tmp_path / "bf16"), log=lambda _: None)  # bfloat16 by default
    bf16, _ = loaded(tmp_path / "bf16", dtype=torch.bfloat16)
    assert next(bf16.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        torch.testing.assert_close(bf16(ids).logits.float(), ours(ids)[0], atol=0.1, rtol=0.05)
    export(str(gqa_run), str(tmp_path / "sharded"), dtype="float32", max_shard_size="100KB", log=lambda _: None)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 2 and all((tmp_path / "sharded" / f).stat().st_size < 100_000 + 4096 for f in files)  # + header
    sharded, _ = loaded(tmp_path / "sharded")
    with torch.no_grad():
        torch.testing.assert_close(sharded(ids).logits, ours(ids)[0], atol=2e-5, rtol=1e-4)


def test_a_tied_run_exports_to_s3_with_its_matrix_once(s3_server, text, tmp_path):
    env, client = s3_server
    run = make_run(tmp_path / "runs" / "tied", text, steps=5)
    client.create_bucket(Bucket="exports")
    export(str(run), "s3://exports/tied", dtype="float32", log=lambda _: None)
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="exports")["Contents"])
    assert keys == [f"tied/{name}" for name in sorted(["README.md", "config.json", "generation_config.json",
                                                        "model.safetensors", "tokenizer.json", "tokenizer_config.json"])]
    local = tmp_path / "download"
    local.mkdir()
    for key in keys:
        client.download_file("exports", key, str(local / key.split("/", 1)[1]))
    model, _ = loaded(local)
    assert model.config.tie_word_embeddings and model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    from safetensors import safe_open
    with safe_open(str(local / "model.safetensors"), "pt") as weights:
        assert "lm_head.weight" not in weights.keys()


def test_a_run_of_a_mistral_model_exports_as_mistral(text, tmp_path):
    run = make_run(tmp_path / "runs" / "mistral", text, "model.architecture=mistral", "model.n_head=4", "model.n_kv_head=2",
                   steps=2)
    export(str(run), str(tmp_path / "hf"), dtype="float32", log=lambda _: None)
    theirs, _ = loaded(tmp_path / "hf")
    ours = load_model(str(run))[0]
    assert type(theirs).__name__ == "MistralForCausalLM" and theirs.config.sliding_window is None
    ids = torch.arange(60)[None] % ours.vocab_size
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids)[0], atol=2e-5, rtol=1e-4)


def test_what_hugging_face_cannot_express_is_refused_with_the_key(text, tmp_path):
    for override, key in [("model.positions=learned", "model.positions=learned"), ("model.mlp=gelu", "model.mlp=gelu"),
                          ("model.qkv_bias=true model.architecture=llama", "model.qkv_bias=True with model.architecture=llama")]:
        run = make_run(tmp_path / "runs" / override.split("=")[0], text, *override.split(), steps=1)
        with pytest.raises(RaylmError, match=key):
            export(str(run), str(tmp_path / "out"), log=lambda _: None)
        assert not (tmp_path / "out").exists()
    with pytest.raises(RaylmError, match="--max-shard-size 'lots'"):
        parse_size("lots")
    assert parse_size("5GB") == 5 * 10**9 and parse_size("200MB") == 2 * 10**8 and parse_size("1234") == 1234
