"""Cleaning: what is normalised, what is kept, and the opt-in lossy steps."""

from __future__ import annotations

import pyarrow as pa

from raylm.config import CleanConfig
from raylm.data.clean import clean_texts


def clean(text: str, **options) -> str:
    return clean_texts(pa.array([text]), CleanConfig(**options))[0].as_py()


def test_unicode_is_nfc():
    assert clean("Cafe\u0301") == "Caf\u00e9"


def test_line_breaks_become_newlines():
    assert clean("a\r\nb\rc\u2028d\u2029e\x0bf\x0cg\x85h") == "a\nb\nc\nd\ne\nf\ng\nh"


def test_control_and_invisible_characters_go_but_tab_and_newline_stay():
    assert clean("\ufeffa\x00b\x07c\x1bd\u200be\u00adf\tg\nh\x7f") == "abcdef\tg\nh"


def test_exotic_spaces_become_plain_spaces():
    assert clean("a\u00a0b\u2003c\u3000d") == "a b c d"


def test_trailing_spaces_and_long_blank_runs_go_indentation_stays():
    code = "def f():\n    return 1   \n\n\n\n\n\n\nclass A:\n\tpass\t\n"
    assert clean(code) == "def f():\n    return 1\n\n\nclass A:\n\tpass"


def test_whitespace_only_becomes_empty():
    assert clean(" \t\n \n") == ""


def test_lowercase_and_stop_words_are_opt_in():
    text = "The Cat sat on the Mat with a Hat."
    assert clean(text) == text
    assert clean(text, lowercase=True) == "the cat sat on the mat with a hat."
    assert clean(text, remove_stop_words=True) == "Cat sat Mat Hat."
