"""Exact and near-duplicate removal: fingerprints per document, then bucket grouping on Ray Data.

Exact: a 64-bit hash of the cleaned text (a false match is ~n²/2^65 likely: 3e-6 for 10M docs). Near: MinHash over word n-gram shingles, cut into
LSH bands; two documents sharing any band bucket are candidates (Broder 1997; Leskovec et al.,
Mining of Massive Datasets, ch. 3). Bands and rows are chosen to minimise false positives plus
false negatives around the threshold, as datasketch does.

Exact hashes and bands share one bucket space. A document is removed when a bucket it belongs to holds a document with a smaller `order` (files
of test, then val, then train sources; then position in file). So the first copy is kept, and a
held-out document beats its training copy: no leakage into val/test. Fingerprints are a Ray Data
map; the per-bucket minimum and the join back are vectorised kernels over hash shuffles (one of
bucket rows, one of removals, one join back), so no process ever sees all documents — except for
a corpus small enough that one task grouping its few million bucket rows beats three shuffles.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import xxhash
from ray.data import Dataset
from ray.data.aggregate import Min

from raylm import runtime
from raylm.config import DedupConfig
from raylm.data.pack import REJECTED_HEAD_CHARS

REASONS = ("exact_duplicate", "near_duplicate")  # code 0 wins when a document is both
WORD = re.compile(r"\w+")
SHINGLE_CHUNK = 8192  # rows of the (shingles x permutations) matrix formed at once
EXACT_SEED = 2**40  # apart from the band seeds 0..bands-1: exact and band buckets never mix
ONE_TASK_MAX_ROWS = 8_000_000  # bucket rows (17 bytes each) one task groups: ~0.5M documents


@functools.lru_cache(maxsize=None)
def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) minimising the false-positive plus false-negative areas."""
    below = np.linspace(0.0, threshold, 512)
    above = np.linspace(threshold, 1.0, 512)
    best, best_cost = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        rows = num_perm // bands
        false_positive = np.trapezoid(1 - (1 - below**rows) ** bands, below)
        false_negative = np.trapezoid((1 - above**rows) ** bands, above)
        if false_positive + false_negative < best_cost:
            best, best_cost = (bands, rows), false_positive + false_negative
    return best


@functools.lru_cache(maxsize=None)
def _random_words(count: int, seed: int, odd: bool) -> np.ndarray:
    """Fixed pseudo-random 64-bit constants: the same on every worker and every run."""
    values = np.random.default_rng(seed).integers(0, 2**63, count, dtype=np.uint64) * np.uint64(2)
    return values + np.uint64(1) if odd else values


def _permutations(num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    """Multiply-shift hashes h -> (a*h + b) >> 32, one per permutation (a odd)."""
    return _random_words(num_perm, 1, odd=True), _random_words(num_perm, 2, odd=False)


def shingle_hashes(text: str, shingle_size: int, word_hashes: dict[str, int]) -> np.ndarray:
    """Distinct 64-bit hashes of the lowercased word n-grams; a short text is one shingle."""
    words = WORD.findall(text.lower())
    if not words:
        return np.empty(0, dtype=np.uint64)
    ids = np.fromiter(
        (word_hashes.get(w) or word_hashes.setdefault(w, xxhash.xxh3_64_intdigest(w.encode())) for w in words),
        dtype=np.uint64,
        count=len(words),
    )
    n = max(1, len(ids) - shingle_size + 1)
    position = _random_words(shingle_size, 3, odd=True)
    shingles = np.zeros(n, dtype=np.uint64)
    for j in range(min(shingle_size, len(ids))):
        shingles += ids[j : j + n] * position[j]
    return np.unique(shingles)


def minhash(shingles: np.ndarray, num_perm: int) -> np.ndarray:
    a, b = _permutations(num_perm)
    signature = np.full(num_perm, np.iinfo(np.uint32).max, dtype=np.uint64)
    for start in range(0, len(shingles), SHINGLE_CHUNK):
        chunk = shingles[start : start + SHINGLE_CHUNK, None]
        np.minimum(signature, ((chunk * a + b) >> np.uint64(32)).min(axis=0), out=signature)
    return signature.astype(np.uint32)


def band_buckets(signature: np.ndarray, bands: int, rows: int) -> list[int]:
    """One 64-bit bucket id per band; the band index seeds the hash so bands never collide."""
    return [xxhash.xxh3_64_intdigest(signature[i * rows : (i + 1) * rows].tobytes(), seed=i) for i in range(bands)]


def add_fingerprints(batch: pa.Table, config: DedupConfig) -> pa.Table:
    """Ray Data UDF: the `buckets` of each kept document, as (bucket id, reason code) pairs.

    The exact hash is one more bucket (code 0); the LSH bands are the others (code 1).
    """
    texts = batch.column("text").to_pylist()
    kept = pc.equal(batch.column("reason"), "").to_pylist()
    bands, rows = lsh_bands(config.threshold, config.num_perm)
    word_hashes: dict[str, int] = {}
    buckets, codes = [], []
    for text, keep in zip(texts, kept):
        ids, kinds = [], []
        if keep and config.exact:
            ids.append(xxhash.xxh3_64_intdigest(text.encode(), seed=EXACT_SEED))
            kinds.append(0)
        shingles = shingle_hashes(text, config.shingle_size, word_hashes) if keep and config.near else ()
        if len(shingles):
            ids.extend(band_buckets(minhash(shingles, config.num_perm), bands, rows))
            kinds.extend([1] * bands)
        buckets.append(ids)
        codes.append(kinds)
    batch = batch.append_column("buckets", pa.array(buckets, pa.list_(pa.uint64())))
    return batch.append_column("bucket_codes", pa.array(codes, pa.list_(pa.int8())))


BUCKET_ROWS = pa.schema([("bucket", pa.uint64()), ("code", pa.int8()), ("order", pa.int64())])


def _explode(batch: pa.Table) -> pa.Table:
    buckets = batch.column("buckets").combine_chunks()
    return pa.table({
        "bucket": pc.list_flatten(buckets),
        "code": pc.list_flatten(batch.column("bucket_codes").combine_chunks()),
        "order": pc.take(batch.column("order"), pc.list_parent_indices(buckets)),
    })


def _not_first_in_bucket(partition: pa.Table) -> pa.Table:
    """(order, code) of rows whose bucket holds a smaller order. A hash partition holds whole
    buckets (the same guarantee Ray's own map_groups rests on), so one vectorised pass suffices."""
    bucket = partition.column("bucket").to_numpy()
    order = partition.column("order").to_numpy()
    by_bucket_then_order = np.lexsort((order, bucket))
    bucket = bucket[by_bucket_then_order]
    not_first = np.ones(len(bucket), dtype=bool)
    not_first[1:] = bucket[1:] == bucket[:-1]
    not_first[:1] = False
    chosen = by_bucket_then_order[not_first]
    return pa.table({"order": order[chosen], "code": partition.column("code").to_numpy()[chosen]})


def deduplicate(docs: Dataset, config: DedupConfig, partitions: int) -> tuple[Dataset, int]:
    """Docs (fingerprinted and materialized) with duplicates marked, fingerprints dropped, and how
    many were marked. Up to ONE_TASK_MAX_ROWS bucket rows are grouped by one task; above, by
    hash shuffles, whose fixed cost (seconds, measured on 2 cores) only pays off at scale."""
    rows = docs.select_columns(["order", "buckets", "bucket_codes"]).map_batches(_explode, batch_format="pyarrow",
                                                                                  **runtime.data_task(1))
    slim = docs.drop_columns(["buckets", "bucket_codes"])
    buckets_per_doc = config.exact + config.near * lsh_bands(config.threshold, config.num_perm)[0]
    if docs.count() * buckets_per_doc <= ONE_TASK_MAX_ROWS:
        removed = ray.get(_duplicates_in_one_task.options(**runtime.data_task(1)).remote(*rows.to_arrow_refs()))
        marked = slim.map_batches(_mark_listed, fn_kwargs={"removed": removed}, batch_format="pyarrow",
                                  **runtime.data_task(1))
        return (marked if removed.num_rows else slim), removed.num_rows
    removed = _duplicates_by_shuffle(rows, partitions).materialize()
    count = removed.count()
    marked = slim.join(removed, "left_outer", num_partitions=partitions, on=("order",),
                       aggregator_ray_remote_args={"resources": runtime.data_resources()}).map_batches(
        _mark_joined, batch_format="pyarrow", **runtime.data_task(1))
    return (marked if count else slim), count


@ray.remote
def _duplicates_in_one_task(*blocks: pa.Table) -> pa.Table:
    """The (order, code) rows to remove, from every bucket row at once."""
    rows = pa.concat_tables(blocks) if blocks else BUCKET_ROWS.empty_table()
    removed = _not_first_in_bucket(rows)
    return removed.group_by("order").aggregate([("code", "min")]).rename_columns(["order", "code"])


def _duplicates_by_shuffle(rows: Dataset, partitions: int) -> Dataset:
    """The same rows, from hash partitions of the bucket rows, then a shuffle by document."""
    removed = rows.repartition(partitions, keys=["bucket"]).map_batches(
        _not_first_in_bucket, batch_size=None, batch_format="pyarrow", **runtime.data_task(1)
    )
    return removed.groupby("order", num_partitions=partitions).aggregate(Min("code", alias_name="code"))


def _mark_listed(batch: pa.Table, removed: pa.Table) -> pa.Table:
    code = pc.take(removed.column("code"), pc.index_in(batch.column("order"), value_set=removed.column("order")))
    return _mark(batch, code)


def _mark_joined(batch: pa.Table) -> pa.Table:
    if "code" not in batch.column_names:  # joined with an empty partition of `removed`
        return batch
    return _mark(batch.drop_columns(["code"]), batch.column("code"))


def _mark(batch: pa.Table, code: pa.ChunkedArray | pa.Array) -> pa.Table:
    """`reason` set to the dedup reason (and the text cut to its start, its size in `dropped_bytes`)
    where `code` is not null."""
    removed_here = pc.is_valid(code)
    reason = pc.if_else(removed_here, pc.take(pa.array(REASONS), pc.fill_null(code, 0)), batch.column("reason"))
    text = pc.if_else(removed_here, pc.utf8_slice_codeunits(batch.column("text"), 0, REJECTED_HEAD_CHARS), batch.column("text"))
    dropped_bytes = pc.if_else(removed_here, pc.cast(pc.binary_length(batch.column("text")), pa.int64()),
                               batch.column("dropped_bytes"))
    batch = batch.drop_columns(["reason", "text", "dropped_bytes"])
    return batch.append_column("reason", reason).append_column("text", text).append_column("dropped_bytes", dropped_bytes)
