"""A newcomer's first corpus, through the console script with the defaults: one book prepares into
train and held-out text that share nothing. The README's first pretrain on it (tests/test_readme.py)
trains a model of 128 tokens of context on its 512-token windows, and both commands' consoles show
raylm's lines only (Ray's go to its session logs)."""

from __future__ import annotations

import pytest

from conftest import load_manifest, split_documents

pytestmark = pytest.mark.timeout(300)


def test_one_book_prepares_with_defaults_into_train_and_held_out_text_that_share_nothing(default_prepared):
    output, _ = default_prepared
    manifest = load_manifest(output)
    kept = manifest["documents"]["kept_per_split"]
    assert manifest["files"]["read"] == 1 and kept["train"] >= 15 and kept["val"] >= 1 and kept["test"] >= 1
    assert manifest["split"]["part_chars"] == 65_536 and manifest["split"]["moved"]  # 1% of 18 parts: filled
    train = "\n".join(split_documents(output, manifest, "train"))
    held_out = [doc for split in ("val", "test") for doc in split_documents(output, manifest, split)]
    paragraphs = [p for doc in held_out for p in doc.split("\n\n") if len(p) >= 100]
    assert len(paragraphs) > 100 and not [p for p in paragraphs if p in train]
    assert sum(s["bytes"] for s in manifest["splits"].values()) > 0.99 * manifest["files"]["bytes"]

