"""Hugging Face folders of the Llama, Mistral and Qwen2 families read as raylm GPTs, and raylm's
tensors given back: tiny random models built and saved by transformers in the test (no downloads),
the logits and greedy tokens of both sides compared in fp32."""

from __future__ import annotations

import json

import pytest
import torch

from raylm.config import ModelConfig
from raylm.errors import RaylmError
from raylm.model.gpt import GPT
from hf_kit import FAMILIES, VOCAB, hf_model
from raylm.model.hf import load_into, model_fields, read_config, to_hf_tensors

pytestmark = pytest.mark.usefixtures("one_thread")

def raylm_model(folder) -> GPT:
    model = GPT(ModelConfig(**model_fields(read_config(str(folder)), str(folder))))
    load_into(model, str(folder))
    return model.eval()


def ids(length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_folder_gives_the_logits_and_greedy_tokens_of_transformers(family, tmp_path):
    theirs = hf_model(family, tmp_path)
    ours = raylm_model(tmp_path)
    idx = ids(48)  # past the 16 positions where llama3 scaling starts to matter
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], theirs(idx).logits, atol=2e-5, rtol=1e-4)
        theirs.generation_config.eos_token_id = None  # a random model may well pick it: no early stop
        expected = theirs.generate(idx[:, :8], max_new_tokens=12, do_sample=False, pad_token_id=0)[:, 8:]
        cache, step, greedy = ours.new_cache(2), idx[:, :8], []
        for _ in range(12):
            step = ours(step, cache=cache)[0][:, -1:].argmax(-1)
            greedy.append(step)
    assert torch.equal(torch.cat(greedy, dim=1), expected)
    config = ours.config
    assert (config.kv_heads, config.tie_embeddings, config.qkv_bias) == (
        theirs.config.num_key_value_heads, theirs.config.tie_word_embeddings, family.startswith("qwen2"))
    assert ours.num_params(non_embedding=False) == sum(p.numel() for p in theirs.parameters()) + (
        (1 if config.tie_embeddings else 2) * (ours.padded_vocab_size - VOCAB) * 64)


@pytest.mark.parametrize("family", ["llama-gqa-untied", "qwen2-qkv-bias"])
def test_raylm_tensors_load_into_transformers_and_score_the_same(family, tmp_path):
    theirs = hf_model(family, tmp_path)
    ours = raylm_model(tmp_path)
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # raylm's own weights now, not the folder's
        theirs.load_state_dict(to_hf_tensors(ours.state_dict(), ours.config), strict=not ours.config.tie_embeddings)
        idx = ids(32, seed=1)
        torch.testing.assert_close(theirs(idx).logits, ours(idx)[0], atol=2e-5, rtol=1e-4)


def test_what_raylm_cannot_compute_is_refused_with_the_key(tmp_path):
    hf = json.loads(json.dumps(hf_model("llama-gqa-untied", tmp_path).config.to_dict()))
    for change, key in [({"model_type": "gemma"}, "model_type 'gemma'"), ({"hidden_act": "gelu"}, "hidden_act"),
                        ({"mlp_bias": True}, "mlp_bias"), ({"rope_parameters": {"rope_type": "yarn"}}, "rope_type 'yarn'")]:
        with pytest.raises(RaylmError, match=key):
            model_fields({**hf, **change}, "folder")
    wider = GPT(ModelConfig(**{**model_fields(hf, "folder"), "mlp_hidden": 128}))
    with pytest.raises(RaylmError, match=r"mlp\.\w+_proj\.weight has shape \((96, 64|64, 96)\), its config.json says \((128, 64|64, 128)\)"):
        load_into(wider, str(tmp_path))
    deeper = GPT(ModelConfig(**{**model_fields(hf, "folder"), "n_layer": 3}))
    with pytest.raises(RaylmError, match=r"no tensor model.layers.2.input_layernorm.weight \(and 8 more\)"):
        load_into(deeper, str(tmp_path))
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(RaylmError, match=r"\.bin weights only; raylm reads safetensors"):
        load_into(wider, str(tmp_path))


def test_a_sliding_window_caps_the_context_where_it_equals_full_attention():
    fields = model_fields({"model_type": "mistral", "num_attention_heads": 4, "hidden_size": 64, "vocab_size": 10,
                           "intermediate_size": 96, "num_hidden_layers": 1, "max_position_embeddings": 32768,
                           "sliding_window": 4096}, "folder")
    assert fields["block_size"] == 4096
