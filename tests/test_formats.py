"""Reading files: every format, and every kind of bad input counted under its reason."""

from __future__ import annotations

import gzip
import itertools
import json
import re
from collections import Counter

import pyarrow as pa
import pytest
from pydantic import ValidationError

from corpus_kit import BLOB_LINE, DECIDED_AFTER_READING, bad_input_corpus, write_jsonl, write_parquet
from raylm.config import CleanConfig, DataConfig, FiltersConfig
from raylm.data.clean import clean_texts
from raylm.data.filters import apply_quality_filters
from raylm.data.formats import cut_into_parts, read_documents
from raylm.data.sources import SourceFile, list_sources
from raylm.errors import RaylmError


def docs_of(folder, **config) -> list[tuple[str, int, str, str]]:
    data = DataConfig(sources=[str(folder)], **config)
    separator = re.compile(data.document_separator) if data.document_separator else None
    return [
        (f.key, index, text, reason)
        for f in list_sources(data).files
        for index, text, reason in read_documents(f, data.text_field, separator, data.fallback_encoding,
                                                  data.split.part_chars)
    ]


def test_every_bad_input_kind_is_counted_under_its_reason(tmp_path):
    expected = Counter(bad_input_corpus(tmp_path / "corpus"))
    docs = docs_of(tmp_path / "corpus")
    reasons = Counter(reason or "kept" for _, _, _, reason in docs)
    later = Counter({reason: expected[reason] for reason in DECIDED_AFTER_READING})
    assert reasons == expected - later + Counter(kept=sum(later.values()))
    # the blank file is read as a (blank) document; cleaning drops it as `empty`
    assert ("blank.txt", 0, "  \n\t\n", "") in docs
    assert all(text == "" for _, _, text, reason in docs if reason)


def test_latin_1_is_dropped_by_default_and_read_with_a_fallback_encoding(tmp_path):
    bad_input_corpus(tmp_path / "corpus")
    (tmp_path / "corpus" / "cp1252_undefined.txt").write_bytes(b"\x81 is no cp1252 character")

    def texts(**config):
        return {(key, index): (text, reason) for key, index, text, reason in docs_of(tmp_path / "corpus", **config)
                if key in ("invalid.txt", "mixed.jsonl", "cp1252_undefined.txt")}

    assert texts()[("invalid.txt", 0)] == ("", "invalid_utf8")
    assert texts()[("mixed.jsonl", 7)] == ("", "invalid_utf8")
    latin_1 = texts(fallback_encoding="latin-1")
    assert latin_1[("invalid.txt", 0)] == ("café au lait, latin-1 not utf-8", "")
    assert latin_1[("mixed.jsonl", 7)] == ("bad ÿ utf8", "")
    assert latin_1[("mixed.jsonl", 0)] == ("json one", "")  # UTF-8 is still read as UTF-8
    assert texts(fallback_encoding="cp1252")[("cp1252_undefined.txt", 0)] == ("", "invalid_utf8")
    with pytest.raises(ValidationError, match="unknown encoding 'latin-2000'"):
        DataConfig(fallback_encoding="latin-2000")


def test_a_50_mb_line_is_read_cleaned_and_dropped_as_one_word(tmp_path):
    (tmp_path / "blob.txt").write_bytes(BLOB_LINE)
    (tmp_path / "blob.jsonl").write_bytes(b'{"text": "' + BLOB_LINE + b'"}\n{"text": "next line"}\n')
    docs = docs_of(tmp_path)
    assert [(key, len(text), reason) for key, _, text, reason in docs] == [
        ("blob.jsonl", len(BLOB_LINE), ""), ("blob.jsonl", 9, ""), ("blob.txt", len(BLOB_LINE), "")]
    cleaned = clean_texts(pa.array([docs[0][2]]), CleanConfig())[0].as_py()
    assert apply_quality_filters(cleaned, "text", FiltersConfig(profile="none")).reason == "word_too_long"


def test_a_file_that_vanishes_after_listing_is_counted_as_unreadable(tmp_path):
    (tmp_path / "stays.txt").write_text("here")
    for name in ("gone.txt", "gone.json"):
        (tmp_path / name).write_text(json.dumps([{"text": "soon gone"}]))
    write_jsonl(tmp_path / "gone.jsonl", [{"text": "soon gone"}])
    write_parquet(tmp_path / "gone.parquet", pa.table({"text": ["soon gone"]}))
    files = list_sources(DataConfig(sources=[str(tmp_path)])).files
    for path in tmp_path.glob("gone.*"):
        path.unlink()
    read = {f.key: list(read_documents(f, "text", None)) for f in files}
    assert read == {"stays.txt": [(0, "here", "")], **{f"gone.{ext}": [(0, "", "unreadable_file")]
                                                        for ext in ("txt", "json", "jsonl", "parquet")}}


def test_partial_files_keep_what_was_readable(tmp_path):
    bad_input_corpus(tmp_path / "corpus")
    docs = [d for d in docs_of(tmp_path / "corpus") if d[0] == "cut.jsonl.gz"]
    kept = [text for _, _, text, reason in docs if not reason]
    assert kept and kept == [f"line {i}" for i in range(len(kept))]
    assert docs[-1][3] == "truncated_gzip"


def test_unsupported_files_in_folders_are_skipped_and_counted(tmp_path):
    bad_input_corpus(tmp_path / "corpus")
    (tmp_path / "corpus" / ".hidden.txt").write_text("hidden")
    listing = list_sources(DataConfig(sources=[str(tmp_path / "corpus")]))
    assert listing.skipped == Counter({"unsupported .xyz": 1, "hidden": 1})
    assert {f.key for f in listing.files} >= {"good.txt", "mixed.jsonl", "table.parquet"}


def test_an_explicit_file_with_an_unknown_extension_is_read_as_text(tmp_path):
    path = tmp_path / "corpus.dat"
    path.write_text("text in an odd file")
    assert docs_of(path) == [("corpus.dat", 0, "text in an odd file", "")]


def test_separator_splits_text_files_into_documents(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("Chapter one.\n\n\n\nChapter two.\n\n\n\n   \n\n\n\nChapter three.")
    docs = docs_of(path, document_separator=r"\n{3,}")
    assert [(i, t) for _, i, t, _ in docs] == [(0, "Chapter one."), (1, "Chapter two."), (2, "Chapter three.")]


def test_a_large_text_file_is_cut_at_paragraph_breaks_and_code_and_records_are_not(tmp_path):
    text = "\n\n".join(f"Paragraph {i}: " + "word " * (i % 50 + 5) for i in range(3000)) + "\n"
    (tmp_path / "book.txt").write_text(text)
    (tmp_path / "module.py").write_text(text)
    write_jsonl(tmp_path / "records.jsonl", [{"text": text}])
    docs = docs_of(tmp_path, split={"part_chars": 20_000})
    parts = [doc for key, _, doc, _ in docs if key == "book.txt"]
    assert "".join(parts) == text and len(parts) >= len(text) // 20_000
    assert all(len(part) <= 20_000 for part in parts) and all(part.endswith("\n\n") for part in parts[:-1])
    assert min(map(len, parts)) > 20_000 / 2 - 300  # about equal parts, not a large run and a scrap
    assert [index for key, index, _, _ in docs if key == "book.txt"] == list(range(len(parts)))
    assert [doc for key, _, doc, _ in docs if key in ("module.py", "records.jsonl")] == [text, text]
    assert [doc for key, _, doc, _ in docs_of(tmp_path, split={"part_chars": 0}) if key == "book.txt"] == [text]
    # A separator's pieces are documents; those over the limit are cut further, numbered on.
    pieces = docs_of(tmp_path, document_separator="Paragraph 1500: ", split={"part_chars": 20_000})
    book = [doc for key, _, doc, _ in pieces if key == "book.txt"]
    assert "".join(book) == text.replace("Paragraph 1500: ", "")
    assert text.split("Paragraph 1500: ")[0] in itertools.accumulate(book)  # no document spans the separator


def test_cut_points_prefer_paragraphs_then_lines_then_spaces_and_a_blob_stays_whole():
    assert cut_into_parts("first para\n\nsecond\none here", 20) == ["first para\n\n", "second\none here"]
    assert cut_into_parts("first line\nsecond one here", 20) == ["first line\n", "second one here"]
    assert cut_into_parts("words and words and words", 12) == ["words ", "and words ", "and words"]
    blob = "QUJD" * 10_000
    assert cut_into_parts(blob, 1000) == [blob]
    assert cut_into_parts(blob + " tail", 1000) == [blob + " ", "tail"]


def test_text_field_gz_json_lines_and_json_that_is_really_json_lines(tmp_path):
    write_jsonl(tmp_path / "a.jsonl.gz", [{"content": "zipped"}])
    (tmp_path / "b.json").write_text(json.dumps({"content": "x"}) + "\n" + json.dumps({"content": "y"}) + "\n")
    docs = docs_of(tmp_path, text_field="content")
    assert [(k, t) for k, _, t, _ in docs] == [("a.jsonl.gz", "zipped"), ("b.json", "x"), ("b.json", "y")]


def test_globs_and_missing_paths(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("b")
    (tmp_path / "c.md").write_text("c")
    keys = [f.key for f in list_sources(DataConfig(sources=[str(tmp_path / "**" / "*.txt")])).files]
    assert keys == ["a.txt", "sub/b.txt"]  # `**/` spans zero or more folders
    keys = [f.key for f in list_sources(DataConfig(sources=[str(tmp_path / "*.txt")])).files]
    assert keys == ["a.txt"]
    with pytest.raises(RaylmError, match=r"source not found: .*missing"):
        list_sources(DataConfig(sources=[str(tmp_path / "missing")]))


def test_a_folder_with_nothing_usable_is_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RaylmError, match=r"no readable files .*empty'\] \(no files\)"):
        list_sources(DataConfig(sources=[str(tmp_path / "empty")]))
    (tmp_path / "x.bin").write_bytes(b"\x00")
    (tmp_path / ".hidden.txt").write_text("hidden")
    with pytest.raises(RaylmError, match=r"no readable files .*\((?=.*1 unsupported \.bin)(?=.*1 hidden)"):
        list_sources(DataConfig(sources=[str(tmp_path)]))


def test_held_out_files_come_first_and_keep_their_split(tmp_path):
    for name in ("train.txt", "val.txt", "test.txt"):
        (tmp_path / name).write_text(name)
    data = DataConfig(sources=[str(tmp_path / "train.txt")], val_sources=[str(tmp_path / "val.txt")],
                      test_sources=[str(tmp_path / "test.txt")])
    assert [(f.key, f.split) for f in list_sources(data).files] == [
        ("test.txt", "test"), ("val.txt", "val"), ("train.txt", "train")]


def test_stdlib_is_the_embedded_corpus():
    files = list_sources(DataConfig()).files
    assert len(files) > 500 and all(f.kind == "code" and f.key.startswith("stdlib/") for f in files)
    assert not any("site-packages" in f.path for f in files)


def test_gzip_detection_is_by_extension_not_content(tmp_path):
    path = tmp_path / "plain.txt.gz"
    path.write_bytes(gzip.compress("héllo".encode()))
    file = SourceFile(str(path), path.stat().st_size, "text", True, "text", "train", "plain.txt.gz")
    assert list(read_documents(file, "text", None)) == [(0, "héllo", "")]
