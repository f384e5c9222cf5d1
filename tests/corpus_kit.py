"""Builders of small on-disk corpora, good and bad, for the data tests, and the check that a
prepared folder holds exactly the documents its manifest says were kept."""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer

from conftest import read_split
from raylm.config import load_config
from raylm.data.clean import clean_texts
from raylm.data.filters import apply_quality_filters
from raylm.data.formats import read_documents
from raylm.data.sources import list_sources


def write_jsonl(path: Path, rows: list, raw_lines: list[bytes] = ()) -> Path:
    lines = [json.dumps(r).encode() for r in rows] + list(raw_lines)
    data = b"\n".join(lines) + b"\n"
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_parquet(path: Path, table: pa.Table) -> Path:
    pq.write_table(table, path)
    return path


MIXED_NEWLINES = b"Windows line\r\nold Mac line\rUnix line\nlast line\r\n"
BLOB_LINE = b"data:application/octet-stream;base64," + b"QUJD" * 12_500_000  # 50 MB without a space
DECIDED_AFTER_READING = ("empty", "word_too_long")  # read as text, dropped by cleaning or filtering


def bad_input_corpus(folder: Path) -> dict[str, int]:
    """One file (or line) per kind of bad input, plus good documents; returns the expected
    count of documents per drop reason, with "kept" for the good ones."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "good.txt").write_text("A plain text document.\n")
    (folder / "notes.md").write_text("# Title\n\nSome markdown.\n")
    (folder / "empty.txt").write_bytes(b"")
    (folder / "blank.txt").write_text("  \n\t\n")
    (folder / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (folder / "invalid.txt").write_bytes(b"caf\xe9 au lait, latin-1 not utf-8")
    (folder / "newlines.txt").write_bytes(MIXED_NEWLINES)
    (folder / "one_line.txt").write_bytes(BLOB_LINE[:100_000])  # test_formats reads one of 50 MB
    (folder / "good.txt.gz").write_bytes(gzip.compress(b"A gzipped text document."))
    (folder / "truncated.txt.gz").write_bytes(gzip.compress(b"x" * 5000)[:-20])
    (folder / "notgzip.txt.gz").write_bytes(b"this is not gzip at all")
    write_jsonl(
        folder / "mixed.jsonl",
        [{"text": "json one"}, {"text": "json two"}, {"text": 42}, {"text": None}, {"body": "no text"}, ["a list"]],
        raw_lines=[b'{"text": "unterminated', b'{"text": "bad \xff utf8"}'],
    )
    good_lines = b"".join(json.dumps({"text": f"line {i}"}).encode() + b"\n" for i in range(50))
    cut = gzip.compress(good_lines)[:-30]
    (folder / "cut.jsonl.gz").write_bytes(cut)
    readable_lines = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(cut).count(b"\n")
    (folder / "array.json").write_text(json.dumps([{"text": "array one"}, {"text": "array two"}]))
    write_parquet(folder / "table.parquet", pa.table({"text": ["parquet one", None, "parquet two"]}))
    write_parquet(folder / "nocolumn.parquet", pa.table({"body": ["a", "b", "c", "d"]}))
    write_parquet(folder / "numbers.parquet", pa.table({"text": [1, 2]}))
    (folder / "corrupt.parquet").write_bytes(b"PAR1" + b"\x00garbage" * 50)
    (folder / "image.xyz").write_bytes(b"unsupported")
    return {
        # good.txt, notes.md, newlines.txt, good.txt.gz, 2 jsonl, 2 json array, 2 parquet, the readable part of cut.jsonl.gz
        "kept": 1 + 1 + 1 + 1 + 2 + 2 + 2 + readable_lines,
        "empty_file": 1,
        "empty": 1,
        "word_too_long": 1,
        "binary": 1,
        "invalid_utf8": 2,  # invalid.txt + the bad jsonl line
        "truncated_gzip": 2,  # truncated.txt.gz + the cut-off end of cut.jsonl.gz
        "corrupt_gzip": 1,
        "non_string_text": 1 + 2,
        "null_text": 1 + 1,
        "missing_text_field": 1,
        "non_object_json": 1,
        "malformed_json": 1,
        "missing_text_column": 4,
        "corrupt_parquet": 1,
    }


def kept_documents(output: Path, manifest: dict) -> list[str]:
    """The kept texts, recomputed without Ray: read, clean, filter, minus the rejected ledger."""
    config = load_config(None, [f"{k}={json.dumps(v)}" for k, v in _flatten(manifest["config"])])
    data = config.data
    rejected = pq.read_table(output / "rejected") if (output / "rejected").exists() else pa.table({"file": [], "index": []})
    dropped = set(zip(rejected.column("file").to_pylist(), rejected.column("index").to_pylist()))
    separator = re.compile(data.document_separator) if data.document_separator else None
    texts = []
    for source in list_sources(data).files:
        for index, text, reason in read_documents(source, data.text_field, separator, data.fallback_encoding,
                                                  data.split.part_chars):
            if reason or (source.path, index) in dropped:
                continue
            cleaned = clean_texts(pa.array([text]), data.clean)[0].as_py()
            result = apply_quality_filters(cleaned, source.kind, data.filters)
            assert result.reason is None, f"{source.path}#{index} kept by prepare but dropped here"
            texts.append(result.text)
    return texts


def _flatten(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ("max_top_ngram_chars_fraction", "max_duplicate_ngram_chars_fraction"):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def assert_shards_hold_the_kept_documents(output: Path, manifest: dict) -> None:
    """Tokens written = kept documents' tokens + one separator each, and every document that lies
    whole inside a shard decodes back to exactly one kept document. A batch's shard holds whole
    windows of that batch's documents and its leftover goes to the tail shard, so only documents
    that end in the tail, or in the unwritten last partial window, are not found whole."""
    tokenizer = Tokenizer.from_file(str(output / "tokenizer.json"))
    eos = manifest["tokenizer"]["eos_id"]
    texts = kept_documents(output, manifest)
    encoded = [tuple(e.ids) for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
    assert sum(len(ids) + 1 for ids in encoded) == sum(s["tokens"] for s in manifest["splits"].values())
    assert sum(s["documents"] for s in manifest["splits"].values()) == len(texts) == manifest["documents"]["kept"]
    unmatched = Counter(encoded)
    window = manifest["seq_len"] + 1
    ending_in_the_tail = 0
    for split, stats in manifest["splits"].items():
        shards = read_split(output, manifest, split)
        assert sum(len(rows) for rows in shards) == stats["sequences"]
        assert stats["sequences"] * window + stats["tokens_not_written"] == stats["tokens"]
        assert 0 <= stats["tokens_not_written"] < window
        for name, rows in zip(stats["shards"], shards):
            assert all(len(row) == window for row in rows)
            if name.endswith("part-tail.parquet"):  # leftovers of many batches: fragments, not whole documents
                ending_in_the_tail += sum(row.count(eos) for row in rows)
                continue
            stream = [token for row in rows for token in row]
            whole = []
            for token in stream:
                if token == eos:
                    segment = tuple(whole)
                    assert unmatched[segment] > 0, f"{name} holds a document that was not kept"
                    unmatched[segment] -= 1
                    assert tokenizer.decode(list(segment)) in texts
                    whole = []
                else:
                    whole.append(token)
    unwritten = sum(s["tokens_not_written"] for s in manifest["splits"].values())
    assert sum(unmatched.values()) <= ending_in_the_tail + unwritten
