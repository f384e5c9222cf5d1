"""Which files a prepare run reads: sources expanded to files, each with its format and split.

Runs in the driver before any work starts, so a missing path or a folder with nothing usable is
one clear error up front. It lists files only; it never opens them.
"""

from __future__ import annotations

import os
import sysconfig
from collections import Counter
from dataclasses import dataclass

from raylm import storage
from raylm.config import DataConfig
from raylm.errors import RaylmError

STDLIB = "stdlib://"
TEXT_EXTENSIONS = {".txt", ".md", ".rst", ".text"}
CODE_EXTENSIONS = {
    ".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".cxx", ".cu", ".java", ".js", ".mjs", ".ts",
    ".tsx", ".jsx", ".go", ".rs", ".rb", ".php", ".cs", ".swift", ".kt", ".scala", ".lua", ".pl",
    ".sh", ".bash", ".r", ".jl", ".sql", ".hs", ".ml", ".ex", ".erl", ".clj", ".dart", ".zig",
}
FORMAT_BY_EXTENSION = {
    **{ext: "text" for ext in TEXT_EXTENSIONS | CODE_EXTENSIONS},
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet",
}
RECORD_FORMATS = {"jsonl", "json", "parquet"}  # one document per record, as web crawls ship
SPLIT_PRIORITY = ("test", "val", "train")  # held-out files come first: dedup keeps their copy


@dataclass(frozen=True)
class SourceFile:
    path: str
    size: int
    format: str  # text | jsonl | json | parquet
    compressed: bool  # gzip
    kind: str  # code | text | record: picks the quality rules under filters.profile=auto
    split: str  # train (assigned per document later) | val | test (the whole file)
    key: str  # path relative to its source: documents' ids, hence their split, survive a move


@dataclass
class SourceListing:
    files: list[SourceFile]
    skipped: Counter  # "unsupported .xyz" / "hidden" -> count of files not read


def list_sources(config: DataConfig) -> SourceListing:
    """Expand every source of every split; error if a path is missing or nothing is readable."""
    files: list[SourceFile] = []
    skipped: Counter = Counter()
    groups = {"test": config.test_sources, "val": config.val_sources, "train": config.sources}
    for split in SPLIT_PRIORITY:
        for source in groups[split]:
            found = _expand(source, split, config.format, skipped)
            files.extend(found)
    if not files:
        what = ", ".join(f"{n} {reason}" for reason, n in skipped.items()) or "no files"
        raise RaylmError(f"no readable files in {config.sources + config.val_sources + config.test_sources} ({what}); "
                         "supported: .txt .md code .jsonl .json .parquet (optionally .gz), or set data.format")
    return SourceListing(files, skipped)


def _expand(source: str, split: str, forced_format: str, skipped: Counter) -> list[SourceFile]:
    if source == STDLIB:
        return _stdlib_files(split)
    source = storage.absolute(source)
    root = storage.glob_root(source).rstrip("/")
    found = []
    for entry in storage.list_files(source):
        single = entry.path == source
        key = storage.parent_and_name(entry.path)[1] if single else entry.path[len(root):].lstrip("/")
        if not single and any(part.startswith(".") for part in key.split("/")):
            skipped["hidden"] += 1
            continue
        described = _describe(entry, key, split, forced_format, explicit=single)
        if described is None:
            skipped[f"unsupported {_extension(entry.path)[0] or '(no extension)'}"] += 1
        else:
            found.append(described)
    return found


def _stdlib_files(split: str) -> list[SourceFile]:
    root = sysconfig.get_paths()["stdlib"]
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in {"site-packages", "dist-packages", "__pycache__"})
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                key = "stdlib/" + os.path.relpath(path, root)
                found.append(SourceFile(path, os.path.getsize(path), "text", False, "code", split, key))
    return found


def _extension(path: str) -> tuple[str, bool]:
    name = storage.parent_and_name(path)[1].lower()
    compressed = name.endswith(".gz")
    if compressed:
        name = name[:-3]
    return os.path.splitext(name)[1], compressed


def _describe(entry: storage.FileEntry, key: str, split: str, forced_format: str, explicit: bool) -> SourceFile | None:
    extension, compressed = _extension(entry.path)
    fmt = forced_format if forced_format != "auto" else FORMAT_BY_EXTENSION.get(extension)
    if fmt is None:
        if not explicit:
            return None
        fmt = "text"  # a file named on purpose is read as text; binary content is caught when read
    kind = "record" if fmt in RECORD_FORMATS else "code" if extension in CODE_EXTENSIONS else "text"
    return SourceFile(entry.path, entry.size, fmt, compressed, kind, split, key)
