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


def read_manifest(data: str) -> dict:
    path = storage.join(storage.absolute(data), MANIFEST)
    if not storage.exists(path):
        raise RaylmError(f"no prepared dataset at {data} (no {MANIFEST}); run `raylm prepare` first or set train.data")
    return json.loads(storage.read_bytes(path))
