"""`prepare` end to end on real Ray: accounting, round trips, dedup, splits, atomic output."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from conftest import read_split, shared_file, split_documents
from corpus_kit import MIXED_NEWLINES, assert_shards_hold_the_kept_documents, bad_input_corpus, write_jsonl
from raylm.config import load_config
from raylm.data import dedup
from raylm.data.manifest import MANIFEST
from raylm.data.prepare import _log_summary
from raylm.data.sources import list_sources
from raylm.errors import RaylmError

pytestmark = pytest.mark.timeout(300)  # a starved Ray Data pipeline hangs silently: fail instead
WIKI_ARTICLE = r"\n(?= = [^=].* = \n)"  # WikiText: an article starts at a ' = Title = ' line


def test_stdlib_corpus_round_trip(run_prepare, tmp_path):
    manifest = run_prepare("data.tokenizer.vocab_size=2048", "data.tokenizer.sample_bytes=4000000", "data.seq_len=256",
                           "data.dedup.near=false")  # near dedup has its own tests
    output = tmp_path / "prepared"
    docs = manifest["documents"]
    assert docs["read"] == manifest["files"]["read"] == len(list_sources(load_config().data).files)
    assert docs["read"] == docs["kept"] + sum(docs["dropped"].values())
    assert docs["kept"] > 0.9 * docs["read"]
    assert all(manifest["splits"][s]["documents"] > 0 for s in ("train", "val", "test"))
    assert manifest["tokenizer"]["vocab_size"] == 2048 and manifest["dtype"] == "uint16"
    assert pq.read_schema(output / manifest["splits"]["train"]["shards"][0]).field("tokens").type == pa.list_(pa.uint16(), 257)
    assert {p.name for p in output.iterdir()} == {"train", "val", "test", "rejected", "tokenizer.json", "config.yaml", MANIFEST}
    assert load_config(output / "config.yaml").data.seq_len == 256
    assert_shards_hold_the_kept_documents(output, manifest)


def test_wikitext_with_held_out_sources_round_trip(run_prepare, tmp_path):
    valid, test = shared_file("wikitext2-valid.txt"), shared_file("wikitext2-test.txt")
    manifest = run_prepare(
        f"data.sources=[{valid}]", f"data.test_sources=[{test}]", f"data.document_separator={json.dumps(WIKI_ARTICLE)}",
        "data.filters.profile=web", "data.split.val=0.2", "data.split.test=0", "data.dedup.near=false", "data.split.part_chars=0",
    )
    articles = sum(len(re.findall(r"^ = [^=].* = $", p.read_text(), re.M)) for p in (valid, test))
    docs = manifest["documents"]
    assert docs["read"] == articles == docs["kept"] + sum(docs["dropped"].values())
    assert set(docs["dropped"]) <= {"empty"} | {r for r in docs["dropped"] if r.startswith(("web_", "c4_"))}
    assert docs["kept_per_split"]["test"] > 0 and docs["kept_per_split"]["val"] > 0
    assert manifest["splits"]["test"]["bytes"] < test.stat().st_size
    assert_shards_hold_the_kept_documents(tmp_path / "prepared", manifest)
    # What the rules took is counted in bytes too: each dropped document's text, and the lines C4 cut.
    assert set(docs["dropped_bytes"]) == set(docs["dropped"]) and manifest["lines_removed_bytes"] > 0
    assert all(docs["dropped_bytes"][reason] > 100 * n for reason, n in docs["dropped"].items() if reason != "empty")


def test_one_wikipedia_file_prepares_with_defaults_into_train_val_and_test_that_share_no_text(run_prepare, tmp_path):
    manifest = run_prepare(f"data.sources=[{shared_file('wikitext2-valid.txt')}]")  # every split and filter default
    kept, output = manifest["documents"]["kept_per_split"], tmp_path / "prepared"
    assert manifest["documents"]["dropped"] == {} and kept["train"] > 10 and kept["val"] >= 1 and kept["test"] >= 1
    train = "\n".join(split_documents(output, manifest, "train"))
    held_out = [line for split in ("val", "test") for doc in split_documents(output, manifest, split)
                for line in doc.split("\n") if len(line) >= 200]
    assert len(held_out) > 20 and not [line for line in held_out if line in train]


def test_every_bad_input_is_counted_and_named(run_prepare, tmp_path):
    expected = bad_input_corpus(tmp_path / "corpus")
    manifest = run_prepare(f"data.sources=[{tmp_path / 'corpus'}]", "data.filters.profile=none", "data.seq_len=8",
                           "data.dedup.exact=false", "data.dedup.near=false", "data.split.val=0", "data.split.test=0")
    docs = manifest["documents"]
    assert docs["kept"] == expected.pop("kept")
    assert docs["dropped"] == expected
    assert docs["read"] == docs["kept"] + sum(expected.values())
    assert manifest["files"]["skipped"] == {"unsupported .xyz": 1}
    ledger = pq.read_table(tmp_path / "prepared" / "rejected").to_pylist()
    assert Counter(row["reason"] for row in ledger) == Counter(expected)
    assert {"file": str(tmp_path / "corpus" / "mixed.jsonl"), "index": 6, "reason": "malformed_json", "head": ""} in ledger
    blob = next(row for row in ledger if row["reason"] == "word_too_long")
    assert len(blob["head"]) == 240 and blob["head"].startswith("data:application/octet-stream;base64,QUJD")
    assert_the_data_report_shows_it(tmp_path / "prepared", manifest)
    assert_shards_hold_the_kept_documents(tmp_path / "prepared", manifest)
    tokenizer = Tokenizer.from_file(str(tmp_path / "prepared" / "tokenizer.json"))
    written = tokenizer.decode([token for shard in read_split(tmp_path / "prepared", manifest, "train") for row in shard for token in row])
    assert MIXED_NEWLINES.decode().replace("\r\n", "\n").replace("\r", "\n").strip() in written and "\r" not in written
    summary = []
    _log_summary(manifest, summary.append)
    assert "2 documents were not UTF-8: data.fallback_encoding=latin-1" in "\n".join(summary)


def assert_the_data_report_shows_it(folder, manifest: dict) -> None:
    """`raylm report PREPARED`: splits, every drop reason with a bar and examples (file, index, the
    first characters), the kept documents' length histograms and the stage timings."""
    from raylm.report.report import write_report

    written = write_report(str(folder), log=lambda _: None)
    markdown = (folder / "report" / "report.md").read_text()
    assert [p.rsplit("/", 1)[1] for p in written["plots"]] == ["drop-reasons.png", "document-lengths.png"]
    for section in ("## Summary", "## Splits", "## What was dropped", "## What was kept", "## Stages"):
        assert section in markdown
    for reason, count in manifest["documents"]["dropped"].items():
        assert f"### {reason} ({count:,} documents)" in markdown
    assert f"| {folder.parent / 'corpus' / 'mixed.jsonl'} | 6 | (no text) |" in markdown
    assert "| train | " in markdown and "| tokenize_pack_write | " in markdown
    assert (folder / "report" / "report.html").read_text().count("data:image/png;base64,") == 2


@pytest.mark.parametrize("grouping", ["one task", "hash shuffles"])
def test_planted_exact_and_near_duplicates_are_removed(run_prepare, tmp_path, monkeypatch, grouping):
    if grouping == "hash shuffles":  # the path of corpora over a few million bucket rows
        monkeypatch.setattr(dedup, "ONE_TASK_MAX_ROWS", 0)
    rng = random.Random(7)
    vocabulary = [f"w{i}" for i in range(3000)]
    originals = [" ".join(rng.choices(vocabulary, k=400)) for _ in range(40)]

    def near_copy(text: str) -> str:
        words = text.split()
        for i in rng.sample(range(len(words)), 2):
            words[i] = "changed"
        return " ".join(words)

    train = originals[:30] + [originals[0], originals[1], originals[2]] + [near_copy(t) for t in originals[3:8]]
    held_out = originals[30:] + [near_copy(originals[9])]  # its train original must go, not it
    write_jsonl(tmp_path / "train.jsonl", [{"text": t} for t in train])
    write_jsonl(tmp_path / "val.jsonl", [{"text": t} for t in held_out])
    manifest = run_prepare(f"data.sources=[{tmp_path / 'train.jsonl'}]", f"data.val_sources=[{tmp_path / 'val.jsonl'}]",
                           "data.filters.profile=none", "data.split.val=0", "data.split.test=0")
    assert manifest["dedup"] == {"exact": 3, "near": 6, "lsh_bands_rows": [9, 14]}
    removed = {(Path(r["file"]).name, r["index"]) for r in pq.read_table(tmp_path / "prepared" / "rejected").to_pylist()}
    copies = {("train.jsonl", i) for i in range(30, 38)}
    assert removed == copies | {("train.jsonl", 9)}
    assert manifest["documents"]["kept_per_split"] == {"train": 29, "val": 11, "test": 0}


def test_same_input_same_split_and_a_given_tokenizer_streams(run_prepare, tmp_path, monkeypatch):
    corpus = shared_file("tinyshakespeare.txt")
    common = [f"data.sources=[{corpus}]", r"data.document_separator='\n\n'", "data.filters.profile=none",
              "data.split.val=0.1", "data.split.test=0.1", "data.dedup.near=false"]
    first = run_prepare(*common, output=tmp_path / "first")
    monkeypatch.setattr("raylm.data.prepare.STREAM_MIN_BYTES", 0)  # streams above it when one pass suffices
    second = run_prepare(*common, "data.dedup.exact=false", f"data.tokenizer.path={tmp_path / 'first' / 'tokenizer.json'}",
                         output=tmp_path / "second")
    exact_dups = first["dedup"]["exact"]
    assert exact_dups > 0  # Shakespeare repeats short lines ("Exeunt.")
    for split in ("train", "val", "test"):
        assert 0 <= second["documents"]["kept_per_split"][split] - first["documents"]["kept_per_split"][split] <= exact_dups
    assert sum(second["documents"]["kept_per_split"].values()) - first["documents"]["kept"] == exact_dups
    assert second["tokenizer"]["sha256"] == first["tokenizer"]["sha256"] and not second["tokenizer"]["trained"]
    assert "read_clean_filter_tokenize_pack_write" in second["phases_seconds"]  # one streaming pass


def test_nothing_left_is_an_error_and_publishes_nothing(run_prepare, tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("too short for the web rules")
    with pytest.raises(RaylmError, match="no training documents left"):
        run_prepare(f"data.sources=[{tmp_path / 'corpus'}]", "data.filters.profile=web")
    assert not (tmp_path / "prepared").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["corpus"]  # no staging folder left behind


def test_a_rerun_gives_the_same_dataset_and_replaces_the_output_in_one_step(run_prepare, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"{i}.md").write_text((f"Document number {i}. " if i % 8 else "A repeated document. ") * 30)
    args = [f"data.sources=[{corpus}]", "data.filters.profile=none", "data.batch_size=4", "data.split.val=0.2",
            "data.split.test=0.2", "data.dedup.near=false"]
    first = run_prepare(*args)
    stale = tmp_path / "prepared" / "train" / "part-stale.parquet"
    stale.write_bytes(b"left by an older run")
    second = run_prepare(*args)
    assert second["documents"] == first["documents"] and second["splits"] == first["splits"]
    assert second["tokenizer"]["sha256"] == first["tokenizer"]["sha256"]
    assert all(first["documents"]["kept_per_split"].values()) and first["dedup"]["exact"] == 4
    written = {str(p.relative_to(tmp_path / "prepared")) for p in (tmp_path / "prepared").rglob("*.parquet")}
    shards = [shard for split in second["splits"].values() for shard in split["shards"]]
    assert written == set(shards) | {p for p in written if p.startswith("rejected/")}  # old files gone, every file listed
    assert len(second["splits"]["train"]["shards"]) > 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "prepared"]
