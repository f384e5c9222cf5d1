"""Word tokens for the n-gram rules: spaCy's English tokenization, each expectation written out by
hand from spaCy's rules (benchmarks/filters_vs_datatrove.py compares with spaCy itself)."""

from __future__ import annotations

import random

import pytest

from raylm.config import FiltersConfig, WebRules
from raylm.data import words
from raylm.data.filters import apply_quality_filters
from raylm.data.words import spacy_words


@pytest.mark.parametrize("text, tokens", [
    # Punctuation around a word is split off, however much of it there is.
    ('"Hello," she said (twice).', ['"', "Hello", ",", '"', "she", "said", "(", "twice", ")", "."]),
    # A period stays on abbreviations, initials and single letters; it leaves a lowercase word and
    # an all-caps one, and splits two sentences run together.
    ("Mr. Smith met U.S. officials, e.g. NASA. See p. 4.", ["Mr.", "Smith", "met", "U.S.", "officials", ",", "e.g.",
                                                            "NASA", ".", "See", "p.", "4", "."]),
    ("It ended.Then", ["It", "ended", ".", "Then"]),
    # Clitics are tokens of their own, with either apostrophe; "cannot" is two words.
    ("Don't say it’s what we'd cannot", ["Do", "n't", "say", "it", "’s", "what", "we", "'d", "can", "not"]),
    # Hyphens between letters, commas between letters and / between words are split; numbers keep theirs.
    ("well-known ideas,then 1,000 and 3-4 km/h", ["well", "-", "known", "ideas", ",", "then", "1,000", "and", "3",
                                                  "-", "4", "km", "/", "h"]),
    # Units and times leave their numbers; "and/or" and URLs stay whole, their brackets do not.
    ("10km at 5pm and/or <https://www.gnu.org/licenses/>.", ["10", "km", "at", "5", "pm", "and/or", "<",
                                                             "https://www.gnu.org/licenses/", ">", "."]),
    # An emoticon the rules would cut apart is put back together: Python's "):".
    ("def f(x): return x''", ["def", "f(x", "):", "return", "x", "''"]),
    # A path splits at each / between words and at a hyphen before a letter; "07.run" is no sentence end.
    ("libs/test/doc/decorator_07.run-fail.cpp", ["libs", "/", "test", "/", "doc", "/", "decorator_07.run", "-",
                                                 "fail.cpp"]),
    # The same rules for letters beyond ASCII (the general infix path): a hyphen, an ellipsis, a period before a capital.
    ("naïve-idea café…then Zürich.Österreich", ["naïve", "-", "idea", "café", "…", "then", "Zürich", ".", "Österreich"]),
    # Whitespace of any kind only separates.
    ("  a\tb\n\nc ", ["a", "b", "c"]),
])
def test_text_is_tokenized_as_spacy_english_does(text, tokens):
    assert spacy_words(text.split()) == tokens


def test_a_phrase_repeats_however_it_is_punctuated():
    """'red apple pie' three times, once with a comma after it and once in brackets: as whitespace
    words the three differ ('pie,', '(red', 'pie)'), as tokens they are one 3-gram that repeats.
    Tokens: 'red apple pie , (red apple pie) red apple pie .' -> red apple pie , ( red apple pie )
    red apple pie . ; read from the start, 'red apple pie' at 5 and at 9 repeat: 2 x 11 characters
    (without spaces) of the text's 45."""
    text = "red apple pie, (red apple pie) red apple pie."
    assert len(text) == 45
    fraction = 2 * len("redapplepie") / len(text)
    rules = dict(min_words=0, min_mean_word_length=0, min_stop_words=0, max_top_ngram_chars_fraction={},
                 c4_line_rules=False, c4_min_sentences=0)
    tight = FiltersConfig(profile="web", web=WebRules(**rules, max_duplicate_ngram_chars_fraction={3: fraction - 0.001}))
    loose = FiltersConfig(profile="web", web=WebRules(**rules, max_duplicate_ngram_chars_fraction={3: fraction + 0.001}))
    assert apply_quality_filters(text, "record", tight).reason == "web_duplicate_3gram"
    assert apply_quality_filters(text, "record", loose).reason is None


def test_the_ascii_infix_regex_is_the_infix_rules():
    """On ASCII text the infixes come from one regex; `_infixes` defines them for every character.
    The two must cut the same pieces from strings made of the characters the rules look at."""
    generator = random.Random(15)
    alphabet = "aZb9.-,:/~+*^'\"`<>=_x-"
    for _ in range(100_000):
        chunk = "".join(generator.choice(alphabet) for _ in range(generator.randint(1, 9)))
        cuts = sorted({0, len(chunk), *(i for span in words._infixes(chunk) for i in span)})
        assert [piece for piece in words._ASCII_INFIX.split(chunk) if piece] == [
            chunk[a:b] for a, b in zip(cuts, cuts[1:])], chunk


def test_the_token_cache_gives_the_same_ids_and_words_after_it_is_cleared(monkeypatch):
    """Chunks and tokens are numbered as they first come, new and known ones mixed in one text,
    and the cache starts over when full: ids must stay equal for equal tokens, and words right."""
    vocabulary = words._Vocabulary()
    monkeypatch.setattr(words, "_VOCABULARY", vocabulary)
    monkeypatch.setattr(vocabulary, "MAX_CHUNKS", 8)
    texts = ["the cat, the hat.", "a cat's hat ((the cat)) isn't new", "the cat, the hat.", "so so new words, new cats' hats"]
    for text in texts * 3:
        ids, lengths = words.spacy_word_ids(text.split())
        tokens = spacy_words(text.split())
        assert [len(token) for token in tokens] == lengths.tolist()
        assert all((a == b) == (x == y) for a, x in zip(ids.tolist(), tokens) for b, y in zip(ids.tolist(), tokens))
    assert spacy_words(texts[1].split()) == [
        "a", "cat", "'s", "hat", "(", "(", "the", "cat", ")", ")", "is", "n't", "new"]
    assert len(vocabulary.chunk_numbers) <= 8 + len(texts[3].split())  # it was cleared on the way
