"""Quality filters: each rule drops the document it should and only that one, thresholds come from
the config, profiles pick the rules, and C4 line removal keeps the right text."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from raylm.config import CodeRules, FiltersConfig, WebRules
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
    """`count` sentences 'The xxxxxx yyyyyy.' (3 words, 16 characters of words) of unique made-up
    words, which pass every web rule once there are enough of them; the first `times` of them carry
    `phrase` between their two made-up words."""
    lines = []
    for i in range(count):
        first, second = MADE_UP_WORDS[2 * i], MADE_UP_WORDS[2 * i + 1]
        middle = f" {phrase}" if i < times else ""
        lines.append(f"The {first}{middle} {second}.")
    return lines


def web(**rules) -> FiltersConfig:
    return FiltersConfig(profile="web", web=WebRules(**rules))


def code(**rules) -> FiltersConfig:
    return FiltersConfig(profile="code", code=CodeRules(**rules))


DEFAULT_TOP = WebRules().max_top_ngram_chars_fraction
DEFAULT_DUPLICATE = WebRules().max_duplicate_ngram_chars_fraction


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
    ("web_too_few_words",
     "The museum opens at nine.\nTickets cost ten euros.\nChildren enter for free.\n"
     "Guided tours start every hour.\nThe cafe closes at five.",
     {}, {"min_words": 20}),
    ("web_too_many_words", PROSE, {"max_words": 100}, {"max_words": 200}),
    ("web_mean_word_length",  # made-up words of 18 letters
     "\n".join(f"The {''.join(MADE_UP_WORDS[i:i + 3])} {''.join(MADE_UP_WORDS[i + 3:i + 6])}."
               for i in range(0, 120, 6)),
     {}, {"max_mean_word_length": 20}),
    ("web_mean_word_length", PROSE, {"min_mean_word_length": 6}, {"min_mean_word_length": 4}),
    ("web_symbol_ratio",  # 12 hashtags on 72 words
     "\n".join(sentences(20)) + "\n#ray #python #data #gpu #cloud #llm #train #infra #scale #ops #ai #ml",
     {}, {"max_symbol_to_word_ratio": 0.2}),
    ("web_symbol_ratio",  # ellipses inside lines count as symbols too: 10 on 60 words
     "\n".join(line.replace(" ", "… ", 1) if i % 2 else line for i, line in enumerate(sentences(20))),
     {}, {"max_symbol_to_word_ratio": 0.2}),
    ("web_bullet_lines",
     "\n".join(f"{bullet} {line}" for bullet, line in zip("•-*–·‣", PROSE_LINES)),
     {}, {"max_bullet_lines_fraction": 1.0}),
    ("web_ellipsis_lines",  # 4 of 10 lines end in an ellipsis
     "\n".join(PROSE_LINES + ["Read the full story about lobster hatcheries...", "See how the larvae are raised...",
                              "Watch the video of a release in Cornwall…", "Find out what fishermen think..."]),
     {}, {"max_ellipsis_lines_fraction": 0.5}),
    ("web_alpha_words",  # 20 numbers on 80 words
     "\n".join(sentences(20)) + "\n" + " ".join(str(1990 + year) for year in range(20)),
     {}, {"min_alpha_words_fraction": 0.7}),
    ("web_stop_words",
     "\n".join(line.replace("The ", "A ") for line in sentences(20)),
     {}, {"min_stop_words": 0}),
    ("web_duplicate_paragraphs",  # 2 of 6 paragraphs repeat; 2 of 9 lines
     "\n\n".join(f"{PROSE_LINES[i]}\n{PROSE_LINES[i + 1]}\n\nReply." for i in (0, 2, 4)),
     {}, {"max_duplicate_paragraphs_fraction": 0.5}),
    ("web_duplicate_paragraph_chars",  # 3 of 10 paragraphs repeat, with 26% of the characters
     "\n\n".join(PROSE_WITH_URLS),
     {}, {"max_duplicate_paragraph_chars_fraction": 0.5, "max_duplicate_line_chars_fraction": 0.5}),
    ("web_duplicate_lines",  # 5 of 12 lines repeat
     "\n".join(f"{line}\nReply" for line in PROSE_LINES),
     {}, {"max_duplicate_lines_fraction": 0.5}),
    ("web_duplicate_line_chars",  # 3 of 10 lines repeat, with 26% of the characters
     "\n".join(PROSE_WITH_URLS),
     {}, {"max_duplicate_line_chars_fraction": 0.5}),
    # 'Mississippi River' in 6 of 20 sentences: 2-gram 16 chars x 6 / 416 word chars = 0.23 > 0.2.
    ("web_top_2gram", "\n".join(sentences(20, "Mississippi River", times=6)),
     {}, {"max_top_ngram_chars_fraction": {**DEFAULT_TOP, 2: 0.5}}),
    # 3-gram 16 x 4 / 320 = 0.200 > 0.18, its 2-gram 'the Mississippi' 14 x 4 / 320 = 0.175 <= 0.2.
    ("web_top_3gram", "\n".join(sentences(16, "in the Mississippi", times=4)),
     {}, {"max_top_ngram_chars_fraction": {**DEFAULT_TOP, 3: 0.5}}),
    # 4-gram 19 x 4 / 412 = 0.184 > 0.16, its 3-gram 16 x 4 / 412 = 0.155 <= 0.18.
    ("web_top_4gram", "\n".join(sentences(21, "out of the Mississippi", times=4)),
     {}, {"max_top_ngram_chars_fraction": {**DEFAULT_TOP, 4: 0.5}}),
]


@pytest.mark.parametrize(("reason", "text", "trip", "relax"), WEB_CASES, ids=[case[0] for case in WEB_CASES])
def test_each_web_rule_drops_its_document(reason, text, trip, relax):
    dropped = apply_quality_filters(text, "text", web(**trip))
    assert dropped == FilterResult(text, reason, 0)
    assert apply_quality_filters(text, "text", web(**{**trip, **relax})).reason is None


def repeated_phrase_document(n: int, coverage: float) -> str:
    """Short sentences, two of which share an n-word phrase whose two occurrences cover `coverage`
    of the word characters, to within half a sentence (8 of several hundred characters)."""
    phrase = " ".join(PHRASE_WORDS[:n])
    covered = 2 * len(phrase.replace(" ", ""))
    count = round((covered / coverage - covered) / 16)
    return "\n".join(sentences(count, phrase, times=2))


@pytest.mark.parametrize("n", sorted(DEFAULT_DUPLICATE))
def test_each_duplicate_ngram_rule_drops_its_document(n):
    # Every k-gram inside the phrase repeats, so the coverage is the same for every k <= n and
    # 0 above: half a step (0.005) over the n threshold trips n alone, as each k < n allows 0.01
    # more. Counting the first occurrence too, and each overlapped word once, is what keeps the
    # shorter rules under their thresholds here.
    text = repeated_phrase_document(n, DEFAULT_DUPLICATE[n] + 0.005)
    assert apply_quality_filters(text, "text", web()) == FilterResult(text, f"web_duplicate_{n}gram", 0)
    relaxed = {**DEFAULT_DUPLICATE, n: 0.5}
    assert apply_quality_filters(text, "text", web(max_duplicate_ngram_chars_fraction=relaxed)).reason is None


def test_repetition_rules_come_before_quality_rules():
    text = "Buy now. " * 30  # repeats and has no stop words: the repetition rule names it
    assert apply_quality_filters(text, "text", web()).reason == "web_top_2gram"
    assert apply_quality_filters(text, "text", web(max_top_ngram_chars_fraction={},
                                                   max_duplicate_ngram_chars_fraction={})).reason == "web_stop_words"


def test_thresholds_come_from_the_config():
    short = "The museum opens at nine.\nTickets cost ten euros.\nChildren enter for free.\n" \
            "Guided tours start every hour.\nThe cafe closes at five."
    assert apply_quality_filters(short, "text", web()).reason == "web_too_few_words"
    assert apply_quality_filters(short, "text", web(min_words=10)).reason is None
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
        "empty", "web_too_few_words", "web_too_many_words", "web_mean_word_length", "web_symbol_ratio",
        "web_bullet_lines", "web_ellipsis_lines", "web_alpha_words", "web_stop_words",
        "web_duplicate_lines", "web_duplicate_line_chars", "web_duplicate_paragraphs",
        "web_duplicate_paragraph_chars", "c4_lorem_ipsum", "c4_curly_bracket", "c4_too_few_sentences",
    }
    return reason in fixed or re.fullmatch(r"web_(top|duplicate)_\d+gram", reason) is not None


def test_wikitext_articles_get_sane_verdicts():
    if not WIKITEXT_VALID.exists():
        pytest.skip(f"{WIKITEXT_VALID} is absent")
    corpus = WIKITEXT_VALID.read_text(encoding="utf-8")
    articles = [a for a in re.split(r"(?m)^(?= = [^=].* = $)", corpus) if a.strip()]
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

