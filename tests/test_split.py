"""The train/val/test split without Ray: hashing, the census of kept documents, the balancing
moves that give a few-document corpus every split it asks for, and the errors when nothing is
left to train on."""

from __future__ import annotations

import pyarrow as pa

from raylm.config import SplitConfig
from raylm.data.splitting import Census, balance, census, doc_hash, move, moved_bytes, nothing_to_train_on, split_of


def documents(n: int, split: SplitConfig, held_out: dict[int, str] = (), dropped: dict[int, str] = ()) -> pa.Table:
    """n documents of one file as prepare's read stage makes them: split by hash unless held out."""
    hashes = [doc_hash(f"{split.seed}:book.txt#{i}") for i in range(n)]
    return pa.table({
        "order": list(range(n)),
        "split": [dict(held_out).get(i) or split_of(h, split) for i, h in enumerate(hashes)],
        "by_hash": [i not in dict(held_out) for i in range(n)],
        "doc_hash": pa.array(hashes, pa.uint64()),
        "text": ["" if i in dict(dropped) else f"part {i} " * 100 for i in range(n)],
        "reason": [dict(dropped).get(i, "") for i in range(n)],
    })


def balanced(table: pa.Table, split: SplitConfig, blocks: int = 3) -> tuple[Census, dict[int, str], pa.Table]:
    """The census over `blocks` blocks (as Ray Data calls it), the moves and the table after them."""
    size = -(-table.num_rows // blocks)
    rows = [census(table.slice(i, size)).column("census")[0].as_py() for i in range(0, table.num_rows, size)]
    found = Census.combine(rows)
    moves = balance(found, split)
    return found, moves, move(table, moves)


def counts(table: pa.Table) -> dict[str, int]:
    kept = table.filter(pa.compute.equal(table.column("reason"), ""))
    return {name: kept.column("split").to_pylist().count(name) for name in ("train", "val", "test")}


def test_one_book_in_parts_gets_one_val_and_one_test_part_moved_from_train():
    split = SplitConfig(seed=1)  # val 1%, test 1%: all 19 parts hash into train
    table = documents(19, split)
    assert counts(table) == {"train": 19, "val": 0, "test": 0}
    found, moves, after = balanced(table, split)
    assert counts(after) == {"train": 17, "val": 1, "test": 1}
    positions = sorted((h >> 32, order) for order, h in enumerate(table.column("doc_hash").to_pylist()))
    # The two train documents nearest the held-out ranges: the lowest goes to test, the next to val.
    assert moves == {positions[0][1]: "test", positions[1][1]: "val"}
    assert balanced(table, split, blocks=1)[1] == moves  # however the blocks fall
    rows = after.to_pylist()
    assert moved_bytes(found, moves) == {name: sum(len(r["text"]) for r in rows if r["split"] == name)
                                         for name in ("train", "val", "test")}


def test_two_documents_give_train_and_val_and_test_waits_for_a_third():
    split = SplitConfig()
    assert counts(balanced(documents(2, split), split)[2]) == {"train": 1, "val": 1, "test": 0}
    assert counts(balanced(documents(3, split), split)[2]) == {"train": 1, "val": 1, "test": 1}
    assert counts(balanced(documents(1, split), split)[2]) == {"train": 1, "val": 0, "test": 0}


def test_a_fraction_of_zero_is_never_filled_and_splits_that_have_documents_stay():
    assert counts(balanced(documents(19, SplitConfig(val=0, test=0)), SplitConfig(val=0, test=0))[2])["train"] == 19
    split = SplitConfig(val=0.3, test=0.3)
    table = documents(40, split)
    assert balanced(table, split)[1] == {} and min(counts(table).values()) > 0


def test_a_lone_held_out_document_by_hash_goes_to_train():
    split = SplitConfig(val=0.5, test=0.49)
    table = documents(6, split)
    assert counts(table)["train"] == 0
    after = balanced(table, split)[2]
    assert counts(after)["train"] == 1 and sum(counts(after).values()) == 6


def test_documents_from_held_out_sources_never_move():
    split = SplitConfig(val=0.5, test=0.0)
    table = documents(5, split, held_out={0: "val", 1: "val", 2: "val", 3: "val", 4: "val"})
    found, moves, after = balanced(table, split)
    assert moves == {} and counts(after) == {"train": 0, "val": 5, "test": 0}
    assert nothing_to_train_on(found, ["books/"]) == (
        "no training documents: data.sources ['books/'] gave none (5 kept come from data.val_sources / "
        "data.test_sources); add files to data.sources")


def test_dropped_documents_are_not_counted_and_the_error_names_the_reason_and_key():
    split = SplitConfig()
    table = documents(3, split, dropped={0: "web_too_few_words", 1: "web_too_few_words", 2: "c4_too_few_sentences"})
    found, moves, after = balanced(table, split)
    assert moves == {} and sum(counts(after).values()) == 0
    assert nothing_to_train_on(found, ["a.txt"]) == (
        "no training documents left: 3 documents read from data.sources ['a.txt'], all dropped (web_too_few_words 2, "
        "c4_too_few_sentences 1); see data.filters.profile (none keeps them) or its thresholds")
