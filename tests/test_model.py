"""The GPT model: shapes, causality, parameter and FLOP counts, tying, init, and that it learns."""

from __future__ import annotations

import math

import pytest
import torch

from raylm.config import ModelConfig, RopeScaling
from raylm.model.gpt import GPT, Block, apply_rope, llama3_scaled, rope_tables

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 512


def build(seed: int = 0, **fields) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(**{"preset": "tiny", "vocab_size": VOCAB, **fields}))


def tokens(batch: int, length: int, vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------- shapes, loss


def test_vocab_size_is_required():
    with pytest.raises(ValueError, match="vocab_size"):
        GPT(ModelConfig(preset="tiny"))


def test_rope_needs_an_even_head_size():
    with pytest.raises(ValueError, match="even head size"):
        build(n_embd=66, n_head=2)
    build(n_embd=66, n_head=2, positions="learned")


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_initial_loss_is_uniform_guess(positions):
    model = build(positions=positions)
    idx = tokens(4, 64)
    logits, loss = model(idx, tokens(4, 64, seed=1))
    assert logits.shape == (4, 64, VOCAB)
    assert abs(loss.item() - math.log(VOCAB)) < 0.3
    assert model(idx)[1] is None


def test_logits_are_sliced_to_the_vocabulary():
    model = build(vocab_size=500)
    assert model.padded_vocab_size == 512
    assert model.wte.weight.shape == (512, 64)
    logits, loss = model(tokens(2, 16, vocab=500), tokens(2, 16, vocab=500, seed=1))
    assert logits.shape == (2, 16, 500)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 500), tokens(2, 16, vocab=500, seed=1).flatten())
    torch.testing.assert_close(loss, expected)


def test_longer_than_block_size_raises():
    model = build(block_size=16)
    model(tokens(1, 16))
    with pytest.raises(ValueError, match="block_size"):
        model(tokens(1, 17))


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_causal(positions):
    model = build(positions=positions).eval()
    idx = tokens(2, 32)
    changed = idx.clone()
    t = 20
    changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % VOCAB
    before, after = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(before[:, : t + 1], after[:, : t + 1])
    assert not torch.allclose(before[:, t + 1 :], after[:, t + 1 :])


def test_rope_scores_depend_on_relative_position_only():
    cos, sin = rope_tables(16, 64, 10000.0)
    q, k = torch.randn(16), torch.randn(16)

    def score(m: int, n: int) -> torch.Tensor:
        return apply_rope(q, cos[m], sin[m]) @ apply_rope(k, cos[n], sin[n])

    torch.testing.assert_close(score(10, 3), score(40, 33))
    assert not torch.allclose(score(10, 3), score(10, 9))
    torch.testing.assert_close(apply_rope(q, cos[7], sin[7]).norm(), q.norm())


# --------------------------------------------------------------------------- counts, FLOPs


def tiny_params_by_hand() -> int:
    d, hidden, layers = 64, 192, 2  # SwiGLU hidden: 8/3 * 64 = 170.7, rounded up to 192
    embedding = VOCAB * d
    block = 3 * d * d + d * d + 3 * d * hidden + 2 * d  # qkv, out-projection, w1/w2/w3, two norms
    return embedding + layers * block + d  # + final norm


def test_num_params_by_hand():
    model = build()
    assert model.num_params() == model.num_params(non_embedding=False) == tiny_params_by_hand() == 139_584
    learned = build(positions="learned", mlp="gelu")
    d = 64
    by_hand = VOCAB * d + 2 * (4 * d * d + 2 * d * 4 * d + 2 * d) + d
    assert learned.num_params() == by_hand
    assert learned.num_params(non_embedding=False) == by_hand + 128 * d
    assert build(mlp_hidden=100).blocks[0].mlp.w1.out_features == 100


def test_flops_per_token():
    model = build()
    attention = 12 * 2 * 2 * 32  # n_layer * n_head * head_dim, times 12
    assert model.flops_per_token() == 6 * tiny_params_by_hand() + attention * 128
    assert model.flops_per_token(seq_len=64) == 6 * tiny_params_by_hand() + attention * 64


# ------------------------------------------------------------------------ tie, param groups


def test_lm_head_is_the_embedding():
    model = build()
    assert model.lm_head.weight is model.wte.weight
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_param_groups_cover_every_parameter_once(positions):
    model = build(positions=positions)
    decay, no_decay = model.param_groups(0.1)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    ids = [id(p) for group in (decay, no_decay) for p in group["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    undecayed = {id(p) for p in no_decay["params"]}
    names = {id(p): name for name, p in model.named_parameters()}
    assert id(model.wte.weight) in undecayed
    assert all("norm" in names[i] or names[i] in ("wte.weight", "wpe.weight") for i in undecayed)
    assert sorted(names[id(p)].split(".", 2)[-1] for p in decay["params"]) == sorted(
        ["attn.qkv.weight", "attn.proj.weight", "mlp.w1.weight", "mlp.w2.weight", "mlp.w3.weight"] * 2
    )


# ------------------------------------------------------- options of imported architectures


def test_grouped_query_heads_share_their_key_value_head():
    """A model with 1 key/value head per 2 query heads computes what the full-headed model does
    whose key/value weights are those heads repeated (each serves the query heads of its group)."""
    gqa = build(n_head=4, n_kv_head=2, n_embd=64)
    full = build(n_head=4, n_embd=64)
    state = gqa.state_dict()
    for i, block in enumerate(gqa.blocks):
        q, k, v = block.attn.qkv.weight.split([64, 32, 32])
        repeat = lambda w: w.view(2, 16, 64).repeat_interleave(2, dim=0).reshape(64, 64)  # noqa: E731
        state[f"blocks.{i}.attn.qkv.weight"] = torch.cat([q, repeat(k), repeat(v)])
    full.load_state_dict(state)
    idx = tokens(2, 24)
    torch.testing.assert_close(gqa(idx)[0], full(idx)[0])
    assert gqa.blocks[0].attn.qkv.weight.shape == (64 + 2 * 32, 64)
    assert gqa.num_params() == full.num_params() - 2 * 2 * 32 * 64


@pytest.mark.parametrize("fields", [{"n_head": 4, "n_kv_head": 1}, {"head_dim": 48, "n_kv_head": 1}, {"qkv_bias": True}])
def test_the_kv_cache_gives_the_full_forward_logits(fields):
    model = build(**fields).eval()
    if "qkv_bias" in fields:  # zero at init: give them values that matter
        for block in model.blocks:
            torch.nn.init.normal_(block.attn.qkv.bias, std=0.5)
    idx = tokens(2, 20)
    full, _ = model(idx)
    cache = model.new_cache(2)
    first, _ = model(idx[:, :12], cache=cache)
    steps = [model(idx[:, t : t + 1], cache=cache)[0] for t in range(12, 20)]
    torch.testing.assert_close(torch.cat([first, *steps], dim=1), full, atol=1e-5, rtol=1e-4)
    assert cache.keys.shape[2] == model.config.kv_heads


def test_head_dim_apart_from_the_width():
    model = build(n_embd=64, n_head=2, head_dim=48)
    assert model.blocks[0].attn.qkv.weight.shape == (3 * 2 * 48, 64)
    assert model.blocks[0].attn.proj.weight.shape == (64, 2 * 48)
    assert model.rope_cos.shape == (128, 24)
    assert model.flops_per_token() == 6 * model.num_params() + 12 * 2 * 2 * 48 * 128
    assert model(tokens(1, 8))[0].shape == (1, 8, VOCAB)


def test_untied_embeddings_are_two_matrices_and_the_lookup_is_no_flops():
    model = build(tie_embeddings=False)
    assert model.lm_head.weight is not model.wte.weight
    assert model.num_params(non_embedding=False) == tiny_params_by_hand() + VOCAB * 64
    assert model.num_params() == tiny_params_by_hand()  # wte is a lookup; the lm_head matmul counts
    with torch.device("meta"):
        meta = GPT(model.config)
    meta.to_empty(device="cpu")
    meta.init_weights()
    assert meta.lm_head.weight is not meta.wte.weight
    decay, _ = model.param_groups(0.1)
    assert any(p is model.lm_head.weight for p in decay["params"])


def test_qkv_biases_start_at_zero_and_are_not_decayed():
    model = build(qkv_bias=True)
    bias = model.blocks[0].attn.qkv.bias
    assert bias.shape == (3 * 64,) and not bias.any()
    _, no_decay = model.param_groups(0.1)
    assert any(p is bias for p in no_decay["params"])
    assert model.num_params() == tiny_params_by_hand() + 2 * 3 * 64


def test_llama3_rope_scaling_slows_long_wavelengths_only():
    scaling = RopeScaling(factor=8, low_freq_factor=1, high_freq_factor=4, original_max_position_embeddings=64)
    inv_freq = 10000.0 ** -(torch.arange(0, 32, 2, dtype=torch.float32) / 32)
    wavelength = 2 * math.pi / inv_freq
    scaled = llama3_scaled(inv_freq, scaling)
    short, long = wavelength < 64 / 4, wavelength > 64 / 1
    assert short.any() and long.any() and not (short & long).any()
    torch.testing.assert_close(scaled[short], inv_freq[short])
    torch.testing.assert_close(scaled[long], inv_freq[long] / 8)
    between = ~short & ~long
    assert ((scaled[between] < inv_freq[between]) & (scaled[between] > inv_freq[between] / 8)).all()
    cos, _ = rope_tables(32, 16, 10000.0, scaling)
    assert not torch.allclose(cos, rope_tables(32, 16, 10000.0)[0])
    assert build(rope_scaling=scaling.model_dump()).rope_cos.shape == (128, 16)


# ------------------------------------------------------------------------------------- init


def test_init_scales_residual_projections():
    model = build(n_layer=8, n_embd=128, n_head=4)
    residual_std = 0.02 / math.sqrt(2 * 8)
    for block in model.blocks:
        assert block.attn.proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
        assert block.mlp.w2.weight.std().item() == pytest.approx(residual_std, rel=0.05)
        assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert torch.equal(block.attn_norm.weight, torch.ones(128))
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert isinstance(model.blocks, torch.nn.ModuleList) and all(isinstance(b, Block) for b in model.blocks)


def test_meta_build_then_materialise():
    fresh = build()
    with torch.device("meta"):
        model = GPT(ModelConfig(preset="tiny", vocab_size=VOCAB))
    assert model.rope_cos.is_meta and model.num_params() == fresh.num_params()
    model.to_empty(device="cpu")
    model.init_weights()
    torch.testing.assert_close(model.rope_cos, fresh.rope_cos)
    torch.testing.assert_close(model.rope_sin, fresh.rope_sin)
    assert model.lm_head.weight is model.wte.weight
    _, loss = model(tokens(2, 32), tokens(2, 32, seed=1))
    assert abs(loss.item() - math.log(VOCAB)) < 0.3


# ------------------------------------------------------------------------------------ learns


@pytest.mark.parametrize(
    "fields",
    [{"positions": "rope", "mlp": "swiglu"}, {"positions": "learned", "mlp": "gelu"}, {"dropout": 0.1}],
    ids=["rope-swiglu", "learned-gelu", "dropout"],
)
def test_learns_a_repeating_sequence(fields):
    model = build(**fields).train()
    pattern = tokens(1, 8)
    data = pattern.repeat(4, 9)[:, :65]  # period 8: every next token is predictable from context
    inputs, targets = data[:, :-1], data[:, 1:]
    optimizer = torch.optim.AdamW(model.param_groups(0.1), lr=3e-3)
    for _ in range(80):
        _, loss = model(inputs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2, loss.item()


@pytest.mark.parametrize("fields", [{}, {"tie_embeddings": False}])
def test_the_chunked_loss_gives_the_loss_and_gradients_of_the_whole_logits(fields):
    """train.loss_chunk_rows: 7 positions at a time (not a divisor of the 2 x 24), prompts ignored,
    the padded head rows never scored; the same loss and gradient of every parameter."""
    targets = tokens(2, 24, seed=1)
    targets[:, :5] = -100  # a prompt: not learned
    results = []
    for chunk_rows in (None, 7):
        model = build(**fields)
        model.loss_chunk_rows = chunk_rows
        logits, loss = model(tokens(2, 24), targets)
        loss.backward()
        results.append((logits, loss, {name: p.grad for name, p in model.named_parameters()}))
        with torch.no_grad():  # evaluation: no gradients computed, the same loss
            assert model(tokens(2, 24), targets)[1].item() == pytest.approx(loss.item(), rel=1e-6)
    (whole_logits, whole, whole_grads), (no_logits, chunked, chunked_grads) = results
    assert whole_logits.shape == (2, 24, VOCAB) and no_logits is None
    assert chunked.item() == pytest.approx(whole.item(), rel=1e-6)
    assert whole_grads.keys() == chunked_grads.keys()
    for name, grad in whole_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert chunked_grads["wte.weight"][VOCAB:].abs().sum() == 0  # padding rows: no gradient


# ----------------------------------------------------------------------------------- presets


@pytest.mark.parametrize("preset, expected", [("tiny", 139_584), ("shakespeare", 918_656)])
def test_presets_build(preset, expected):
    model = GPT(ModelConfig(preset=preset, vocab_size=VOCAB))
    assert model.num_params() == expected
    assert model(tokens(1, 8))[0].shape == (1, 8, VOCAB)


def test_gpt2_124m_size():
    with torch.device("meta"):
        gpt2 = GPT(ModelConfig(preset="gpt2-124m", vocab_size=50257, mlp="gelu", positions="learned"))
        default = GPT(ModelConfig(preset="gpt2-124m", vocab_size=50257))
    d, layers = 768, 12
    block = 4 * d * d + 2 * d * 4 * d + 2 * d
    assert gpt2.padded_vocab_size == 50304
    assert gpt2.num_params() == 50304 * d + layers * block + d == 123_587_328
    assert gpt2.num_params(non_embedding=False) == 123_587_328 + 1024 * d
    # SwiGLU's hidden 2048 = 8/3 * 768 exactly, so the MLP has the same size; RoPE has no table.
    assert default.num_params() == default.num_params(non_embedding=False) == 123_587_328
