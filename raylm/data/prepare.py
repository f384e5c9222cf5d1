"""`raylm prepare`: raw text to packed token shards, as one Ray Data graph.

    files ─ read ─ clean ─ filter ─(fingerprint)─┬─(dedup: bucket minima, join back)─┐
                                                 └───────────────────────────────────┴─ tokenize+pack+write ─ tails ─ publish
                                                          (tokenizer: sample ─ train)

Every step is a Ray Data operation that runs wherever the cluster has CPUs; the driver only lists
files, launches the graph and sums one small statistics row per batch. Dropped documents keep
flowing (text emptied, reason set) to the last stage, which counts every document exactly once:
documents read = kept + dropped per reason. Output goes to a staging folder and is published in
one step at the end, so an interrupted run never leaves a dataset that looks complete.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data import ActorPoolStrategy, Dataset, TaskPoolStrategy

from raylm import __version__, runtime, storage
from raylm.config import Config, DataConfig, dump_config
from raylm.data import dedup, splitting
from raylm.data.clean import clean_texts
from raylm.data.filters import apply_quality_filters
from raylm.data.formats import read_documents
from raylm.data.manifest import MANIFEST
from raylm.data.pack import REJECTED_HEAD_CHARS, SPLITS, TAIL_COLUMNS, TokenizeAndWrite, write_tail_shards
from raylm.data.sources import SourceFile, SourceListing, list_sources
from raylm.data.tokenizer import TokenizerFiles, load_tokenizer, token_dtype, train_bpe
from raylm.errors import RaylmError

FORMAT_VERSION = "raylm.prepared/1"
READ_CHUNK_DOCS = 4096
READ_CHUNK_BYTES = 16 << 20
READ_TASK_BYTES = 32 << 20  # input per read task: each task costs tens of ms, so not too many
# Below this much input the documents are always materialized, for the census that balances the
# split; above it a run that needs one pass (no dedup, a given tokenizer) streams, and hashing
# alone fills every split (thousands of documents or parts).
STREAM_MIN_BYTES = 64 << 20
UPSTREAM_CPU_RESERVE = 0.5  # left free by the tokenizer actors so read/clean/filter tasks still run
LIGHT_TASK_CPUS = 0.25  # fractional, so those tasks fit next to the actors on any machine


@ray.remote(num_cpus=0)
class StageClock:
    """Busy seconds, documents and bytes per stage, reported by the workers once per batch."""

    def __init__(self):
        self.totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0, 0])

    def record(self, stage: str, seconds: float, documents: int, nbytes: int) -> None:
        total = self.totals[stage]
        total[0] += seconds
        total[1] += documents
        total[2] += nbytes

    def report(self) -> dict:
        return {
            stage: {
                "busy_seconds": round(seconds, 3),
                "documents": int(documents),
                "bytes": int(nbytes),
                "mb_per_busy_second": round(nbytes / 1e6 / seconds, 2) if seconds else None,
            }
            for stage, (seconds, documents, nbytes) in self.totals.items()
        }


class _LiveLine:
    """While a phase runs, one console line redrawn twice a second with the stage's documents, MB,
    MB/s and ETA, read from the StageClock. Only on a terminal and with the console as the log:
    job logs and files get the phase's closing line instead, which the caller prints."""

    def __init__(self, clock, stage: str, verb: str, total_bytes: int, log):
        self.clock, self.stage, self.verb, self.total = clock, stage, verb, total_bytes
        self.live = log is print and sys.stdout.isatty()
        self.stopped = threading.Event()

    def __enter__(self):
        if self.live:
            self.started = time.time()
            self.thread = threading.Thread(target=self._redraw, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *_):
        if self.live:
            self.stopped.set()
            self.thread.join()
            sys.stdout.write("\r\x1b[K")
            sys.stdout.flush()

    def _redraw(self) -> None:
        while not self.stopped.wait(0.5):
            done = ray.get(self.clock.report.remote()).get(self.stage)
            if not done:
                continue
            elapsed = time.time() - self.started
            rate = done["bytes"] / elapsed
            eta = f" | ETA {max(0, self.total - done['bytes']) / rate:.0f}s" if rate and done["bytes"] < self.total else ""
            sys.stdout.write(f"\r\x1b[Kprepare: {self.verb} {done['documents']:,} documents | "
                             f"{done['bytes'] / 1e6:.1f} of {self.total / 1e6:.1f} MB | {rate / 1e6:.1f} MB/s{eta}")
            sys.stdout.flush()


def prepare(config: Config, address: str | None = None, num_cpus: int | None = None, log=print) -> dict:
    """Run the whole stage; return the manifest (also written as `manifest.json`).

    Inputs, tokenizer and output are checked before Ray starts, so a wrong path costs nothing.
    """
    data = config.data
    started = time.time()
    listing = list_sources(data)
    tokenizer = load_tokenizer(data.tokenizer.path) if data.tokenizer.path else None
    output = storage.absolute(data.output)
    storage.check_writable(output)
    runtime.init_ray(address, num_cpus)
    input_bytes = sum(f.size for f in listing.files)
    log(f"prepare: {len(listing.files)} file{'s' * (len(listing.files) > 1)}, {input_bytes / 1e6:.1f} MB -> {output}")

    staging = storage.staging_folder(output)
    clock = StageClock.remote()
    phases: dict[str, float] = {}
    deduplicate = data.dedup.exact or data.dedup.near
    moves: dict[int, str] = {}
    try:
        docs = _documents(listing, data, clock)
        streaming = not deduplicate and tokenizer is not None and input_bytes >= STREAM_MIN_BYTES
        if not streaming:  # later steps need several passes over the documents
            mark = time.time()
            with _LiveLine(clock, "read", "reading", input_bytes, log):
                docs = docs.materialize()
            phases["read_clean_filter"] = time.time() - mark
            cut = data.split.part_chars and any(f.kind == "text" for f in listing.files)
            log(f"prepare: read, cleaned and filtered {docs.count()} documents in {phases['read_clean_filter']:.1f}s"
                + (f" (plain text in parts of up to {data.split.part_chars:,} characters)" if cut else ""))
        if deduplicate:
            docs = _deduplicate(docs, data, phases, log)
        kept_bytes = input_bytes  # what the tokenize stage will see, for its progress line
        if not streaming:
            docs, found, moves = _balance_splits(docs, data, log)
            train_bytes, kept_bytes = splitting.moved_bytes(found, moves)["train"], sum(found.kept_bytes.values())
            if not kept_bytes or (tokenizer is None and not train_bytes):
                raise RaylmError(splitting.nothing_to_train_on(found, data.sources))
            if tokenizer is None:
                tokenizer = _train_tokenizer(docs, data, train_bytes, phases, log)
        dtype = token_dtype(tokenizer.codec.get_vocab_size())
        tokenizer.write(staging)

        mark = time.time()
        with _LiveLine(clock, "tokenize_pack_write", "tokenizing", kept_bytes, log):
            batch_stats = _tokenize_and_write(docs, data, tokenizer, dtype, staging, clock)
        totals, tails = ray.get(_finish_batches.remote(batch_stats, data.seq_len, staging, dtype))
        phases[("read_clean_filter_" if streaming else "") + "tokenize_pack_write"] = time.time() - mark
        kept = sum(split_totals["documents"] for split_totals in totals["splits"].values())
        if kept == 0:
            top = totals["dropped"].most_common(1)
            raise RaylmError(f"no documents left in {data.sources} after cleaning, filtering and dedup (dropped: "
                             f"{dict(totals['dropped'])}){f'; see {splitting.fix_for(top[0][0])}' if top else ''}")

        manifest = _manifest(config, listing, totals, tails, tokenizer, dtype, output, moves)
        manifest["stages"] = ray.get(clock.report.remote())
        manifest["phases_seconds"] = {name: round(seconds, 3) for name, seconds in phases.items()}
        manifest["wall_seconds"] = round(time.time() - started, 3)
        storage.write_bytes(storage.join(staging, "config.yaml"), dump_config(config).encode())
        storage.write_bytes(storage.join(staging, MANIFEST), json.dumps(manifest, indent=2).encode())
        storage.publish(staging, output, commit_marker=MANIFEST)
    finally:
        storage.delete_dir(staging)  # no-op once published
        ray.kill(clock)
    _log_summary(manifest, log)
    return manifest


# ------------------------------------------------------------------------------ the graph


def _documents(listing: SourceListing, data: DataConfig, clock) -> Dataset:
    """read -> clean -> filter (-> fingerprint): one fused task per block of files."""
    files = [{**asdict(f), "file_index": i} for i, f in enumerate(listing.files)]
    tasks = max(4 * int(runtime.data_cpus()), -(-sum(f.size for f in listing.files) // READ_TASK_BYTES))
    docs = ray.data.from_items(files, override_num_blocks=min(len(files), tasks))
    light = _light_tasks()
    docs = docs.map_batches(_read_files, fn_kwargs={"data": data, "clock": clock}, batch_size=None,
                            batch_format="pyarrow", **light)
    docs = docs.map_batches(_clean, fn_kwargs={"data": data, "clock": clock}, batch_format="pyarrow",
                            **light)
    docs = docs.map_batches(_filter, fn_kwargs={"data": data, "clock": clock}, batch_format="pyarrow",
                            **light)
    if data.dedup.exact or data.dedup.near:
        docs = docs.map_batches(_fingerprint, fn_kwargs={"data": data, "clock": clock}, batch_format="pyarrow",
                                **light)
    return docs


def _deduplicate(docs: Dataset, data: DataConfig, phases: dict, log) -> Dataset:
    mark = time.time()
    partitions = max(2, int(runtime.data_cpus()), docs.size_bytes() // (256 << 20))
    docs, removed = dedup.deduplicate(docs, data.dedup, partitions)
    docs = docs.materialize()  # a pending task upstream of the tokenizer actors could starve
    phases["dedup"] = time.time() - mark
    log(f"prepare: dedup marked {removed} duplicates in {phases['dedup']:.1f}s")
    return docs


def _balance_splits(docs: Dataset, data: DataConfig, log) -> tuple[Dataset, splitting.Census, dict[int, str]]:
    """The census of the kept documents, and the documents moved so that every split asked for
    gets one (see raylm.data.splitting)."""
    rows = docs.map_batches(splitting.census, batch_size=None, batch_format="pyarrow", **_light_tasks())
    found = splitting.Census.combine(row["census"] for row in rows.take_all())
    moves = splitting.balance(found, data.split)
    if moves:
        moved = ", ".join(f"{sum(1 for to in moves.values() if to == name)} to {name}" for name in SPLITS
                          if name in moves.values())
        log(f"prepare: {sum(found.kept.values())} documents kept; moved {moved} so that every split asked for has "
            f"one (data.split.val={data.split.val:g}, data.split.test={data.split.test:g})")
        docs = docs.map_batches(splitting.move, fn_kwargs={"moves": moves}, batch_format="pyarrow", **_light_tasks())
    return docs, found, moves


def _light_tasks() -> dict:
    """Ray Data arguments of the read/clean/filter, census and sample tasks: a fractional CPU, so
    they fit next to the tokenizer actors on any machine, and on a Ray this process started (its
    size fixed) no more at once than it has CPUs: each concurrent task is a worker process to
    start, and the 8 that 0.25 CPU allows on 2 cores cost a 126 MB prepare 3 s of starting them."""
    size = None if runtime.joined_cluster() else max(1, int(runtime.data_cpus()))
    return {**runtime.data_task(LIGHT_TASK_CPUS), "compute": TaskPoolStrategy(size=size)}


def _train_tokenizer(docs: Dataset, data: DataConfig, train_bytes: int, phases: dict, log) -> TokenizerFiles:
    """A BPE trained on a deterministic sample of the kept train documents (train_bytes in all)."""
    mark = time.time()
    fraction = min(1.0, data.tokenizer.sample_budget() / train_bytes)
    sample = docs.map_batches(_sample, fn_kwargs={"fraction": fraction}, batch_format="pyarrow",
                              **_light_tasks()).materialize()
    cpus = runtime.largest_data_node_cpus()
    trained = _train_bpe_task.options(**runtime.data_task(cpus))
    tokenizer = TokenizerFiles(ray.get(trained.remote(sample, data.tokenizer.vocab_size, data.tokenizer.min_frequency, cpus)))
    phases["tokenizer"] = time.time() - mark
    log(f"prepare: trained a {tokenizer.codec.get_vocab_size()}-token BPE on {fraction * train_bytes / 1e6:.1f} MB "
        f"in {phases['tokenizer']:.1f}s")
    return tokenizer


def _tokenize_and_write(docs: Dataset, data: DataConfig, tokenizer: TokenizerFiles, dtype: str, staging: str, clock) -> Dataset:
    cpus = runtime.data_cpus()
    actors = max(1, int(cpus))
    return docs.map_batches(
        TokenizeAndWrite,
        fn_constructor_kwargs={"tokenizer": tokenizer, "seq_len": data.seq_len, "output": staging,
                               "dtype": dtype, "clock": clock},
        batch_size=data.batch_size,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=actors),
        **runtime.data_task(max(0.1, (cpus - UPSTREAM_CPU_RESERVE) / actors)),
    ).materialize()


@ray.remote(num_cpus=0)
def _finish_batches(batch_stats: Dataset, seq_len: int, staging: str, dtype: str) -> tuple[dict, dict]:
    """Sum the per-batch statistics and pack every batch's leftover tokens, in batch order:
    one pass over one small row per batch, off the driver."""
    rows = [row for batch in batch_stats.iter_batches(batch_format="pyarrow") for row in batch.to_pylist()]
    rows.sort(key=lambda row: row["key"])
    leftovers = {split: [row[column] for row in rows] for split, column in TAIL_COLUMNS.items()}
    return _sum_batch_stats(row["stats"] for row in rows), write_tail_shards(leftovers, seq_len, staging, dtype)


@ray.remote
def _train_bpe_task(sample: Dataset, vocab_size: int, min_frequency: int, threads: int) -> str:
    # Rayon sizes its thread pool from the environment at its first use in a process. Set here
    # rather than as a runtime_env, which would start a worker process for it (1 s of a 1 MB run).
    os.environ.update(RAYON_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="true")
    texts = (t for b in sample.iter_batches(batch_format="pyarrow", batch_size=256) for t in b.column("text").to_pylist())
    return train_bpe(texts, vocab_size, min_frequency).to_str()


# ------------------------------------------------------------------------- stage functions


def _timed(clock, stage: str, started: float, table: pa.Table) -> None:
    if clock is not None:
        clock.record.remote(stage, time.perf_counter() - started, table.num_rows,
                            pc.sum(pc.binary_length(table.column("text"))).as_py() or 0)


def _read_files(files: pa.Table, data: DataConfig, clock) -> Iterator[pa.Table]:
    """Documents of a block of files, in chunks, with ids, split and drop reason."""
    separator = re.compile(data.document_separator) if data.document_separator else None
    columns = defaultdict(list)
    size = 0
    started = time.perf_counter()
    for row in files.to_pylist():
        file_index = row.pop("file_index")
        source = SourceFile(**row)
        by_hash = source.split == "train"  # the others come from data.val_sources / data.test_sources
        for index, text, reason in read_documents(source, data.text_field, separator, data.fallback_encoding,
                                                  data.split.part_chars):
            doc_hash = splitting.doc_hash(f"{data.split.seed}:{source.key}#{index}")
            columns["file"].append(source.path)
            columns["index"].append(index)
            columns["order"].append((file_index << 32) | index)
            columns["kind"].append(source.kind)
            columns["split"].append(splitting.split_of(doc_hash, data.split) if by_hash else source.split)
            columns["by_hash"].append(by_hash)
            columns["doc_hash"].append(doc_hash)
            columns["text"].append(text)
            columns["reason"].append(reason)
            size += len(text)
            if len(columns["text"]) >= READ_CHUNK_DOCS or size >= READ_CHUNK_BYTES:
                table = _table(columns)
                _timed(clock, "read", started, table)
                yield table
                columns, size, started = defaultdict(list), 0, time.perf_counter()
    if columns:
        table = _table(columns)
        _timed(clock, "read", started, table)
        yield table


def _table(columns: dict[str, list]) -> pa.Table:
    return pa.table({**columns, "doc_hash": pa.array(columns["doc_hash"], pa.uint64())})


def _clean(batch: pa.Table, data: DataConfig, clock) -> pa.Table:
    started = time.perf_counter()
    text = clean_texts(batch.column("text"), data.clean)
    emptied = pc.and_(pc.equal(batch.column("reason"), ""), pc.equal(text, ""))
    reason = pc.if_else(emptied, "empty", batch.column("reason"))
    batch = batch.set_column(batch.schema.get_field_index("text"), "text", text)
    batch = batch.set_column(batch.schema.get_field_index("reason"), "reason", reason)
    _timed(clock, "clean", started, batch)
    return batch


def _filter(batch: pa.Table, data: DataConfig, clock) -> pa.Table:
    """The quality rules; `dropped_bytes` is what they took: a dropped document's text (of which it
    keeps the start, for rejected/), a kept one's removed lines."""
    started = time.perf_counter()
    bytes_in = pc.binary_length(batch.column("text"))
    texts, reasons, lines_removed = [], [], []
    for text, kind, reason in zip(*(batch.column(c).to_pylist() for c in ("text", "kind", "reason"))):
        if not reason:
            result = apply_quality_filters(text, kind, data.filters)
            text, reason = (text[:REJECTED_HEAD_CHARS], result.reason) if result.reason else (result.text, "")
            lines_removed.append(result.lines_removed)
        else:
            lines_removed.append(0)
        texts.append(text)
        reasons.append(reason)
    _timed(clock, "filter", started, batch)
    texts = pa.array(texts, pa.string())
    batch = batch.drop_columns(["text", "reason"])
    reasons = pa.array(reasons, pa.string())
    dropped_bytes = pc.if_else(pc.not_equal(reasons, ""), bytes_in, pc.subtract(bytes_in, pc.binary_length(texts)))
    return batch.append_column("text", texts).append_column("reason", reasons).append_column(
        "lines_removed", pa.array(lines_removed, pa.int64())).append_column("dropped_bytes", pc.cast(dropped_bytes, pa.int64()))


def _fingerprint(batch: pa.Table, data: DataConfig, clock) -> pa.Table:
    started = time.perf_counter()
    batch = dedup.add_fingerprints(batch, data.dedup)
    _timed(clock, "fingerprint", started, batch)
    return batch


def _sample(batch: pa.Table, fraction: float) -> pa.Table:
    """Kept train documents whose low 32 hash bits fall under `fraction`: the same sample every run."""
    low_bits = pc.bit_wise_and(batch.column("doc_hash"), pa.scalar(0xFFFFFFFF, pa.uint64()))
    chosen = pc.and_(
        pc.and_(pc.equal(batch.column("reason"), ""), pc.equal(batch.column("split"), "train")),
        pc.less(low_bits, pa.scalar(int(fraction * 2**32), pa.uint64())),
    )
    return batch.filter(chosen).select(["text"])


# --------------------------------------------------------------------------- bookkeeping


def _sum_batch_stats(rows) -> dict:
    totals = {"dropped": Counter(), "dropped_bytes": Counter(), "lines_removed": 0, "lines_removed_bytes": 0,
              "shards": [], "splits": {s: Counter() for s in SPLITS}}
    for row in rows:
        stats = json.loads(row)
        totals["dropped"].update(stats["dropped"])
        totals["dropped_bytes"].update(stats["dropped_bytes"])
        totals["lines_removed"] += stats["lines_removed"]
        totals["lines_removed_bytes"] += stats["lines_removed_bytes"]
        totals["shards"].extend(stats["shards"])
        for split, values in stats["splits"].items():
            totals["splits"][split].update(values)
    return totals


def _manifest(config, listing, totals, tails, tokenizer: TokenizerFiles, dtype, output, moves) -> dict:
    splits = {}
    for split in SPLITS:
        counts, tail = totals["splits"][split], tails[split]
        shards = sorted(s for s in totals["shards"] if s.startswith(split + "/"))
        splits[split] = {
            "documents": counts["documents"],
            "bytes": counts["bytes"],
            "tokens": counts["tokens"],
            "sequences": counts["sequences"] + tail["sequences"],
            "tokens_not_written": tail["tokens_not_written"],
            "shards": shards + ([tail["shard"]] if tail["shard"] else []),
        }
    dropped = dict(sorted(totals["dropped"].items()))
    kept = sum(s["documents"] for s in splits.values())
    return {
        "format": FORMAT_VERSION,
        "raylm_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "output": output,
        "files": {"read": len(listing.files), "bytes": sum(f.size for f in listing.files),
                  "skipped": dict(listing.skipped)},
        "documents": {"read": kept + sum(dropped.values()), "kept": kept, "dropped": dropped,
                      "kept_per_split": {s: splits[s]["documents"] for s in SPLITS},
                      "dropped_bytes": dict(sorted(totals["dropped_bytes"].items()))},
        "split": {
            "rule": "documents of data.sources by a hash of their id (data.split.seed) against data.split.val and "
                    "data.split.test; data.val_sources and data.test_sources whole; plain-text documents over "
                    "data.split.part_chars cut into parts first; then the fewest documents moved so that train, "
                    "val and test (when asked for) each have one",
            **config.data.split.model_dump(),
            "moved": [{"file": listing.files[order >> 32].path, "index": order & 0xFFFFFFFF, "to": to}
                      for order, to in sorted(moves.items())],
        },
        "dedup": {"exact": dropped.get("exact_duplicate", 0), "near": dropped.get("near_duplicate", 0),
                  "lsh_bands_rows": list(dedup.lsh_bands(config.data.dedup.threshold, config.data.dedup.num_perm))},
        "lines_removed": totals["lines_removed"],
        "lines_removed_bytes": totals["lines_removed_bytes"],
        "seq_len": config.data.seq_len,
        "dtype": dtype,
        "splits": splits,
        "tokenizer": {"file": "tokenizer.json", "sha256": tokenizer.sha256, "vocab_size": tokenizer.codec.get_vocab_size(),
                      "eos_id": tokenizer.eos_id, "eos_token": tokenizer.eos_token,
                      "trained": config.data.tokenizer.path is None},
        "rejected": "rejected/",
        "config": config.model_dump(mode="json"),
    }


def _log_summary(manifest: dict, log) -> None:
    docs = manifest["documents"]
    log(f"prepare: read {docs['read']} documents, kept {docs['kept']}, dropped {sum(docs['dropped'].values())}"
        + (f" ({', '.join(f'{k} {v}' for k, v in docs['dropped'].items())})" if docs["dropped"] else ""))
    if docs["dropped"].get("invalid_utf8") and not manifest["config"]["data"]["fallback_encoding"]:
        log(f"prepare: {docs['dropped']['invalid_utf8']} documents were not UTF-8: data.fallback_encoding=latin-1 "
            "(or cp1252) reads legacy 8-bit text")
    heavy = _heavy_filtering(manifest)
    if heavy:
        log(heavy)
    for split, s in manifest["splits"].items():
        log(f"prepare:   {split:5s} {s['documents']:>8d} docs {s['bytes'] / 1e6:>9.2f} MB {s['tokens']:>11d} tokens "
            f"{s['sequences']:>8d} sequences")
        fraction = manifest["split"].get(split)
        if fraction and not s["documents"]:
            log(f"prepare: warning: the {split} split is empty (data.split.{split}={fraction:g} of "
                f"{docs['kept']} kept documents); raise data.split.{split}, or give data.{split}_sources")
    log(f"prepare: wrote {manifest['output']} in {manifest['wall_seconds']:.1f}s")


def _heavy_filtering(manifest: dict) -> str | None:
    """A line of its own when the quality rules took more than half of the text: the share, the
    top reasons by bytes and the key that changes it."""
    by_reason = {reason: n for reason, n in manifest["documents"]["dropped_bytes"].items()
                 if reason not in splitting.DEDUP_REASONS and n}
    if manifest["lines_removed_bytes"]:
        by_reason["c4 line removal"] = manifest["lines_removed_bytes"]
    total = sum(s["bytes"] for s in manifest["splits"].values()) + sum(manifest["documents"]["dropped_bytes"].values()) \
        + manifest["lines_removed_bytes"]
    dropped = sum(by_reason.values())
    if not total or dropped <= total / 2:
        return None
    top = sorted(by_reason.items(), key=lambda item: -item[1])[:3]
    reasons = ", ".join(f"{reason} {n / total:.0%}" for reason, n in top)
    profile = manifest["config"]["data"]["filters"]["profile"]
    if top[0][0] == "word_too_long":
        fix = splitting.fix_for("word_too_long")
    else:
        fix = (f"data.filters.profile=none keeps it (now {profile!r}; 'auto' applies the web rules to records only), "
               "or loosen data.filters.web.* / data.filters.code.*")
    return (f"prepare: the quality filters dropped {dropped / total:.0%} of the text ({dropped / 1e6:.2f} of "
            f"{total / 1e6:.2f} MB: {reasons}); {fix}")
