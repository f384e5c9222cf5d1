"""`raylm demo`: the whole path on this machine, on the Python standard library found here.

prepare -> pretrain -> evaluate -> generate -> tune (ASHA) -> finetune (LoRA on docstring -> body
pairs) -> report, in one process with an embedded Ray, each stage through the same library calls
as its own command. No download: the corpus is `sysconfig.get_paths()["stdlib"]`. `--quick` runs
every stage at toy size (the test suite's end-to-end check).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import sysconfig
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from raylm import runtime
from raylm.config import load_config

STDLIB = sysconfig.get_paths()["stdlib"]


@dataclass(frozen=True)
class Size:
    sources: list[str]
    prepare: list[str]
    pretrain: list[str]
    sweep: list[str]
    finetune: list[str]
    instruction_folders: list[str]
    instruction_pairs: int
    instruction_chars: int  # prompt + response, so that most fit data.seq_len tokens
    sample_tokens: int


FULL = Size(
    sources=["stdlib://"],
    prepare=["data.tokenizer.vocab_size=4096", "data.seq_len=128", "data.split.val=0.02", "data.split.test=0.02"],
    pretrain=["model.preset=shakespeare", "train.workers=1", "train.cpus_per_worker=2", "train.batch_size=16",
              "train.lr=3e-3", "train.warmup_steps=50", "train.max_steps=600", "train.max_minutes=3",
              "train.log_every=25", "train.eval_every=100", "train.eval_batches=20", "train.checkpoint_every=250"],
    sweep=["tune.num_samples=4", "train.max_steps=60", "train.eval_every=20", "train.log_every=20", "train.warmup_steps=10",
           "tune.search_space={train.lr: {loguniform: [1.0e-3, 1.0e-2]}, model.n_embd: {choice: [64, 128]}}"],
    finetune=["finetune.method=lora", "train.max_steps=80", "train.eval_every=40", "train.log_every=20",
              "train.warmup_steps=0", "train.lr=2e-3", "data.seq_len=128"],
    instruction_folders=["json", "email", "http", "urllib", "logging", "collections", "asyncio"],
    instruction_pairs=800,
    instruction_chars=450,
    sample_tokens=160,
)
QUICK = Size(
    sources=[os.path.join(STDLIB, name) for name in ("json", "email", "html")],
    prepare=["data.tokenizer.vocab_size=512", "data.seq_len=64", "data.split.val=0.05", "data.split.test=0.05",
             "data.dedup.near=false"],
    pretrain=["model.preset=tiny", "train.workers=1", "train.cpus_per_worker=2", "train.batch_size=8", "train.lr=3e-3",
              "train.warmup_steps=0", "train.max_steps=30", "train.log_every=10", "train.eval_every=15",
              "train.eval_batches=4", "train.checkpoint_every=30"],
    sweep=["tune.num_samples=2", "train.max_steps=8", "train.eval_every=4", "train.log_every=4",
           "tune.search_space={train.lr: {loguniform: [1.0e-3, 1.0e-2]}, model.n_embd: {choice: [32, 64]}}"],
    finetune=["finetune.method=lora", "train.max_steps=8", "train.eval_every=8", "train.log_every=4", "data.seq_len=64"],
    instruction_folders=["json", "email", "http", "urllib"],
    instruction_pairs=60,
    instruction_chars=180,
    sample_tokens=40,
)


def docstring_pairs(folders: list[str], limit: int, max_chars: int) -> list[dict]:
    """Instruction pairs from the standard library: prompt = a function's signature and docstring,
    response = its body (short functions only)."""
    pairs = []
    for folder in folders:
        for path in sorted(Path(STDLIB, folder).rglob("*.py")):
            source = path.read_text(errors="replace")
            try:
                tree = ast.parse(source)
            except SyntaxError:
                continue
            lines = source.splitlines(keepends=True)
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(node) and len(node.body) > 1:
                    split = node.body[0].end_lineno
                    prompt = textwrap.dedent("".join(lines[node.lineno - 1 : split]))
                    response = textwrap.dedent("".join(lines[split : node.end_lineno]))
                    if len(prompt) + len(response) <= max_chars and response.strip():
                        pairs.append({"prompt": prompt, "response": response})
                        if len(pairs) == limit:
                            return pairs
    return pairs


def demo(output: str = "demo", quick: bool = False, num_cpus: int | None = None, log=print) -> dict:
    from raylm.data.prepare import prepare
    from raylm.eval.evaluate import evaluate
    from raylm.train.checkpoint import load_model
    from raylm.eval.generate import generate
    from raylm.finetune.finetune import finetune
    from raylm.report.report import write_report
    from raylm.train.trainer import pretrain
    from raylm.tune.sweep import tune

    size = QUICK if quick else FULL
    out = Path(output).resolve()
    if out.exists():
        log(f"demo: replacing {out}")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    started = time.time()

    def stage(name: str) -> None:
        log(f"\n=== demo: {name} ({time.time() - started:.0f}s) ===")

    runtime.init_ray(None, num_cpus, dashboard=True)  # it runs a sweep
    prepared, runs = out / "prepared", out / "runs"
    stage(f"prepare {'a slice of ' if quick else ''}the Python standard library in {STDLIB}")
    prepare(load_config(None, [f"data.sources=[{','.join(size.sources)}]", "data.filters.profile=code",
                               f"data.output={prepared}", *size.prepare]), log=log)

    stage("pretrain")
    trained = [f"train.data={prepared}", f"train.storage={runs}"]
    pretrain(load_config(None, [*trained, "train.name=pretrain", *size.pretrain]), log=log)
    run = runs / "pretrain"

    stage("evaluate on the held-out test files")
    scores = evaluate(str(run), [str(prepared)])
    log(f"loss {scores['loss']:.4f} nats/token, bits per byte {scores['bits_per_byte']:.4f} "
        f"(unigram baseline {scores['baseline']['bits_per_byte']:.4f})")

    stage("generate")
    model, source = load_model(str(run))
    sample = "def" + generate(model, source.tokenizer, "def", max_new_tokens=size.sample_tokens, temperature=0.8, top_k=50, seed=0)
    (out / "sample.txt").write_text(sample)
    log(sample)

    stage("tune: an ASHA sweep over learning rate and width")
    tune(load_config(None, [*trained, *size.pretrain, *size.sweep]), log=log)

    stage("finetune with LoRA: docstring -> function body pairs")
    instructions = out / "instructions.jsonl"
    pairs = docstring_pairs(size.instruction_folders, size.instruction_pairs, size.instruction_chars)
    instructions.write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    log(f"{len(pairs)} pairs in {instructions}")
    finetune(load_config(None, [*trained, "train.name=finetune", *size.pretrain, f"finetune.init={run}",
                                f"finetune.instructions=[{instructions}]", *size.finetune]), log=log)

    stage("report")
    reports = {name: write_report(str(folder), sample_tokens=size.sample_tokens, log=log)["html"]
               for name, folder in (("data", prepared), ("pretrain", run), ("sweep", runs / "sweep"),
                                    ("finetune", runs / "finetune"))}
    where = {"prepared data": str(prepared), "pretrain run": str(run), "sample": str(out / "sample.txt"),
             "sweep": str(runs / "sweep"), "best config": str(runs / "sweep" / "best-config.yaml"),
             "finetune run": str(runs / "finetune"), **{f"{name} report": path for name, path in reports.items()},
             "tensorboard": f"tensorboard --logdir {runs}"}
    log(f"\n=== demo: done in {time.time() - started:.0f}s ===")
    for what, path in where.items():
        log(f"  {what:16} {path}")
    return where
