"""Quality filters: each rule drops the document it should and only that one, thresholds come from
the config, profiles pick the rules, and C4 line removal keeps the right text."""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from raylm.config import CleanConfig, CodeRules, FiltersConfig, WebRules
from raylm.data.clean import clean_texts
from raylm.data.filters import FilterResult, apply_quality_filters

WIKITEXT_VALID = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext2-valid.txt"

# Six lines of real English prose that every web rule keeps as it is.
PROSE_LINES = [
    "The European lobster lives on the continental shelf of the eastern Atlantic Ocean, from "
    "northern Norway to the Azores and Morocco.",
    "It hides in crevices and burrows during the day and comes out at night to feed on crabs, "
    "molluscs and worms.",
    "Adults can reach a body length of sixty centimetres and weigh up to six kilograms, although "
    "most caught in pots are much smaller.",
    "Females carry their eggs under the tail for up to a year before the larvae hatch and drift "
    "near the surface.",
    "After several moults the young lobsters settle on the sea floor, where they grow slowly for "
    "many years.",
    "Because it is highly esteemed as food, the species has been fished for centuries, and "
    "hatcheries now release juveniles to support wild stocks.",
]
PROSE = "\n".join(PROSE_LINES)

PYTHON_FILE = '''"""Small helpers for reading settings files."""

import json
from pathlib import Path


def load_settings(path: str) -> dict:
    """Read a JSON settings file; a missing file means no settings."""
    file = Path(path)
    if not file.exists():
        return {}
    with file.open() as handle:
        return json.load(handle)


def merge(base: dict, override: dict) -> dict:
    """A new dict with the keys of override replacing those of base."""
    merged = dict(base)
    merged.update(override)
    return merged
'''

# Made-up six-letter words, all distinct: filler whose word n-grams never repeat by accident.
_SYLLABLES = ["ba", "de", "fi", "go", "ku", "la", "me", "ni", "po", "ru", "sa", "te", "vi", "wo", "xu", "zo"]
MADE_UP_WORDS = ["".join(parts) for parts in itertools.product(_SYLLABLES, repeat=3)]
PHRASE_WORDS = MADE_UP_WORDS[-20:]  # never used by `sentences`
URL = "https://www.example.com/newsletter/subscribe?utm_source=footer&utm_medium=email&utm_campaign=spring"
PROSE_WITH_URLS = [PROSE_LINES[0], URL, PROSE_LINES[1], URL, PROSE_LINES[2], URL, PROSE_LINES[3], URL, *PROSE_LINES[4:]]


def sentences(count: int, phrase: str = "", times: int = 0) -> list[str]:
    """`count` sentences 'The xxxxxx yyyyyy of zzzzzz.' (5 words, 28 characters; two different stop
    words) of unique made-up words, which pass every web rule once there are enough of them; the
    first `times` of them carry `phrase` between their first two made-up words, so that no n-gram
    around it repeats."""
    lines = []
    for i in range(count):
        first, second, third = MADE_UP_WORDS[3 * i : 3 * i + 3]
        middle = f" {phrase}" if i < times else ""
        lines.append(f"The {first}{middle} {second} of {third}.")
    return lines


# 31 words, three different stop words (the, with, and), five sentences.
SHORT = ("The museum opens at nine.\nTickets cost ten euros.\nChildren enter for free with an adult.\n"
         "Guided tours start every hour.\nThe cafe closes at five and the shop at six.")


def web(**rules) -> FiltersConfig:
    return FiltersConfig(profile="web", web=WebRules(**rules))


def code(**rules) -> FiltersConfig:
    return FiltersConfig(profile="code", code=CodeRules(**rules))


DEFAULT_TOP = WebRules().max_top_ngram_chars_fraction
DEFAULT_DUPLICATE = WebRules().max_duplicate_ngram_chars_fraction
URL_2GRAM_RELAXED = {"max_top_ngram_chars_fraction": {**DEFAULT_TOP, 2: 0.5}}
# Every web rule off but the duplicate n-grams, or but the duplicate lines (for documents the others would judge).
OFF_EXCEPT_LINES = dict(min_words=0, min_mean_word_length=0, max_mean_word_length=100, min_stop_words=0,
                        min_alpha_words_fraction=0, max_top_ngram_chars_fraction={}, max_duplicate_ngram_chars_fraction={},
                        max_duplicate_line_chars_fraction=1, c4_line_rules=False, c4_min_sentences=0,
                        c4_drop_curly_bracket=False)
OFF_EXCEPT_DUPLICATE = dict(min_words=0, min_mean_word_length=0, min_stop_words=0, max_top_ngram_chars_fraction={},
                            max_duplicate_lines_fraction=1, max_duplicate_line_chars_fraction=1, c4_line_rules=False,
                            c4_min_sentences=0)


# ------------------------------------------------------------------------------ clean documents


def test_real_prose_passes_the_web_rules_unchanged():
    assert apply_quality_filters(PROSE, "text", web()) == FilterResult(PROSE, None, 0)


def test_made_up_filler_passes_the_web_rules_unchanged():
    text = "\n".join(sentences(20))
    assert apply_quality_filters(text, "text", web()) == FilterResult(text, None, 0)


def test_real_python_file_passes_the_code_rules_unchanged():
    assert apply_quality_filters(PYTHON_FILE, "code", code()) == FilterResult(PYTHON_FILE, None, 0)


# --------------------------------------------------------------- one document per web rule

# (reason, document, rules that make the default config trip it, rules that relax it again). Each
# document trips its rule under the first config and is kept under the second, which changes only
# the thresholds named: so exactly those rules decide its fate.
WEB_CASES = [
    ("web_too_few_words", SHORT, {}, {"min_words": 20}),
    ("web_too_many_words", PROSE, {"max_words": 100}, {"max_words": 200}),
    ("web_mean_word_length",  # made-up words of 18 letters: (3 + 18 + 2 + 19) / 4 = 10.5 characters a word
     "\n".join(f"The {''.join(MADE_UP_WORDS[i:i + 3])} of {''.join(MADE_UP_WORDS[i + 3:i + 6])}."
               for i in range(0, 120, 6)),
     {}, {"max_mean_word_length": 20}),
    ("web_mean_word_length", PROSE, {"min_mean_word_length": 6}, {"min_mean_word_length": 4}),
    ("web_hash_ratio",  # 12 hashtags on 112 words: 0.107 > 0.1
     "\n".join(sentences(20)) + "\n#ray #python #data #gpu #cloud #llm #train #infra #scale #ops #ai #ml",
     {}, {"max_symbol_to_word_ratio": 0.2}),
    ("web_ellipsis_ratio",  # ellipses inside lines count too: 20 on 100 words, 0.2 > 0.1
     "\n".join(line.replace(" of ", "… of ") for line in sentences(20)),
     {}, {"max_symbol_to_word_ratio": 0.2}),
    ("web_bullet_lines",
     "\n".join(f"{bullet} {line}" for bullet, line in zip("•-*–·‣", PROSE_LINES)),
     {}, {"max_bullet_lines_fraction": 1.0}),
    ("web_ellipsis_lines",  # 4 of 10 lines end in an ellipsis
     "\n".join(PROSE_LINES + ["Read the full story about lobster hatcheries...", "See how the larvae are raised...",
                              "Watch the video of a release in Cornwall…", "Find out what fishermen think..."]),
     {}, {"max_ellipsis_lines_fraction": 0.5}),
    ("web_alpha_words",  # 30 numbers on 130 words: 100 / 130 = 0.77 of the words have a letter, < 0.8
     "\n".join(sentences(20)) + "\n" + " ".join(str(1990 + year) for year in range(30)),
     {}, {"min_alpha_words_fraction": 0.7}),
    ("web_stop_words",  # 'of' 20 times, but one stop word: two different ones are needed
     "\n".join(line.replace("The ", "A ") for line in sentences(20)),
     {}, {"min_stop_words": 1}),
    ("web_duplicate_paragraphs",  # 2 of 6 paragraphs repeat; 2 of 9 lines
     "\n\n".join(f"{PROSE_LINES[i]}\n{PROSE_LINES[i + 1]}\n\nReply." for i in (0, 2, 4)),
     {}, {"max_duplicate_paragraphs_fraction": 0.5}),
    # 3 of 10 paragraphs repeat, with 26% of the characters; the URL after a period is also the
    # most frequent 2-gram (". URL", 4 x 101 of 1,134 characters: 0.356 > 0.2).
    ("web_duplicate_paragraph_chars", "\n\n".join(PROSE_WITH_URLS), {},
     {"max_duplicate_paragraph_chars_fraction": 0.5, "max_duplicate_line_chars_fraction": 0.5, **URL_2GRAM_RELAXED}),
    ("web_duplicate_lines",  # 5 of 12 lines repeat
     "\n".join(f"{line}\nReply" for line in PROSE_LINES),
     {}, {"max_duplicate_lines_fraction": 0.5}),
    ("web_duplicate_line_chars",  # 3 of 10 lines repeat, with 26% of the characters
     "\n".join(PROSE_WITH_URLS),
     {}, {"max_duplicate_line_chars_fraction": 0.5, **URL_2GRAM_RELAXED}),
    # The fraction is of the whole text, the n-gram's length with its spaces: 20 sentences are
    # 29 x 20 - 1 = 579 characters, and each phrase adds its length and a space. A 2-gram must be
    # in all 20 to be the most frequent: '. The' (5), a period and the next line's first word, is in 19.
    # 'New York' (8) in 20 of 20: 8 x 20 / (579 + 20 x 9) = 160 / 759 = 0.211 > 0.2.
    ("web_top_2gram", "\n".join(sentences(20, "New York", times=20)),
     {}, {"max_top_ngram_chars_fraction": {**DEFAULT_TOP, 2: 0.5}}),
    # 'in the Mississippi' (18) in 8 of 20: 18 x 8 / (579 + 8 x 19) = 144 / 731 = 0.197 > 0.18; its
    # most frequent 2-gram, the first of two as frequent, 'in the' (6): 48 / 731 = 0.066 <= 0.2.
    ("web_top_3gram", "\n".join(sentences(20, "in the Mississippi", times=8)),
     {}, {"max_top_ngram_chars_fraction": {**DEFAULT_TOP, 3: 0.5}}),
    # 'out of the Mississippi' (22) in 6 of 20: 22 x 6 / (579 + 6 x 23) = 132 / 717 = 0.184 > 0.16;
    # its 3-gram 'out of the' (10): 60 / 717 = 0.084 <= 0.18.
    ("web_top_4gram", "\n".join(sentences(20, "out of the Mississippi", times=6)),
     {}, {"max_top_ngram_chars_fraction": {**DEFAULT_TOP, 4: 0.5}}),
]


@pytest.mark.parametrize(("reason", "text", "trip", "relax"), WEB_CASES, ids=[case[0] for case in WEB_CASES])
def test_each_web_rule_drops_its_document(reason, text, trip, relax):
    dropped = apply_quality_filters(text, "text", web(**trip))
    assert dropped == FilterResult(text, reason, 0)
    assert apply_quality_filters(text, "text", web(**{**trip, **relax})).reason is None


def repeated_phrase_document(n: int, low: float, high: float) -> tuple[str, float]:
    """Sentences, the first `times` of which end with one n-word phrase, such that the repeats of
    the phrase after its first occurrence hold a fraction of the text in (low, high); and that
    fraction, computed here: a repeat counts its words' characters (6 letters each) but not their
    spaces; the text is 29 characters a sentence (less the last newline) plus a space and 6
    letters for each phrase word in each of its sentences."""
    phrase = " ".join(PHRASE_WORDS[:n])
    for times in (2, 3):
        for count in range(10, 60):
            fraction = (times - 1) * 6 * n / (29 * count - 1 + times * 7 * n)
            if low < fraction < high:
                return "\n".join(sentences(count, phrase, times=times)), fraction
    raise AssertionError(f"no document for n={n}")


@pytest.mark.parametrize("n", sorted(DEFAULT_DUPLICATE))
def test_each_duplicate_ngram_rule_drops_its_document(n):
    # Every shorter k-gram of the phrase repeats too, over at most the same words (a repeat
    # jumps k words, so k-grams cover the phrase's first n - n % k words): a fraction just over the
    # n threshold is under each shorter rule's, 0.01 higher a step. Longer n-grams do not repeat.
    # The phrase's shorter n-grams also make it the most frequent 4-gram and the document short:
    # those rules are off, to see this one.
    threshold = DEFAULT_DUPLICATE[n]
    text, fraction = repeated_phrase_document(n, threshold, threshold + 0.01)
    others = dict(max_top_ngram_chars_fraction={}, min_words=0, c4_min_sentences=0)
    assert apply_quality_filters(text, "text", web(**others)) == FilterResult(text, f"web_duplicate_{n}gram", 0)
    relaxed = {**DEFAULT_DUPLICATE, n: 0.5}
    assert apply_quality_filters(text, "text", web(**others, max_duplicate_ngram_chars_fraction=relaxed)).reason is None


def test_a_repeated_ngram_counts_after_its_first_occurrence_and_overlaps_once():
    """datatrove's count, by hand: 'aa bb aa bb aa bb' has the 2-gram 'aa bb' three times and
    'bb aa' twice; read from the start, 'aa bb' at 0 is new, 'bb aa' at 1 is new, 'aa bb' at 2
    repeats (4 characters, jump to 4), 'aa bb' at 4 repeats (4 more): 8 of the text's 17."""
    text = "aa bb aa bb aa bb"
    tight = web(**OFF_EXCEPT_DUPLICATE, max_duplicate_ngram_chars_fraction={2: 8 / 17 - 0.001})
    loose = web(**OFF_EXCEPT_DUPLICATE, max_duplicate_ngram_chars_fraction={2: 8 / 17 + 0.001})
    assert apply_quality_filters(text, "text", tight).reason == "web_duplicate_2gram"
    assert apply_quality_filters(text, "text", loose).reason is None


def test_repetition_rules_come_before_quality_rules():
    text = "Buy now. " * 30  # repeats and has no stop words: the repetition rule names it
    assert apply_quality_filters(text, "text", web()).reason == "web_top_2gram"
    assert apply_quality_filters(text, "text", web(max_top_ngram_chars_fraction={},
                                                   max_duplicate_ngram_chars_fraction={})).reason == "web_stop_words"


def test_thresholds_come_from_the_config():
    assert apply_quality_filters(SHORT, "text", web()).reason == "web_too_few_words"
    assert apply_quality_filters(SHORT, "text", web(min_words=10)).reason is None
    assert apply_quality_filters(PROSE, "text", web(min_stop_words=100)).reason == "web_stop_words"
    assert apply_quality_filters(PROSE, "text", web(c4_min_sentences=7)).reason == "c4_too_few_sentences"


# ------------------------------------------------------------------------------------------- C4


def test_c4_line_rules_remove_boilerplate_lines_and_count_them():
    text = "\n".join([
        "Home | News | Sport | Weather",  # no terminal punctuation
        PROSE_LINES[0],
        "Share this.",  # too few words
        "   " + PROSE_LINES[1] + "  ",  # kept, stripped
        "",  # blank: dropped, not counted
        "This site uses cookies to give you a better experience.",
        PROSE_LINES[2],
        "Please enable JavaScript to view the comments.",
        "The director said the results were “better than we had hoped.”",  # closing quote: kept
        'He added, "We will release more juveniles next spring!"',
        "Read the rest of the story in our print edition...",  # an ellipsis is a cut-off snippet
        PROSE_LINES[3],
        "Accept our Terms of Use to continue reading.",
        "Related: {see more}",  # a brace on a removed line does not drop the page
    ])
    kept = [
        PROSE_LINES[0],
        PROSE_LINES[1],
        PROSE_LINES[2],
        "The director said the results were “better than we had hoped.”",
        'He added, "We will release more juveniles next spring!"',
        PROSE_LINES[3],
    ]
    assert apply_quality_filters(text, "text", web()) == FilterResult("\n".join(kept), None, 7)


def test_c4_removes_citation_markers_and_a_line_with_a_word_over_the_limit():
    cited = [PROSE_LINES[0] + "[1]", PROSE_LINES[1] + "[citation needed]", "History[edit]", PROSE_LINES[2] + "[12]"]
    blob = "See data:" + "QUJD" * 300 + " for the raw table."  # a 1,209-character word, a third of the text
    text = "\n".join([*cited, blob, *PROSE_LINES[3:], *sentences(40)])
    assert len(text) > 2 * 1209
    # Without its marker a cited line ends like a sentence; 'History' alone has too few words.
    assert apply_quality_filters(text, "text", web()) == FilterResult("\n".join(PROSE_LINES + sentences(40)), None, 2)
    # Without the line rules the long word drops the document, as in every other profile.
    assert apply_quality_filters(text, "text", web(c4_line_rules=False)).reason == "word_too_long"
    assert apply_quality_filters(text, "text", FiltersConfig(profile="none")).reason == "word_too_long"


def test_c4_counts_sentences_as_a_sentence_splitter_does():
    # Each line that ends like a sentence is one, a quoted title too ('"Angel of Death"'): 5 lines, 5.
    titles = ['The set opened with "Angel of Death"', 'Then they played "Raining Blood"',
              'The crowd asked for "South of Heaven"', 'Next on the list was "Seasons in the Abyss"',
              'They closed with "War Ensemble"']
    assert apply_quality_filters("\n".join(titles), "text", web(min_words=0)).reason is None
    # A period after U.S., initials or a title ends no sentence: 4 lines of one sentence each, < 5.
    abbreviated = ["The U.S. Army reached St. Louis with Mr. Clark in May.",
                   "J. R. R. Tolkien wrote it at Oxford with Dr. Lewis nearby.",
                   "They met in Washington, D.C. and then in the Jan. frost.",
                   "He said e.g. fish, i.e. cod, and more of the same."]
    assert apply_quality_filters("\n".join(abbreviated), "text", web(min_words=0)).reason == "c4_too_few_sentences"
    # Sentences inside a line count: 4 in the first line, 1 in the second.
    several = ["It rained. We stayed in! Was it cold? The roads closed.", PROSE_LINES[0]]
    assert apply_quality_filters("\n".join(several), "text", web(min_words=0)).reason is None


def test_duplicate_lines_keep_their_indentation():
    """Lines are compared as they are, indentation included: 'return None' at five depths, twice
    each, is 5 repeated lines of 20 (0.25 <= 0.3); stripped it would be 9 of 20 (0.45)."""
    lines = [line for i in range(10) for line in (f"def f{i}():", "    " * (1 + i % 5) + "return None")]
    text = "\n".join(lines)
    assert len(lines) - len(set(lines)) == 5 and len(lines) - len({line.strip() for line in lines}) == 9
    assert apply_quality_filters(text, "text", web(**OFF_EXCEPT_LINES)).reason is None
    assert apply_quality_filters(text, "text", web(**{**OFF_EXCEPT_LINES, "max_duplicate_lines_fraction": 0.2})).reason \
        == "web_duplicate_lines"


def test_paragraphs_and_lines_are_datatroves_regex_splits():
    """The repetition rules' units come from str.split, for speed; datatrove splits with
    re.split(r"\n{2,}", text.strip()) and re.split(r"\n+", text). Random texts of letters, blanks
    and runs of newlines of every length must give the same units."""
    from raylm.data.filters import _lines_as_datatrove_splits, _paragraphs_as_datatrove_splits

    generator = random.Random(15)
    for _ in range(50_000):
        text = "".join(generator.choice("ab\n\n \t") for _ in range(generator.randint(1, 16)))
        assert _paragraphs_as_datatrove_splits(text) == re.split(r"\n{2,}", text.strip()), repr(text)
        assert _lines_as_datatrove_splits(text) == re.split(r"\n+", text), repr(text)


def test_ngram_counts_are_datatroves_on_random_repetitive_texts():
    """The n-gram rules count with integer names, sorts and a scan of repeated starts only; here
    they are counted as datatrove's find_top_duplicate and find_all_duplicate do, over the words
    themselves (a most frequent n-gram that occurs once scoring 0, as in raylm). Random texts of
    few words repeat in every way: overlapping, nested, far apart. The bound that lets the rules
    stop early must hold for every longer n-gram too."""
    from raylm.data.filters import _WordNgrams

    def top_chars(words, n):
        top, count = Counter(" ".join(words[i: i + n]) for i in range(len(words) - n + 1)).most_common(1)[0]
        return len(top) * count if count > 1 else 0

    def duplicate_chars(words, n):
        seen, chars, i = set(), 0, 0
        while i < len(words) - n + 1:
            ngram = "".join(words[i: i + n])
            if ngram in seen:
                chars, i = chars + len(ngram), i + n
            else:
                seen.add(ngram)
                i += 1
        return chars

    generator = random.Random(15)
    for _ in range(1_500):
        vocabulary = ["a", "bb", "ccc", "dd", "e", "ffff"][: generator.randint(1, 6)]
        words = [generator.choice(vocabulary) for _ in range(generator.randint(1, 40))]
        ids = {word: i for i, word in enumerate(vocabulary)}
        ngrams = _WordNgrams(np.array([ids[w] for w in words]), np.array([len(w) for w in words]))
        expected = {n: duplicate_chars(words, n) for n in range(1, 9)}
        for n in range(1, 8):
            if n <= len(words):
                assert ngrams.top_chars(n) == top_chars(words, n), (words, n)
            assert ngrams.duplicate_chars(n) == expected[n], (words, n)
            assert all(ngrams.covered_chars(n) >= expected[m] for m in range(n, 9)), (words, n)
            if expected[n]:  # stopped past a limit below the count, the count is still past it
                assert ngrams.duplicate_chars(n, stop_above=expected[n] - 1) > expected[n] - 1


def test_ngram_grouping_is_numpys_unique_with_small_and_huge_keys():
    """Keys are grouped by one sort with each key's index in its low bits; keys too large to leave
    room for the index take an argsort instead. Both must give np.unique's counts, first indices
    and inverse."""
    from raylm.data.filters import _group

    generator = np.random.default_rng(15)
    for high in (3, 1000, 2**62):  # the last too large
        for size in (0, 1, 2, 7, 300):
            for keys in (generator.integers(0, high, size), generator.integers(0, 3, size) * (high // 3)):
                _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
                for got, expected in zip(_group(keys), (counts, first, inverse)):
                    assert got.tolist() == expected.tolist(), keys


def test_hashes_and_ellipses_have_a_limit_each():
    # 6 hashtags and 6 ellipses on 106 words: 0.057 each, 0.113 together, over 0.1 only together.
    lines = sentences(20)
    text = "\n".join(line.replace(" ", "… ", 1) if i < 6 else line for i, line in enumerate(lines)) + \
        "\n#ray #python #data #gpu #cloud #llm"
    assert len(text.split()) == 106 and text.count("#") == text.count("…") == 6
    assert apply_quality_filters(text, "text", web()).reason is None


def test_c4_line_rules_can_be_switched_off():
    text = PROSE + "\nShare this"
    assert apply_quality_filters(text, "text", web()) == FilterResult(PROSE, None, 1)
    assert apply_quality_filters(text, "text", web(c4_line_rules=False)) == FilterResult(text, None, 0)


def test_c4_min_words_per_line_comes_from_the_config():
    text = PROSE + "\nIt is small."
    assert apply_quality_filters(text, "text", web()).text == text
    assert apply_quality_filters(text, "text", web(c4_min_words_per_line=4)) == FilterResult(PROSE, None, 1)


C4_CASES = [
    ("c4_lorem_ipsum", PROSE + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.",
     {"c4_drop_lorem_ipsum": False}),
    ("c4_curly_bracket", PROSE + '\nSet the option to {"verbose": true} in the settings file.',
     {"c4_drop_curly_bracket": False}),
    ("c4_too_few_sentences", "\n".join(PROSE_LINES[:3]), {"c4_min_sentences": 3}),
    ("empty", "\n".join(line.removesuffix(".") for line in sentences(20)), {"c4_line_rules": False,
                                                                            "c4_min_sentences": 0}),
]


@pytest.mark.parametrize(("reason", "text", "relax"), C4_CASES, ids=[case[0] for case in C4_CASES])
def test_each_c4_document_rule_drops_its_document(reason, text, relax):
    assert apply_quality_filters(text, "text", web()) == FilterResult(text, reason, 0)
    assert apply_quality_filters(text, "text", web(**relax)).reason is None


def test_c4_document_rules_apply_without_the_line_rules():
    unpunctuated = "\n".join(line.removesuffix(".") for line in sentences(20))
    assert apply_quality_filters(unpunctuated, "text", web(c4_line_rules=False)).reason == "c4_too_few_sentences"


# ----------------------------------------------------------------------------------------- code

LONG_STRINGS = "".join(f'MESSAGE_{i} = "{" ".join(MADE_UP_WORDS[20 * i:20 * i + 20])}"\n' for i in range(10))
CODE_CASES = [
    # 612,012 characters but 1,152,012 UTF-8 bytes: the limit is on bytes.
    ("code_too_large", "WORDS = [\n" + f'    "{"é" * 60}",\n' * 9000 + "]\n", {"max_bytes": 2_000_000}),
    ("code_long_line", PYTHON_FILE + f"TABLE = {list(range(250))}\n", {"max_line_length": 2000}),
    ("code_mean_line_length", LONG_STRINGS, {"max_mean_line_length": 200}),
    ("code_alphanumeric", PYTHON_FILE + "# +--------+--------+\n# |        |        |\n" * 20,
     {"min_alphanumeric_fraction": 0.1}),
    ("code_autogenerated", "# Generated by the protocol buffer compiler.  DO NOT EDIT!\n" + PYTHON_FILE,
     {"drop_autogenerated": False}),
    ("code_autogenerated", "'''\nThis module is Auto-Generated from schema.json.\n'''\n" + PYTHON_FILE,
     {"drop_autogenerated": False}),
]


@pytest.mark.parametrize(("reason", "text", "relax"), CODE_CASES, ids=[case[0] for case in CODE_CASES])
def test_each_code_rule_drops_its_file(reason, text, relax):
    assert apply_quality_filters(text, "code", code()) == FilterResult(text, reason, 0)
    assert apply_quality_filters(text, "code", code(**relax)).reason is None


def test_only_the_first_five_lines_can_mark_a_file_generated():
    note = "# Do not edit: the table below is generated by tools/make_tables.py.\n"
    line_5 = "import os\nimport sys\n\nPATH = os.getcwd()\n" + note
    line_6 = "import os\nimport sys\n\n\nPATH = os.getcwd()\n" + note
    assert apply_quality_filters(line_5, "code", code()).reason == "code_autogenerated"
    assert apply_quality_filters(line_6, "code", code()).reason is None


# ------------------------------------------------------------------------------------- profiles


def test_auto_profile_picks_the_rules_by_kind():
    auto = FiltersConfig(profile="auto")
    assert apply_quality_filters(PYTHON_FILE, "code", auto).reason is None
    assert apply_quality_filters(PYTHON_FILE, "record", auto).reason.startswith(("web_", "c4_"))
    assert apply_quality_filters(PROSE, "record", auto).reason is None
    assert apply_quality_filters(LONG_STRINGS, "record", auto).reason.startswith(("web_", "c4_"))
    assert apply_quality_filters(LONG_STRINGS, "code", auto).reason == "code_mean_line_length"
    # Plain text (a book's paragraphs, short notes) keeps what the web rules would drop.
    for text in (LONG_STRINGS, "A short note.", "ROMEO:\nIs the day so young?"):
        assert apply_quality_filters(text, "record", auto).reason is not None
        assert apply_quality_filters(text, "text", auto) == FilterResult(text, None, 0)


def test_web_and_code_profiles_apply_to_every_kind():
    assert apply_quality_filters(PYTHON_FILE, "code", web()).reason.startswith(("web_", "c4_"))
    # One long line of prose reads as minified code to the code rules.
    one_line = " ".join(PROSE_LINES)
    assert apply_quality_filters(one_line, "text", code()).reason == "code_mean_line_length"


@pytest.mark.parametrize("kind", ["code", "text", "record"])
def test_none_profile_keeps_every_non_empty_document(kind):
    none = FiltersConfig(profile="none")
    for text in (PYTHON_FILE, PROSE, "x", "{" * 1000, "Lorem ipsum."):
        assert apply_quality_filters(text, kind, none) == FilterResult(text, None, 0)


@pytest.mark.parametrize("profile", ["auto", "web", "code", "none"])
@pytest.mark.parametrize("kind", ["code", "text", "record"])
@pytest.mark.parametrize("text", ["", " ", "\n\n", " \t\r\n \u00a0\u3000 "])
def test_empty_and_whitespace_documents_are_dropped_in_every_profile(profile, kind, text):
    assert apply_quality_filters(text, kind, FiltersConfig(profile=profile)) == FilterResult(text, "empty", 0)


@pytest.mark.parametrize("profile", ["auto", "web", "code", "none"])
def test_a_word_over_the_limit_drops_the_document_in_every_profile(profile):
    with_blob = PROSE + "\ndata:image/png;base64," + "iVBORw0KGgo" * 100  # one 1122-character word
    assert apply_quality_filters(with_blob, "text", FiltersConfig(profile=profile)).reason == "word_too_long"
    for loose in (FiltersConfig(profile=profile, max_word_chars=1200), FiltersConfig(profile=profile, max_word_chars=0)):
        assert apply_quality_filters(with_blob, "text", loose).reason != "word_too_long"


def test_a_50_mb_line_is_judged_without_counting_its_ngrams():
    """One 50 MB line: a space-free blob goes as too long a word; prose goes on its word count
    before the n-gram rules (which would hold ten million words in memory)."""
    blob = "QUJD" * 12_500_000
    assert apply_quality_filters(blob, "text", FiltersConfig(profile="none")) == FilterResult(blob, "word_too_long", 0)
    prose = " ".join(PROSE_LINES * 70_000)
    assert len(prose) > 50_000_000
    assert apply_quality_filters(prose, "text", web()).reason == "web_too_many_words"
    assert apply_quality_filters(prose, "text", FiltersConfig(profile="none")).reason is None


def test_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="'prose'"):
        apply_quality_filters(PROSE, "prose", FiltersConfig())


# ----------------------------------------------------------------------------------- real corpus


def documented_reason(reason: str) -> bool:
    fixed = {
        "empty", "web_too_few_words", "web_too_many_words", "web_mean_word_length", "web_hash_ratio", "web_ellipsis_ratio",
        "web_bullet_lines", "web_ellipsis_lines", "web_alpha_words", "web_stop_words",
        "web_duplicate_lines", "web_duplicate_line_chars", "web_duplicate_paragraphs",
        "web_duplicate_paragraph_chars", "c4_lorem_ipsum", "c4_curly_bracket", "c4_too_few_sentences",
    }
    return reason in fixed or re.fullmatch(r"web_(top|duplicate)_\d+gram", reason) is not None


def test_wikitext_articles_get_sane_verdicts():
    if not WIKITEXT_VALID.exists():
        pytest.skip(f"{WIKITEXT_VALID} is absent")
    corpus = WIKITEXT_VALID.read_text(encoding="utf-8")
    raw = [a for a in re.split(r"(?m)^(?= = [^=].* = $)", corpus) if a.strip()]
    articles = clean_texts(pa.array(raw), CleanConfig()).to_pylist()  # as prepare gives them to the filters
    assert len(articles) > 50
    results = [apply_quality_filters(article, "text", web()) for article in articles]
    kept = [r for r in results if r.reason is None]
    dropped = [r for r in results if r.reason is not None]
    assert len(kept) > len(articles) / 2 and dropped
    assert all(documented_reason(r.reason) for r in dropped)
    for result in kept:
        # Section headings (' = = History = = ') go, sentences stay.
        assert result.lines_removed > 0
        assert all(line.endswith((".", "!", "?", '"', "'", "”", "’")) for line in result.text.split("\n"))
    for article, result in zip(articles, results):
        if result.reason is not None:
            assert result.text == article and result.lines_removed == 0


def test_a_book_in_paragraphs_keeps_its_text_by_default_and_a_heavy_web_drop_is_announced():
    """Tiny Shakespeare cut at blank lines: 7,222 speeches, most too short for the web rules."""
    from raylm.data.prepare import _heavy_filtering

    book = Path(WIKITEXT_VALID.parent / "tinyshakespeare.txt")
    if not book.exists():
        pytest.skip(f"{book} is absent")
    speeches = [s for s in book.read_text(encoding="utf-8").split("\n\n") if s.strip()]
    total = sum(len(s.encode()) for s in speeches)

    def bytes_by_reason(profile: str) -> tuple[dict[str, int], int, int]:
        dropped, kept, cut = {}, 0, 0
        for speech in speeches:
            result = apply_quality_filters(speech, "text", FiltersConfig(profile=profile))
            if result.reason:
                dropped[result.reason] = dropped.get(result.reason, 0) + len(speech.encode())
            else:
                kept += len(result.text.encode())
                cut += len(speech.encode()) - len(result.text.encode())
        return dropped, kept, cut

    def summary(profile: str) -> str | None:
        dropped, kept, cut = bytes_by_reason(profile)
        return _heavy_filtering({"documents": {"dropped_bytes": dropped}, "lines_removed_bytes": cut,
                                 "splits": {"train": {"bytes": kept}}, "config": {"data": {"filters": {"profile": profile}}}})

    assert bytes_by_reason("auto")[1] == total and summary("auto") is None
    dropped, kept, _ = bytes_by_reason("web")
    assert kept < 0.1 * total and max(dropped, key=dropped.get) == "web_too_few_words"
    line = summary("web")
    assert re.fullmatch(r"prepare: the quality filters dropped 9\d% of the text \(1\.\d\d of 1\.\d\d MB: "
                        r"web_too_few_words \d+%, .*\); data\.filters\.profile=none keeps it \(now 'web'; 'auto' applies "
                        r"the web rules to records only\), or loosen data\.filters\.web\.\* / data\.filters\.code\.\*", line), line

