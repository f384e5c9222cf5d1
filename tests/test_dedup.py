"""MinHash + LSH fingerprints: estimates track Jaccard similarity, bands fit the threshold."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from raylm.config import DedupConfig
from raylm.data.dedup import add_fingerprints, band_buckets, lsh_bands, minhash, shingle_hashes


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return len(np.intersect1d(a, b)) / len(np.union1d(a, b))


@pytest.mark.parametrize("changed_every", [50, 10, 4])
def test_minhash_estimates_the_jaccard_similarity(changed_every):
    rng = random.Random(changed_every)
    words = [f"w{rng.randrange(2000)}" for _ in range(2000)]
    edited = [("x" + w if i % changed_every == 0 else w) for i, w in enumerate(words)]
    cache: dict = {}
    a, b = shingle_hashes(" ".join(words), 5, cache), shingle_hashes(" ".join(edited), 5, cache)
    estimate = float((minhash(a, 256) == minhash(b, 256)).mean())
    assert abs(estimate - jaccard(a, b)) < 0.08  # 256 permutations: standard error <= 0.031


def test_shingles_ignore_case_and_punctuation_and_short_texts_are_one_shingle():
    cache: dict = {}
    assert np.array_equal(shingle_hashes("Hello, World! a b c", 5, cache), shingle_hashes("hello world a b c", 5, cache))
    assert len(shingle_hashes("just three words", 5, cache)) == 1
    assert len(shingle_hashes("...", 5, cache)) == 0


def test_band_choice_puts_the_s_curve_at_the_threshold():
    for threshold in (0.5, 0.8, 0.9):
        bands, rows = lsh_bands(threshold, 128)
        assert bands * rows <= 128

        def candidate_probability(s):
            return 1 - (1 - s**rows) ** bands

        assert candidate_probability(threshold - 0.2) < 0.25 and candidate_probability(min(threshold + 0.1, 0.99)) > 0.75
    assert lsh_bands(0.8, 128) == (9, 14)


def test_identical_signatures_share_every_band_and_fingerprints_mark_only_kept_documents():
    signature = minhash(shingle_hashes("the same text again", 5, {}), 128)
    assert band_buckets(signature, 9, 14) == band_buckets(signature.copy(), 9, 14)
    batch = pa.table({"text": ["some text here", "dropped"], "reason": ["", "binary"], "order": [0, 1]})
    out = add_fingerprints(batch, DedupConfig())
    assert out.column("bucket_codes").to_pylist() == [[0] + [1] * 9, []]
    exact_only = add_fingerprints(batch, DedupConfig(near=False))
    assert exact_only.column("bucket_codes").to_pylist() == [[0], []]
