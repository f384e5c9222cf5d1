"""Throughput of `raylm prepare` against plain `tokenizers` on the same corpus, tokenizer and CPUs.

    python benchmarks/prepare_throughput.py [--copies 4] [--cpus 2]

Corpus: the Python standard library of this machine, copied `--copies` times (4 copies ≈ 126 MB).
Every figure is measured in this run; ratios are against the raw baseline measured here too:
- raw: `Tokenizer.encode_batch` (and, for reference, `encode_batch_fast`) over all documents,
  already in memory, with the machine's CPUs (Rayon threads);
- tokenize stage: raylm's tokenize+pack+write stage on already-read documents (actor start-up in);
- whole prepare: `raylm prepare` as a user runs it (a fresh process: Python and Ray start-up,
  reading, cleaning, packing and writing in), filters and dedup off, the same tokenizer given;
  then the same with the tokenizer trained in the run (its defaults: 8,192 tokens, the sample
  of data.tokenizer.sample_bytes), with its phases;
- 1 -> 2 CPU scaling of the whole prepare; dedup throughput (documents/s) on one stdlib copy;
- the driver's peak private RSS for 1 and `--copies` copies, sampled from /proc every 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from raylm.data.sources import list_sources
from raylm.config import DataConfig


def build_corpus(root: Path, copies: int) -> tuple[Path, list[str]]:
    files = list_sources(DataConfig()).files
    for copy in range(copies):
        for f in files:
            target = root / f"copy{copy}" / f.key
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f.path, target)
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(root.rglob("*.py"))]
    return root, texts


def raw_baseline(tokenizer_path: Path, texts: list[str], fast: bool) -> float:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    encode = tokenizer.encode_batch_fast if fast else tokenizer.encode_batch
    megabytes = sum(len(t.encode()) for t in texts) / 1e6
    started = time.perf_counter()
    encode(texts, add_special_tokens=False)
    return megabytes / (time.perf_counter() - started)


def run_prepare(corpus: Path, output: Path, cpus: int, *overrides: str) -> tuple[dict, float, float]:
    """(manifest, wall seconds, peak private RSS of the driver in MB) of one `raylm prepare`.

    The driver maps Ray's shared-memory object store, so its plain RSS counts pages of data that
    live in the store; its private (anonymous) memory is what would grow if it held the corpus.
    """
    started = time.perf_counter()
    driver = subprocess.Popen(
        [sys.executable, "-m", "raylm", "prepare", "--num-cpus", str(cpus), f"data.sources=[{corpus}]",
         f"data.output={output}", "data.split.val=0.005", "data.split.test=0.005", *overrides],
        stdout=subprocess.DEVNULL, env={**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"},
    )
    peak_kb = 0
    while driver.poll() is None:
        try:
            status = Path(f"/proc/{driver.pid}/status").read_text()
            peak_kb = max(peak_kb, int(status.split("RssAnon:")[1].split()[0]))
        except (OSError, IndexError):
            pass
        time.sleep(0.05)
    if driver.returncode:
        raise SystemExit(f"raylm prepare failed with exit code {driver.returncode}")
    elapsed = time.perf_counter() - started
    return json.loads((output / "manifest.json").read_text()), elapsed, peak_kb / 1024


def tokenize_stage(corpus: Path, tokenizer_json: str, cpus: int, workdir: Path) -> float:
    """MB/s of the tokenize+pack+write stage alone, on documents already read and cleaned."""
    import ray

    from raylm.config import load_config
    from raylm.data import prepare as pipeline, splitting

    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="warning")
    ray.data.DataContext.get_current().enable_progress_bars = False
    data = load_config(None, [f"data.sources=[{corpus}]", "data.filters.profile=none", "data.dedup.exact=false",
                              "data.dedup.near=false"]).data
    docs = pipeline._documents(list_sources(data), data, clock=None).materialize()
    rows = docs.map_batches(splitting.census, batch_size=None, batch_format="pyarrow").take_all()
    megabytes = sum(splitting.Census.combine(row["census"] for row in rows).kept_bytes.values()) / 1e6  # every split
    started = time.perf_counter()
    stats = pipeline._tokenize_and_write(docs, data, tokenizer_json, "uint16", str(workdir / "stage"), clock=None)
    ray.get(pipeline._finish_batches.remote(stats, data.seq_len, str(workdir / "stage"), "uint16"))
    elapsed = time.perf_counter() - started
    ray.shutdown()
    return megabytes / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        one, _ = build_corpus(work / "corpus1", 1)
        corpus, texts = build_corpus(work / "corpus", args.copies)
        megabytes = sum(len(t.encode()) for t in texts) / 1e6
        print(f"corpus: {len(texts)} files, {megabytes:.1f} MB ({args.copies} copies of the stdlib); {args.cpus} CPUs")

        # A tokenizer trained once by raylm itself; every measurement below uses this file.
        run_prepare(one, work / "tok", args.cpus, "data.dedup.exact=false", "data.dedup.near=false",
                               "data.filters.profile=none", "data.tokenizer.vocab_size=8192")
        tokenizer_path = work / "tok" / "tokenizer.json"
        fixed = [f"data.tokenizer.path={tokenizer_path}", "data.filters.profile=none", "data.dedup.exact=false",
                 "data.dedup.near=false"]

        raw = raw_baseline(tokenizer_path, texts, fast=False)
        raw_fast = raw_baseline(tokenizer_path, texts, fast=True)
        print(f"raw encode_batch:                 {raw:6.2f} MB/s  (baseline)")
        print(f"raw encode_batch_fast:            {raw_fast:6.2f} MB/s  ({raw_fast / raw:.2f}x)")

        stage = tokenize_stage(corpus, tokenizer_path.read_text(), args.cpus, work)
        print(f"raylm tokenize stage:             {stage:6.2f} MB/s  ratio {stage / raw:.2f} "
              f"(vs encode_batch_fast {stage / raw_fast:.2f})")

        _, elapsed, peak_large = run_prepare(corpus, work / "whole", args.cpus, *fixed)
        whole = megabytes / elapsed
        print(f"raylm prepare, whole (process):   {whole:6.2f} MB/s  ratio {whole / raw:.2f} "
              f"(vs encode_batch_fast {whole / raw_fast:.2f}; {elapsed:.1f}s wall, Ray start-up included)")

        trained, elapsed_trained, _ = run_prepare(corpus, work / "trained", args.cpus, *fixed[1:])
        phases = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in trained["phases_seconds"].items())
        print(f"raylm prepare, tokenizer trained: {megabytes / elapsed_trained:6.2f} MB/s  ratio "
              f"{megabytes / elapsed_trained / raw:.2f} ({elapsed_trained:.1f}s wall: {phases})")

        _, elapsed_single, _ = run_prepare(corpus, work / "single", 1, *fixed)
        print(f"raylm prepare, 1 CPU:             {megabytes / elapsed_single:6.2f} MB/s  "
              f"scaling 1 -> {args.cpus} CPUs: {elapsed_single / elapsed:.2f}x")

        _, _, peak_small = run_prepare(one, work / "small", args.cpus, *fixed)
        print(f"driver peak private RSS: {peak_small:.0f} MB at 1 copy, {peak_large:.0f} MB at {args.copies} copies")

        dedup, _, _ = run_prepare(one, work / "dedup", args.cpus, f"data.tokenizer.path={tokenizer_path}")
        seconds = dedup["phases_seconds"]["dedup"] + dedup["stages"]["fingerprint"]["busy_seconds"] / args.cpus
        docs = dedup["documents"]["read"]
        print(f"dedup (exact+near, 1 copy): {docs / seconds:.0f} documents/s "
              f"({docs} docs; fingerprints {dedup['stages']['fingerprint']['busy_seconds']:.1f} busy-s, "
              f"bucket grouping + marking {dedup['phases_seconds']['dedup']:.1f}s; removed exact {dedup['dedup']['exact']}, "
              f"near {dedup['dedup']['near']})")


if __name__ == "__main__":
    main()
