"""CPU time-to-quality on Tiny Shakespeare: raylm vs nanoGPT's README CPU run, in the same run.

    python benchmarks/shakespeare_ttq.py [--budgets 60 120]

Split: the first 90% of the characters train, the last 10% are the explicit val source (nanoGPT's
split). Quality: bits per byte on the WHOLE val split (comparable across tokenizers). Time: wall
time spent in the training loop, evaluation excluded.

- nanoGPT: `benchmarks/nanogpt_reference.py`, a port of the README's CPU command (char level,
  4 x 128, block 64, batch 12, 2000 iterations), 2 threads in one process.
- raylm: `raylm prepare` (byte-level BPE, 1024 tokens) and `raylm pretrain` with the `shakespeare`
  preset on 2 Ray Train workers (DDP over gloo, one thread each), `train.max_minutes` set to the
  budget and nothing else about time: the schedule follows the time budget itself, so its
  warmup-stable-decay ends as the time runs out. The last row is the same run with raylm's default
  optimisation settings (cosine, lr 1e-3, warmup 100), for the first budget.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from raylm.config import load_config

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
DEFAULTS = ["model.preset=shakespeare", "train.workers=2", "train.batch_size=16", "train.log_every=10"]
RAYLM = [*DEFAULTS, "train.lr=3e-3", "train.schedule=wsd", "train.warmup_steps=50", "train.decay_fraction=0.2"]


def raylm_run(data: Path, runs: Path, name: str, *overrides: str) -> list[dict]:
    from raylm.train.trainer import pretrain

    config = load_config(None, [f"train.data={data}", f"train.storage={runs}", f"train.name={name}", *overrides])
    pretrain(config, log=lambda _: None)
    return [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=float, nargs="+", default=[60.0, 120.0])
    args = parser.parse_args()
    text = CORPUS.read_text()
    split = int(len(text) * 0.9)

    from nanogpt_reference import run_nanogpt  # benchmarks/ is this script's folder

    nano = run_nanogpt(text, seconds=args.budgets, threads=2)
    for budget in nano["budgets"]:
        print(f"nanoGPT  {budget['seconds']:5.0f} s budget: iter {budget['iters']:4d}, "
              f"{budget['train_seconds']:5.1f} s trained, val {budget['val_loss']:.4f} nats/char = "
              f"{budget['val_bpb']:.4f} bits/byte")

    import ray

    from raylm.data.prepare import prepare

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "train.txt").write_text(text[:split])
        (tmp / "val.txt").write_text(text[split:])
        ray.init(num_cpus=2, logging_level="warning")
        data = tmp / "data"
        prepare(load_config(None, [f"data.sources=[{tmp / 'train.txt'}]", f"data.val_sources=[{tmp / 'val.txt'}]",
                                   "data.split.val=0", "data.split.test=0", "data.filters.profile=none",
                                   "data.dedup.exact=false", "data.dedup.near=false", "data.tokenizer.vocab_size=1024",
                                   "data.seq_len=128", f"data.output={data}"]), log=lambda _: None)
        runs = [(budget, "raylm", RAYLM) for budget in args.budgets] + [(args.budgets[0], "defaults", DEFAULTS)]
        for budget, label, settings in runs:
            records = raylm_run(data, tmp / "runs", f"{label}-{budget:.0f}", *settings,
                                f"train.max_minutes={budget / 60}", "train.eval_every=1000000")
            last = records[-1]
            print(f"{label:8} {budget:5.0f} s budget: step {last['step']:4d}, {last['train_seconds']:5.1f} s trained, "
                  f"val {last['val_loss']:.4f} nats/token = {last['val_bpb']:.4f} bits/byte")
        ray.shutdown()


if __name__ == "__main__":
    main()
