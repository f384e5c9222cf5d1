"""Text normalisation, vectorised with Arrow compute (RE2) so it costs little next to tokenizing.

Always: Unicode NFC; CR/LF variants and Unicode line separators become '\n'; control and
invisible format characters go (tab and newline stay); exotic spaces become ' '; trailing
spaces go; runs of blank lines shrink to two. Indentation is kept: it is meaning in code and verse.

Opt-in, off by default: lowercasing and stop-word removal. Both destroy information a language
model needs (case marks names and sentence starts; stop words carry grammar), and the web quality
filters use stop words as a sign of real prose, so they are for special purposes only.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from raylm.config import CleanConfig

LINE_BREAKS = r"\r\n|[\r\x0b\x0c\x{85}\x{2028}\x{2029}]"
INVISIBLE = r"[\x00-\x08\x0e-\x1f\x7f\x{80}-\x{84}\x{86}-\x{9f}\x{ad}\x{200b}\x{2060}\x{feff}]"
EXOTIC_SPACES = r"[\x{a0}\x{1680}\x{2000}-\x{200a}\x{202f}\x{205f}\x{3000}]"
STOP_WORDS = (
    "a about above after again against all am an and any are as at be because been before being "
    "below between both but by could did do does doing down during each few for from further had "
    "has have having he her here hers herself him himself his how i if in into is it its itself "
    "me more most my myself no nor not of off on once only or other our ours ourselves out over "
    "own same she should so some such than that the their theirs them themselves then there "
    "these they this those through to too under until up very was we were what when where which "
    "while who whom why will with would you your yours yourself yourselves"
).split()
STOP_WORD_PATTERN = r"(?i)\b(?:" + "|".join(STOP_WORDS) + r")\b[ \t]?"


def clean_texts(texts: pa.Array, config: CleanConfig) -> pa.Array:
    texts = pc.utf8_normalize(texts, "NFC")
    texts = pc.replace_substring_regex(texts, LINE_BREAKS, "\n")
    texts = pc.replace_substring_regex(texts, INVISIBLE, "")
    texts = pc.replace_substring_regex(texts, EXOTIC_SPACES, " ")
    if config.lowercase:
        texts = pc.utf8_lower(texts)
    if config.remove_stop_words:
        texts = pc.replace_substring_regex(texts, STOP_WORD_PATTERN, "")
    texts = pc.replace_substring_regex(texts, r"(?m)[ \t]+$", "")
    texts = pc.replace_substring_regex(texts, r"\n{4,}", "\n\n\n")
    return pc.utf8_trim(texts, "\n")
