"""Hugging Face export and import of a large model: wall time and peak RSS against the weights' size.

    python benchmarks/hf_io.py [--preset gpt2-350m] [--vocab 32000]

1. a random raylm run of the preset, saved as `raylm pretrain` saves one (a DCP checkpoint);
2. `raylm export RUN --dtype bfloat16` as a user runs it, in a fresh process;
3. the import: a fresh process reads that folder into raylm's GPT (`read_config`, `load_into`: one
   tensor at a time into the model's own parameters), as fine-tuning from an open model does on one worker;
4. for reference, a fresh process that only imports torch and builds the model (its own RSS);
5. the sharded import: 2 gloo processes build the model as a `train.strategy=fsdp` worker does
   (`raylm.train.loop.build_model`: meta device, FSDP2, then each reads its own shards' rows);
   each one's peak RSS over its RSS just before, against the fp32 model's size.
Peak RSS is each child's ru_maxrss (the kernel's high-water mark), so no sampling misses a spike.
"""

from __future__ import annotations

import argparse
import json
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


SHARDED_IMPORT = """
import json, sys, torch, torch.distributed as dist
from raylm.train.checkpoint import model_source
from raylm.train.loop import build_model
dist.init_process_group("gloo")
torch.set_num_threads(1)
source = model_source(sys.argv[1], "folder")
config = source.config.model_copy(update={"train": source.config.train.model_copy(update={"strategy": "fsdp"})})
before = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024
model, read = build_model(config, torch.device("cpu"), source)
print(json.dumps({"before": before, "read": read}))
dist.destroy_process_group()
"""


def sharded_import(folder: Path, world: int = 2) -> list[dict]:
    """Each rank's RSS before building, peak RSS and bytes read, loading `folder` as FSDP workers."""
    environment = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29541", "WORLD_SIZE": str(world)}
    ranks = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(SHARDED_IMPORT), str(folder)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True, env={**environment, "RANK": str(rank)})
             for rank in range(world)]
    results = []
    for process in ranks:
        out = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        if status:
            raise SystemExit(f"rank failed with status {status}")
        results.append({**json.loads(out.strip().splitlines()[-1]), "peak": usage.ru_maxrss / 1024})
    return results


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
        started = time.perf_counter()
        ranks = sharded_import(folder)
        sharded = time.perf_counter() - started
    print(f"{args.preset}, vocabulary {args.vocab}: bf16 safetensors {weights:.0f} MB "
          f"(fp32 model in memory {2 * weights:.0f} MB)")
    print(f"process that only builds the fp32 model: peak RSS {built:.0f} MB")
    print(f"raylm export (fresh process):  {exported:6.1f} s, peak RSS {export_rss:.0f} MB "
          f"({export_rss - built:+.0f} MB over building the model)")
    print(f"import into raylm's GPT:       {imported:6.1f} s, peak RSS {import_rss:.0f} MB "
          f"({import_rss - built:+.0f} MB over building the model; private memory at the end {anonymous.strip()} MB)")
    print(f"sharded import, {len(ranks)} FSDP workers: {sharded:6.1f} s")
    for rank, r in enumerate(ranks):
        grew = r["peak"] - r["before"]
        print(f"  rank {rank}: read {r['read'] / 1e6:.0f} MB of {weights:.0f}; peak RSS {r['peak']:.0f} MB, "
              f"{grew:+.0f} MB over its {r['before']:.0f} MB before = {grew / (2 * weights):.2f} x the fp32 model")


if __name__ == "__main__":
    main()
