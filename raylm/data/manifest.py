"""The manifest of a prepared dataset (`manifest.json`, written last by `raylm prepare`, so a folder
that has one is complete): what training, fine-tuning, evaluation, export, the report and the plan
read about the data. No Ray here: the plan reads it before any cluster exists."""

from __future__ import annotations

import json

from raylm import storage
from raylm.errors import RaylmError

MANIFEST = "manifest.json"


def has_manifest(data: str) -> bool:
    """Whether `data` (a local path or s3:// URL) is a prepared dataset."""
    return storage.exists(storage.join(storage.absolute(data), MANIFEST))


def find_manifest(data: str) -> dict | None:
    """The manifest of `data`, or None if it is no prepared dataset (one existence check, one read)."""
    path = storage.join(storage.absolute(data), MANIFEST)
    return json.loads(storage.read_bytes(path)) if storage.exists(path) else None


def read_manifest(data: str) -> dict:
    manifest = find_manifest(data)
    if manifest is None:
        raise RaylmError(f"no prepared dataset at {data} (no {MANIFEST}); run `raylm prepare` first or set train.data")
    return manifest
