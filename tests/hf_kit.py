"""Tiny random Hugging Face model folders built and saved by transformers itself (no downloads):
models of the Llama, Mistral and Qwen2 families, and tokenizers in three styles — "llama", which
puts `<s>` before every text and ends with `</s>` (Zephyr's chat template); "chatml", which adds
nothing and ends with `<|im_end|>` (SmolLM2-Instruct's ChatML template); "qwen2", a base model's,
which adds nothing and ends with `<|endoftext|>`. And transformers' side of the comparisons."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

VOCAB = 300  # not a multiple of 64: raylm pads its embedding, the logits must not see it
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, max_position_embeddings=64)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
FAMILIES = {
    "llama-gqa-untied": ("LlamaConfig", "LlamaForCausalLM", dict(num_attention_heads=4, num_key_value_heads=2,
                                                                 tie_word_embeddings=False)),
    "llama-mqa-tied-llama3-rope": ("LlamaConfig", "LlamaForCausalLM", dict(num_attention_heads=4, num_key_value_heads=1,
                                                                           tie_word_embeddings=True,
                                                                           rope_parameters=LLAMA3_ROPE)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(num_attention_heads=4, num_key_value_heads=2,
                                                           sliding_window=None, head_dim=24)),
    "qwen2-qkv-bias": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_attention_heads=4, num_key_value_heads=2,
                                                              tie_word_embeddings=True)),
}
# Zephyr's layout: each turn a role tag, its text and </s>; the generation prompt opens the assistant's.
ZEPHYR_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
                   "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
CHATML_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                   "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def hf_model(family: str, folder: Path, vocab_size: int = VOCAB, **fields):
    """A random model of the family, its biases and norms random too (they start at 0 and 1),
    saved with save_pretrained."""
    config_class, model_class, family_fields = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**{**COMMON, "vocab_size": vocab_size, **family_fields, **fields})
    model = getattr(transformers, model_class)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_(1.0 if "norm" in name else 0.0, 0.3)
    model.save_pretrained(folder)
    return model


def hf_tokenizer(folder: Path, text: str, style: str, vocab_size: int = VOCAB):
    """A byte-level BPE trained on `text`, saved by transformers as a model folder's tokenizer files."""
    specials = ["<s>", "</s>", "<|user|>", "<|assistant|>"] if style == "llama" else ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    eos = {"llama": "</s>", "chatml": "<|im_end|>", "qwen2": "<|endoftext|>"}[style]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator([text], trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    if style == "llama":
        tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=eos,
                                                **({"bos_token": "<s>"} if style == "llama" else {}))
    fast.chat_template = {"llama": ZEPHYR_TEMPLATE, "chatml": CHATML_TEMPLATE}.get(style)
    fast.save_pretrained(folder)
    return transformers.AutoTokenizer.from_pretrained(folder)


def transformers_loss(folder: Path, path: Path, seq_len: int) -> tuple[float, int]:
    """Mean next-token loss of the folder's model on its own tokenizer's tokens of the file, an
    end-of-text after them, in windows of seq_len + 1 (every token but the first predicted once),
    and the number of tokens predicted."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = tokenizer(path.read_text())["input_ids"] + [tokenizer.eos_token_id]
    nats, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, seq_len):
            window = torch.tensor(ids[start : start + seq_len + 1])
            nats += F.cross_entropy(model(window[None, :-1]).logits[0], window[1:], reduction="sum").item()
            count += len(window) - 1
    return nats / count, count


def transformers_greedy(folder: Path, prompt: str, tokens: int) -> str:
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
