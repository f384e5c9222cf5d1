"""Hugging Face export and import of a large model: wall time and peak RSS against the weights' size.

    python benchmarks/hf_io.py [--preset gpt2-350m] [--vocab 32000]

1. a random raylm run of the preset, saved as `raylm pretrain` saves one (a DCP checkpoint);
2. `raylm export RUN --dtype bfloat16` as a user runs it, in a fresh process;
3. the import: a fresh process reads that folder into raylm's GPT (`read_config`, `load_into`: one
   tensor at a time into the model's own parameters), as fine-tuning from an open model does on one worker;
4. for reference, a fresh process that only imports torch and builds the model (its own RSS).
Peak RSS is each child's ru_maxrss (the kernel's high-water mark), so no sampling misses a spike;
it counts the pages of a memory-mapped safetensors file as they are read, so the import also
prints its private (anonymous) memory at the end, which never falls during a load.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(code: str, *args: str) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stdout) of `python -c code args`."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, stdout=subprocess.PIPE,
                               text=True)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status:
        raise SystemExit(f"child failed with status {status}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024, out


MAKE_RUN = """
import sys, torch
from pathlib import Path
from raylm.config import dump_config, load_config
from raylm.data.tokenizer import train_bpe
from raylm.model.gpt import GPT
from raylm.train.checkpoint import checkpoint_name, save_weights
run, preset, vocab = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
config = load_config(None, [f"model.preset={preset}", f"model.vocab_size={vocab}", f"train.storage={run.parent}",
                            f"train.name={run.name}"])
run.mkdir(parents=True)
(run / "config.yaml").write_text(dump_config(config))
(run / "tokenizer.json").write_text(train_bpe(["a small text for a tokenizer file"] * 10, 300, 2).to_str())
save_weights(str(run / checkpoint_name(1)), GPT(config.model), 1)
"""
BUILD_ONLY = """
import sys
from raylm.config import load_config
from raylm.model.gpt import GPT
GPT(load_config(None, [f"model.preset={sys.argv[1]}", f"model.vocab_size={sys.argv[2]}"]).model)
"""
EXPORT = """
import sys
from raylm.cli import console
console(["export", sys.argv[1], "--output", sys.argv[2], "--dtype", "bfloat16"])
"""
IMPORT = """
import sys
from raylm.config import ModelConfig
from raylm.model.gpt import GPT
from raylm.model.hf import load_into, model_fields, read_config
model = GPT(ModelConfig(**model_fields(read_config(sys.argv[1]), sys.argv[1])))
load_into(model, sys.argv[1])
status = open("/proc/self/status").read()
print(int(status.split("RssAnon:")[1].split()[0]) // 1024)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gpt2-350m")
    parser.add_argument("--vocab", default="32000")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run, folder = Path(tmp) / "runs" / "big", Path(tmp) / "hf"
        child(MAKE_RUN, str(run), args.preset, args.vocab)
        _, built, _ = child(BUILD_ONLY, args.preset, args.vocab)
        exported, export_rss, _ = child(EXPORT, str(run), str(folder))
        weights = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1e6
        imported, import_rss, anonymous = child(IMPORT, str(folder))
    print(f"{args.preset}, vocabulary {args.vocab}: bf16 safetensors {weights:.0f} MB "
          f"(fp32 model in memory {2 * weights:.0f} MB)")
    print(f"process that only builds the fp32 model: peak RSS {built:.0f} MB")
    print(f"raylm export (fresh process):  {exported:6.1f} s, peak RSS {export_rss:.0f} MB "
          f"({export_rss - built:+.0f} MB over building the model)")
    print(f"import into raylm's GPT:       {imported:6.1f} s, peak RSS {import_rss:.0f} MB "
          f"({import_rss - built:+.0f} MB over building the model; private memory at the end {anonymous.strip()} MB)")


if __name__ == "__main__":
    main()
