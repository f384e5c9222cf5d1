"""lm-evaluation-harness scores a raylm export, and agrees with `raylm evaluate` on the same text.

    python benchmarks/lm_eval_check.py [--venv /tmp/raylm-lm-eval] [--steps 300]

lm-eval lives in an environment of its own (made at --venv on first use: torch, transformers and
lm-eval from the package index), never in raylm's. With this checkout's raylm the script prepares
the first 90% of Tiny Shakespeare (../shared/data), pretrains the tiny preset on it, exports the run
(fp32) and scores the held-out 10%, cut at blank lines into documents of about 8 KB, two ways:
- `lm_eval --model hf --model_args pretrained=EXPORT` with a local task (`loglikelihood_rolling`
  over each document, the JSON file on disk, so nothing is downloaded): its bits_per_byte;
- `raylm evaluate --checkpoint RUN` on the same documents, one text file each.
They differ only at document boundaries: lm-eval scores each document alone, its first token
predicted after the end-of-text token; raylm scores one stream with an end-of-text after each file,
so a window can see the previous document and the end-of-text tokens are scored too. Expect
agreement within a few percent, not to the last digit; the tests check exact agreement with
transformers on the same windows.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import textwrap
from pathlib import Path

from benchmark_env import benchmark_env, sh

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
LM_EVAL = ["torch==2.13.0", "transformers>=5", "accelerate", "lm-eval==0.4.13"]  # lm-eval's hf model imports accelerate
TASK = """\
task: raylm_heldout
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""


def documents(text: str, size: int = 8000) -> list[str]:
    """The text cut at blank lines into documents of about `size` characters."""
    docs, current = [], ""
    for paragraph in re.split(r"(?<=\n)\n", text):
        current += paragraph + "\n"
        if len(current) >= size:
            docs.append(current.strip("\n") + "\n")
            current = ""
    return docs + ([current.strip("\n") + "\n"] if current.strip() else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", default="/tmp/raylm-lm-eval", type=Path)
    parser.add_argument("--steps", default=300, type=int)
    args = parser.parse_args()
    lm_eval = benchmark_env(args.venv, LM_EVAL).parent / "lm_eval"
    raylm = [sys.executable, "-m", "raylm"]
    text = CORPUS.read_text()
    cut = text.index("\n\n", int(len(text) * 0.9)) + 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "train.txt").write_text(text[:cut])
        heldout = documents(text[cut:])
        (work / "heldout").mkdir()
        files = []
        for i, doc in enumerate(heldout):
            files.append(str(work / "heldout" / f"part-{i:03d}.txt"))
            Path(files[-1]).write_text(doc)
        (work / "heldout.jsonl").write_text("".join(json.dumps({"text": doc}) + "\n" for doc in heldout))
        (work / "tasks").mkdir()
        (work / "tasks" / "raylm_heldout.yaml").write_text(TASK.format(data=work / "heldout.jsonl"))

        sh(*raylm, "prepare", "data.sources=[train.txt]", "data.output=prepared", "data.seq_len=256", cwd=work)
        sh(*raylm, "pretrain", "train.data=prepared", "model.preset=tiny", "model.block_size=256",
           f"train.max_steps={args.steps}", "train.batch_size=8", "train.lr=3e-3", "train.eval_every=100000",
           f"train.checkpoint_every={args.steps}", cwd=work)
        sh(*raylm, "export", "runs/pretrain", "--output", "hf", "--dtype", "float32", cwd=work)
        printed = sh(*raylm, "evaluate", "--checkpoint", "runs/pretrain", "--json", *files, cwd=work)
        ours = json.loads(next(line for line in printed.splitlines() if line.startswith("{")))
        sh(str(lm_eval), "--model", "hf", "--model_args", f"pretrained={work / 'hf'},dtype=float32", "--tasks",
           "raylm_heldout", "--include_path", str(work / "tasks"), "--device", "cpu", "--batch_size", "1",
           "--output_path", str(work / "lm-eval"), env={"HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
           cwd=work)
        results = json.loads(next((work / "lm-eval").rglob("results_*.json")).read_text())["results"]["raylm_heldout"]
    theirs = results["bits_per_byte,none"]
    print(textwrap.dedent(f"""
        held-out Tiny Shakespeare: {len(heldout)} documents, {sum(len(d.encode()) for d in heldout):,} bytes
        raylm evaluate (run)          bits per byte {ours['bits_per_byte']:.4f}
        lm-eval hf (exported folder)  bits per byte {theirs:.4f}  (word perplexity {results['word_perplexity,none']:.2f})
        ratio lm-eval / raylm         {theirs / ours['bits_per_byte']:.4f}"""))


if __name__ == "__main__":
    main()
