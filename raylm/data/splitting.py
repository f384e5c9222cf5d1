"""Which split each document goes to: a hash of its id against the split fractions, then a
balancing pass so that a corpus of a few documents still yields train and held-out text.

Hashing alone is the right rule for large corpora (deterministic, no global view, no order), but
one book cut into 19 parts with `data.split.val=0.01` most often puts nothing in val. So once the
documents are filtered and deduplicated, a census of the kept ones (one small row per block) lets
the driver move the fewest documents needed: train gets one first, then val, then test, each when
its fraction is above 0 and enough documents remain. Only documents split by hash move (never one
from `data.val_sources` / `data.test_sources`), and the ones moved are those whose hashes lie
nearest the split they join, so the result is what slightly larger fractions would have drawn
and the same input always gives the same split. Dedup runs before the census and treats every
split alike, so no two kept documents anywhere, let alone across train and val, are duplicates.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylm.config import SplitConfig
from raylm.data.pack import SPLITS

MOVABLE_PER_SPLIT = 2  # balancing moves at most two documents out of train, one out of val or test
DEDUP_REASONS = ("exact_duplicate", "near_duplicate")


def doc_hash(doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little")


def split_of(doc_hash: int, split: SplitConfig) -> str:
    """Deterministic: the top 32 bits of the id hash, as a fraction, against the split fractions
    (test lowest, then val, then train)."""
    u = (doc_hash >> 32) / 2**32
    return "test" if u < split.test else "val" if u < split.test + split.val else "train"


@dataclass
class Census:
    """Kept documents and bytes per split, drops per reason (of documents split by hash, i.e. from
    data.sources), and per split the movable kept documents nearest its edge, as (hash position,
    order, bytes): train's lowest, val's and test's highest."""

    kept: Counter = field(default_factory=Counter)
    kept_bytes: Counter = field(default_factory=Counter)
    from_sources: int = 0
    dropped_from_sources: Counter = field(default_factory=Counter)
    edges: dict[str, list[tuple[int, int, int]]] = field(default_factory=lambda: {s: [] for s in SPLITS})

    @classmethod
    def combine(cls, rows) -> "Census":
        total = cls()
        for row in rows:
            part = json.loads(row)
            total.kept.update(part["kept"])
            total.kept_bytes.update(part["kept_bytes"])
            total.from_sources += part["from_sources"]
            total.dropped_from_sources.update(part["dropped_from_sources"])
            for split in SPLITS:
                total.edges[split] = _nearest_edge(split, total.edges[split] + [tuple(e) for e in part["edges"][split]])
        return total


def _nearest_edge(split: str, candidates: list) -> list:
    return sorted(candidates, reverse=split != "train")[:MOVABLE_PER_SPLIT]


def census(batch: pa.Table) -> pa.Table:
    """Ray Data UDF over a block: its Census as one JSON row."""
    kept = pc.equal(batch.column("reason"), "").to_numpy(zero_copy_only=False)
    by_hash = batch.column("by_hash").to_numpy(zero_copy_only=False)
    splits = batch.column("split").to_numpy(zero_copy_only=False)
    nbytes = pc.binary_length(batch.column("text")).to_numpy(zero_copy_only=False)
    position = (batch.column("doc_hash").to_numpy() >> np.uint64(32)).astype(np.int64)
    order = batch.column("order").to_numpy()
    dropped = batch.column("reason").to_numpy(zero_copy_only=False)[~kept & by_hash]
    part = {"kept": {}, "kept_bytes": {}, "edges": {}, "from_sources": int(by_hash.sum()),
            "dropped_from_sources": dict(Counter(dropped.tolist()))}
    for split in SPLITS:
        here = kept & (splits == split)
        part["kept"][split] = int(here.sum())
        part["kept_bytes"][split] = int(nbytes[here].sum())
        movable = np.flatnonzero(here & by_hash)
        by_position = movable[np.argsort(position[movable], kind="stable")]
        nearest = by_position[:MOVABLE_PER_SPLIT] if split == "train" else by_position[::-1][:MOVABLE_PER_SPLIT]
        part["edges"][split] = [(int(position[i]), int(order[i]), int(nbytes[i])) for i in nearest]
    return pa.table({"census": [json.dumps(part)]})


def balance(found: Census, split: SplitConfig) -> dict[int, str]:
    """The documents to move (order -> new split) so that train has one when any document was kept,
    then val and test have one when asked for (fraction > 0) while train keeps at least one."""
    kept = Counter(found.kept)
    moves: dict[int, str] = {}
    if not kept["train"]:
        donors = sorted(((position, order, name) for name in ("val", "test") for position, order, _ in found.edges[name]),
                        reverse=True)
        if donors:
            moves[donors[0][1]] = "train"
            kept[donors[0][2]] -= 1
            kept["train"] += 1
    wanted = [name for name in ("val", "test") if getattr(split, name) > 0 and not kept[name]]
    movable = found.edges["train"][: max(0, kept["train"] - 1)]
    chosen = wanted[: len(movable)]
    # Test's hash range lies below val's, so the lowest train document goes to test.
    for name, (_, order, _) in zip(sorted(chosen, key=("test", "val").index), movable):
        moves[order] = name
    return moves


def moved_bytes(found: Census, moves: dict[int, str]) -> Counter:
    """Kept bytes per split after the moves."""
    result = Counter(found.kept_bytes)
    for name, edge in found.edges.items():
        for _, order, nbytes in edge:
            if order in moves:
                result[name] -= nbytes
                result[moves[order]] += nbytes
    return result


def move(batch: pa.Table, moves: dict[int, str]) -> pa.Table:
    """Ray Data UDF: the split column with the balancing moves applied."""
    orders = batch.column("order").to_pylist()
    splits = [moves.get(order, split) for order, split in zip(orders, batch.column("split").to_pylist())]
    return batch.set_column(batch.schema.get_field_index("split"), "split", pa.array(splits, pa.string()))


def fix_for(reason: str) -> str:
    """The key that keeps documents dropped for this reason."""
    if reason.startswith(("web_", "c4_", "code_")) or reason == "empty":
        return "data.filters.profile (none keeps them) or its thresholds"
    if reason == "word_too_long":
        return "data.filters.max_word_chars"
    if reason in DEDUP_REASONS:
        return "data.dedup.exact / data.dedup.near"
    if reason == "invalid_utf8":
        return "data.fallback_encoding=latin-1"
    if reason in ("missing_text_field", "missing_text_column"):
        return "data.text_field"
    return "the drop reasons table in the README"


def nothing_to_train_on(found: Census, sources: list[str]) -> str:
    """The one-line error when no training document is left: what happened to them and the key
    that changes it."""
    held_out = found.kept["val"] + found.kept["test"]
    if not found.from_sources:
        return (f"no training documents: data.sources {sources} gave none"
                + (f" ({held_out} kept come from data.val_sources / data.test_sources)" if held_out else "")
                + "; add files to data.sources")
    dropped = found.dropped_from_sources.most_common()
    reasons = ", ".join(f"{reason} {count}" for reason, count in dropped[:3])
    noun = "document" if found.from_sources == 1 else "documents"
    return (f"no training documents left: {found.from_sources} {noun} read from data.sources {sources}, all dropped "
            f"({reasons}); see {fix_for(dropped[0][0])}")
