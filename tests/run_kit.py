"""A real run folder without Ray: a tiny BPE and GPT trained in this process for a few steps and
saved the way `raylm pretrain` saves (config.yaml, tokenizer.json, metrics.jsonl, a DCP checkpoint).
For the tests of what reads run folders (evaluate, generate, report), which need no Ray Train."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from raylm.config import dump_config, load_config
from raylm.data.tokenizer import EOS, train_bpe
from raylm.model.gpt import GPT
from raylm.train.checkpoint import checkpoint_name, save_checkpoint

SEQ_LEN = 32


def make_run(folder: Path, text: str, *overrides: str, steps: int = 30, vocab_size: int = 300) -> Path:
    """Train `steps` AdamW steps on windows of `text` and save the run; returns the run folder."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_bpe([text], vocab_size=vocab_size, min_frequency=2)
    config = load_config(None, ["model.preset=tiny", f"model.vocab_size={tokenizer.get_vocab_size()}",
                                f"data.seq_len={SEQ_LEN}", f"train.storage={folder.parent}", f"train.name={folder.name}",
                                *overrides])
    (folder / "config.yaml").write_text(dump_config(config))
    (folder / "tokenizer.json").write_text(tokenizer.to_str())

    ids = np.array([*tokenizer.encode(text, add_special_tokens=False).ids, tokenizer.token_to_id(EOS)])
    windows = torch.from_numpy(np.stack([ids[i : i + SEQ_LEN + 1] for i in range(0, len(ids) - SEQ_LEN - 1, SEQ_LEN)]))
    torch.manual_seed(0)
    model = GPT(config.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with open(folder / "metrics.jsonl", "w") as metrics:
        for step in range(1, steps + 1):
            batch = windows[torch.randint(len(windows), (8,))].long()
            _, loss = model(batch[:, :-1], batch[:, 1:])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            metrics.write(json.dumps({"step": step, "loss": loss.item(), "lr": 3e-3, "tokens": step * 8 * SEQ_LEN}) + "\n")
    checkpoint = folder / checkpoint_name(steps)
    state = {"step": steps, "tokens": steps * 8 * SEQ_LEN, "epoch": 0, "consumed": steps, "train_seconds": 0.0, "world_size": 1}
    save_checkpoint(str(checkpoint), model.eval(), optimizer, state, rank=0)
    return folder
