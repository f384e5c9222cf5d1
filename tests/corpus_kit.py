"""Builders of small on-disk corpora, good and bad, for the data tests."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


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
