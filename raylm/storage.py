"""Paths that may be local or `s3://`, through pyarrow's filesystems (what Ray Data and Train use).

S3 credentials come from the standard AWS chain; `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`, or
the config's `s3.endpoint_url`) points at an S3-compatible store such as MinIO or R2.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import tempfile
import uuid
from dataclasses import dataclass

import pyarrow.fs as pafs

from raylm.errors import RaylmError

GLOB_CHARS = "*?["


@dataclass(frozen=True)
class FileEntry:
    path: str  # local absolute path or full URI
    size: int


def is_remote(path: str) -> bool:
    return "://" in path


def absolute(path: str) -> str:
    """Local paths become absolute (workers may run elsewhere); URIs stay as they are."""
    return path if is_remote(path) else os.path.abspath(os.path.expanduser(path))


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def parent_and_name(path: str) -> tuple[str, str]:
    parent, _, name = path.rstrip("/").rpartition("/")
    return parent, name


_s3_for_workers: dict[str, str] = {}


def configure_s3(endpoint_url: str | None, region: str | None) -> None:
    """Apply the config's `s3.*` to this process as the variables the AWS chain reads (Ray workers
    started here inherit them; `s3_worker_env()` carries them to a joined cluster's workers)."""
    settings = {key: value for key, value in (("AWS_ENDPOINT_URL_S3", endpoint_url), ("AWS_REGION", region)) if value}
    _s3_for_workers.update({key: value for key, value in settings.items() if os.environ.get(key) != value})
    os.environ.update(settings)
    _s3.cache_clear()


def s3_worker_env() -> dict[str, str]:
    """What configure_s3 set that the cluster's workers do not already have from the job."""
    return dict(_s3_for_workers)


@functools.lru_cache(maxsize=None)
def _s3() -> pafs.S3FileSystem:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    options = {}
    if endpoint:
        scheme, _, rest = endpoint.partition("://")
        options = {"endpoint_override": rest or scheme, "scheme": scheme if rest else "https"}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    return pafs.S3FileSystem(**options)


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding `path` and the path within it."""
    if path.startswith("s3://"):
        return _s3(), path.removeprefix("s3://")
    if is_remote(path):
        fs, inner = pafs.FileSystem.from_uri(path)
        return fs, inner
    return pafs.LocalFileSystem(), absolute(path)


def _uri(path: str, inner: str) -> str:
    scheme = path.split("://", 1)[0] if is_remote(path) else ""
    return f"{scheme}://{inner}" if scheme else inner


def _info(path: str) -> pafs.FileInfo:
    fs, inner = filesystem(path)
    try:
        return fs.get_file_info(inner)
    except OSError as err:
        raise RaylmError(f"cannot access {path}: {_short(err)}") from None


def exists(path: str) -> bool:
    return _info(path).type != pafs.FileType.NotFound


def glob_root(source: str) -> str:
    """The folder part of a glob before its first wildcard; the source itself if it has none."""
    glob_at = min((source.find(c) for c in GLOB_CHARS if c in source), default=-1)
    return source if glob_at < 0 else source[:glob_at].rpartition("/")[0] or "."


def _glob_regex(pattern: str) -> re.Pattern:
    """Shell glob semantics: `*` and `?` stay within a folder, `**/` spans any number of them."""
    parts = re.split(r"(\*\*/|\*|\?|\[[^\]]*\])", pattern)
    translated = {"**/": "(?:.*/)?", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(
        translated.get(p) or (p if p.startswith("[") and p.endswith("]") and len(p) > 2 else re.escape(p))
        for p in parts
    ))


def list_files(source: str) -> list[FileEntry]:
    """Files named by a source: a file, a folder (recursively) or a glob. Sorted. A missing
    path is an error naming it."""
    root = glob_root(source)
    fs, inner_root = filesystem(root)
    info = _info(root)
    if info.type == pafs.FileType.NotFound:
        raise RaylmError(f"source not found: {root} (check the path, or the bucket and credentials for s3://)")
    if info.type == pafs.FileType.File and root == source:
        return [FileEntry(_uri(source, inner_root), info.size)]
    try:
        infos = fs.get_file_info(pafs.FileSelector(inner_root, recursive=True))
    except OSError as err:
        raise RaylmError(f"cannot list {root}: {_short(err)}") from None
    entries = [FileEntry(_uri(source, i.path), i.size) for i in infos if i.type == pafs.FileType.File]
    if root != source:
        pattern = _glob_regex(filesystem(source)[1])
        entries = [e for e in entries if pattern.fullmatch(filesystem(e.path)[1])]
    return sorted(entries, key=lambda e: e.path)


def open_input(path: str, seekable: bool = False):
    """The raw bytes: pyarrow would otherwise un-gzip `.gz` files behind the caller's back."""
    fs, inner = filesystem(path)
    return fs.open_input_file(inner) if seekable else fs.open_input_stream(inner, compression=None)


def read_bytes(path: str) -> bytes:
    try:
        with open_input(path) as stream:
            return stream.read()
    except (OSError, FileNotFoundError) as err:
        raise RaylmError(f"cannot read {path}: {_short(err)}") from None


def write_bytes(path: str, data: bytes) -> None:
    with open_output(path) as stream:
        stream.write(data)


def open_output(path: str):
    """A stream to write a file in pieces (an S3 multipart upload), its folder made first."""
    fs, inner = filesystem(path)
    parent = inner.rpartition("/")[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    return fs.open_output_stream(inner)


def upload_dir(local: str, destination: str) -> None:
    """Copy a local folder's files to a folder, local or s3:// (checkpoints written in a temp dir)."""
    fs, inner = filesystem(destination)
    fs.create_dir(inner, recursive=True)
    pafs.copy_files(local, inner, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


@contextlib.contextmanager
def local_dir(path: str):
    """A folder as a local path: itself, or a temporary copy of an s3:// folder."""
    if not is_remote(path):
        yield path
        return
    fs, inner = filesystem(path)
    with tempfile.TemporaryDirectory(prefix="raylm-") as local:
        pafs.copy_files(inner, local, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield local


def delete_dir(path: str) -> None:
    fs, inner = filesystem(path)
    if fs.get_file_info(inner).type != pafs.FileType.NotFound:
        fs.delete_dir(inner)


def check_writable(folder: str) -> None:
    """Fail early, with the reason, if nothing can be written under `folder`."""
    probe = join(parent_and_name(folder)[0] or ".", f".raylm-write-probe-{uuid.uuid4().hex[:8]}")
    try:
        write_bytes(probe, b"")
        filesystem(probe)[0].delete_file(filesystem(probe)[1])
    except OSError as err:
        raise RaylmError(f"output {folder} is not writable: {_short(err)}") from None


def staging_folder(final: str) -> str:
    """A fresh hidden sibling of `final` to write into; those left by killed runs are removed."""
    parent, name = parent_and_name(final)
    fs, inner_parent = filesystem(parent or ".")
    prefix = f".{name}.staging-"
    for info in fs.get_file_info(pafs.FileSelector(inner_parent, allow_not_found=True)):
        if info.base_name.startswith(prefix) and info.type == pafs.FileType.Directory:
            fs.delete_dir(info.path)
    return join(parent, f"{prefix}{uuid.uuid4().hex[:8]}")


def publish(staging: str, final: str, commit_marker: str) -> None:
    """Make the finished folder `staging` appear at `final` in one step where the store allows.

    Local: rename (any old `final` is moved aside first, then deleted). Object stores have no
    rename: objects are copied, the commit marker (a file readers check for) last.
    """
    fs, inner_final = filesystem(final)
    _, inner_staging = filesystem(staging)
    if isinstance(fs, pafs.LocalFileSystem):
        old = None
        if os.path.exists(inner_final):
            old = f"{inner_final}.old-{uuid.uuid4().hex[:8]}"
            os.rename(inner_final, old)
        os.rename(inner_staging, inner_final)
        if old:
            fs.delete_dir(old)
        return
    if fs.get_file_info(inner_final).type != pafs.FileType.NotFound:
        fs.delete_dir(inner_final)
    files = [i.path for i in fs.get_file_info(pafs.FileSelector(inner_staging, recursive=True)) if i.type == pafs.FileType.File]
    marker = f"{inner_staging}/{commit_marker}"
    for path in sorted(files, key=lambda p: p == marker):
        fs.copy_file(path, inner_final + path[len(inner_staging):])
    fs.delete_dir(inner_staging)


def _short(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__
