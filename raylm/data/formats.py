"""Documents out of one file, whatever state the file is in.

`read_documents` never raises for bad content: every unit it cannot use comes out as a document
with empty text and a named reason (`empty_file`, `binary`, `invalid_utf8`, `malformed_json`,
`non_object_json`, `missing_text_field`, `null_text`, `non_string_text`, `truncated_gzip`,
`corrupt_gzip`, `corrupt_parquet`, `missing_text_column`, `unreadable_file`), so every document
read is accounted for downstream.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import zlib
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from raylm import storage
from raylm.data.sources import SourceFile

Document = tuple[int, str, str]  # (index in file, text, drop reason); text is "" when dropped
BINARY_SNIFF_BYTES = 8192
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")  # a blank (or whitespace-only) line


def read_documents(file: SourceFile, text_field: str, separator: re.Pattern | None,
                   fallback_encoding: str | None = None, part_chars: int = 0) -> Iterator[Document]:
    """fallback_encoding decodes text that is not UTF-8 (e.g. Latin-1); None drops it as invalid_utf8.
    A plain-text document (file, or piece cut by the separator) longer than part_chars (0: no limit)
    comes out as parts of about that size, cut at paragraph breaks; code and records are not cut."""
    if file.size == 0:
        yield 0, "", "empty_file"
        return
    try:
        if file.format == "parquet":
            yield from _parquet(file, text_field)
        elif file.format == "jsonl":
            yield from _json_lines(_open_lines(file), text_field, fallback_encoding)
        else:
            data, broken = _read_all(file)
            if broken:
                yield 0, "", broken
            elif file.format == "json":
                yield from _json_document(data, text_field, fallback_encoding)
            else:
                yield from _text(data, separator, fallback_encoding, part_chars if file.kind == "text" else 0)
    except OSError:  # vanished or unreadable mid-run: counted, not fatal
        yield 0, "", "unreadable_file"


def _read_all(file: SourceFile) -> tuple[bytes, str]:
    with storage.open_input(file.path) as stream:
        raw = stream.read()
    if not file.compressed:
        return raw, ""
    try:
        return gzip.decompress(raw), ""
    except EOFError:
        return b"", "truncated_gzip"
    except (gzip.BadGzipFile, zlib.error):
        return b"", "corrupt_gzip"


def _decode(data: bytes, fallback_encoding: str | None) -> tuple[str, str]:
    if not data:
        return "", "empty_file"
    if b"\x00" in data[:BINARY_SNIFF_BYTES]:
        return "", "binary"
    return _utf8_or_fallback(data, fallback_encoding)


def _utf8_or_fallback(data: bytes, fallback_encoding: str | None) -> tuple[str, str]:
    try:
        return data.decode("utf-8-sig"), ""
    except UnicodeDecodeError:
        pass
    if fallback_encoding:
        try:
            return data.decode(fallback_encoding), ""
        except UnicodeDecodeError:  # e.g. one of the five bytes cp1252 leaves undefined
            pass
    return "", "invalid_utf8"


def _text(data: bytes, separator: re.Pattern | None, fallback_encoding: str | None, part_chars: int) -> Iterator[Document]:
    text, reason = _decode(data, fallback_encoding)
    if reason:
        yield 0, text, reason
        return
    pieces = (piece for piece in separator.split(text) if piece and not piece.isspace()) if separator else [text]
    parts = (part for piece in pieces for part in cut_into_parts(piece, part_chars))
    yield from ((i, part, "") for i, part in enumerate(parts))


def cut_into_parts(text: str, part_chars: int) -> list[str]:
    """Pieces of at most about part_chars characters (0: no limit) that join back into text, of
    about equal size: each is cut after the last paragraph break in the second half of its span,
    else after a line break, else after a space; a span with none of these grows to the next space
    or line break, so a space-free blob stays whole (and is judged as one long word)."""
    if not part_chars or len(text) <= part_chars:
        return [text]
    parts, start = [], 0
    while len(text) - start > part_chars:
        left = len(text) - start
        target = -(-left // -(-left // part_chars))  # ceil(left / parts still needed)
        low, high = start + target // 2, start + target
        breaks = [match.end() for match in _PARAGRAPH_BREAK.finditer(text, low, high)]
        found = breaks[-1] - 1 if breaks else max(text.rfind("\n", low, high), text.rfind(" ", low, high))
        if found < 0:
            found = min((i for i in (text.find("\n", high), text.find(" ", high)) if i >= 0), default=-1)
            if found < 0:
                break
        parts.append(text[start : found + 1])
        start = found + 1
    parts.append(text[start:])
    return parts


def _text_of(item: object, field: str) -> tuple[str, str]:
    if not isinstance(item, dict):
        return "", "non_object_json"
    if field not in item:
        return "", "missing_text_field"
    value = item[field]
    if value is None:
        return "", "null_text"
    if not isinstance(value, str):
        return "", "non_string_text"
    return value, ""


def _json_line(line: bytes, field: str, fallback_encoding: str | None) -> tuple[str, str]:
    text, reason = _utf8_or_fallback(line, fallback_encoding)
    if reason:
        return "", reason
    try:
        return _text_of(json.loads(text), field)
    except ValueError:
        return "", "malformed_json"


def _json_document(data: bytes, field: str, fallback_encoding: str | None) -> Iterator[Document]:
    text, reason = _decode(data, fallback_encoding)
    if reason:
        yield 0, "", reason
        return
    try:
        parsed = json.loads(text)
    except ValueError:  # many .json files are JSON Lines
        yield from _json_lines(iter(io.BytesIO(data)), field, fallback_encoding)
        return
    for i, item in enumerate(parsed if isinstance(parsed, list) else [parsed]):
        yield (i, *_text_of(item, field))


def _open_lines(file: SourceFile) -> Iterator[bytes | str]:
    """Lines of a JSON Lines file, streamed; a broken gzip ends with the reason as a str."""
    with storage.open_input(file.path) as raw:
        stream = gzip.GzipFile(fileobj=raw) if file.compressed else io.BufferedReader(raw)
        head = stream.peek(BINARY_SNIFF_BYTES)[:BINARY_SNIFF_BYTES] if hasattr(stream, "peek") else b""
        if b"\x00" in head:
            yield "binary"
            return
        try:
            yield from stream
        except EOFError:
            yield "truncated_gzip"
        except (gzip.BadGzipFile, zlib.error):
            yield "corrupt_gzip"


def _json_lines(lines: Iterator[bytes | str], field: str, fallback_encoding: str | None) -> Iterator[Document]:
    for number, line in enumerate(lines):
        if isinstance(line, str):  # the stream broke here: the rest of the file is one lost unit
            yield number, "", line
            return
        if line.strip():
            yield (number, *_json_line(line, field, fallback_encoding))


def _parquet(file: SourceFile, field: str) -> Iterator[Document]:
    if file.compressed:  # an OSError opening the file goes to read_documents: unreadable, not corrupt
        data, broken = _read_all(file)
        if broken:
            yield 0, "", broken
            return
        source = pa.BufferReader(data)
    else:
        source = storage.open_input(file.path, seekable=True)
    try:
        parquet = pq.ParquetFile(source)
    except (pa.ArrowException, OSError, ValueError):
        yield 0, "", "corrupt_parquet"
        return
    rows = parquet.metadata.num_rows
    if field not in parquet.schema_arrow.names:
        yield from ((i, "", "missing_text_column") for i in range(rows))
        return
    column_type = parquet.schema_arrow.field(field).type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type) or pa.types.is_string_view(column_type)):
        yield from ((i, "", "non_string_text") for i in range(rows))
        return
    index = 0
    try:
        for batch in parquet.iter_batches(columns=[field], batch_size=4096):
            for value in batch.column(0).to_pylist():
                yield (index, value, "") if value is not None else (index, "", "null_text")
                index += 1
    except (pa.ArrowException, OSError, ValueError):
        yield from ((i, "", "corrupt_parquet") for i in range(index, rows))
