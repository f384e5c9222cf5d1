"""Word tokens as spaCy's English tokenizer splits text, for the Gopher n-gram rules.

datatrove's GopherRepetitionFilter counts n-grams of spaCy tokens, where punctuation, clitics
("do", "n't") and hyphens are tokens of their own, so a repeated phrase is found however it is
punctuated. raylm needs the same tokens to agree with it, without spaCy: this is spaCy's documented
algorithm (https://spacy.io/usage/linguistic-features#how-tokenizer-works) with its English
prefixes, suffixes, infixes, special cases and URL rule. Each whitespace-separated chunk is split
on its own, so a process keeps the pieces of every chunk it has seen: real text repeats its chunks,
and most new ones are plain words that need no splitting.
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable

import numpy as np

# Character classes of spaCy's English rules. Letters are str.isalpha, and its cased classes are
# the cased letters plus the uncased ones; "icons" are the Unicode symbols (category So).
_PUNCT = frozenset("…,:;!?¿؟¡()[]{}<>_#*&。？！，、；：～·।،۔؛٪")
_QUOTES = frozenset("'\"”“`‘´’‚,„»«「」『』（）〔〕【】《》〈〉⟦⟧")
_CURRENCY = frozenset("$£€¥฿₽﷼") | frozenset(map(chr, range(0x20A0, 0x20C0)))
_PREFIX_CHARS = frozenset("§%=—–") | _PUNCT | _QUOTES | _CURRENCY
_SUFFIX_CHARS = _PUNCT | _QUOTES | frozenset("—–")
_AFTER_DIGITS = frozenset(  # units and currencies split off a number's end ("10km", "5$")
    "km km² km³ m m² m³ dm dm² dm³ cm cm² cm³ mm mm² mm³ ha µm nm yd in ft kg g mg µg t lb oz m/s km/h kmh "
    "mph hPa Pa mbar mb MB kb KB gb GB tb TB T G M K % US$ C$ A$".split()) | _CURRENCY
_PERIOD_SPLITS_AFTER = frozenset("0123456789%²-+|") | _PUNCT | _QUOTES  # and lowercase letters
_DIGITS = frozenset("0123456789")
_HYPHENS = ("-", "–", "—", "--", "---", "——", "~")
_INFIX_CHAR = re.compile(r"[.…,+\-*^–—~:<>=/\x80-\U0010ffff]")  # where an infix rule may match (non-ASCII: icons)
# `_infixes` on ASCII text, written as spaCy writes its rules: one regex of the same rules in the same
# order (its quotes are ' " ` and the comma), in a group so that re.split returns the pieces and the
# infixes between them. Each rule consumes its first character, so the regex starts with their
# class and skips other characters in C; the rules then look back at it (and never match at the
# chunk's start, as `_infixes` does not). The function stays the definition for all of Unicode; a
# test holds the two equal on ASCII, where this speed matters (paths and code).
_ASCII_INFIX = re.compile(r"""([-.,+*^~:<>=/](?<=[\s\S]{2})(?:(?<=\.)\.+|(?<=[0-9][-+*^])(?=[0-9-])|(?<=[a-z'"`,]\.)(?=[A-Z'"`,])"""
                          r"|(?<=[A-Za-z],)(?=[A-Za-z])|(?<=[A-Za-z0-9]-)(?:|-|--)(?=[A-Za-z])|(?<=[A-Za-z0-9]~)(?=[A-Za-z])"
                          r"|(?<=[A-Za-z0-9][:<>=/])(?=[A-Za-z])))")
_UNIT_AFTER_DIGIT = re.compile(r"(?s:.*)\d(\D{1,4})", re.ASCII)  # fullmatched on a chunk's last 5 characters
_UNIT_ENDINGS = frozenset(unit[-1] for unit in (*_AFTER_DIGITS, "+"))  # a chunk ending otherwise has no unit
# spaCy's URL rule, shortened: an optional scheme or user, then dotted host labels and a lowercase
# top-level domain, an optional port and path. Unlike infixes, it keeps "www.gnu.org/licenses/" whole.
# A chunk without "://" or "@" has neither scheme nor user: the host alone is matched, sparing the
# user rule's backtracking over the whole chunk.
_URL_HOST = (r"(?:(?:[A-Za-z0-9\u00a1-\uffff][A-Za-z0-9\u00a1-\uffff_-]{0,62})?"
             r"[A-Za-z0-9\u00a1-\uffff]\.)+[a-z\u00df-\u00f6\u00f8-\u00ff]{2,63}(?::\d{2,5})?(?:[/?#]\S*)?")
_URL = re.compile(r"(?:[\w+.-]{2,}://)?(?:\S+(?::\S*)?@)?" + _URL_HOST)
_HOST_URL = re.compile(_URL_HOST)

_EMOTICONS = r"""
:) :-) :)) :-)) :))) :-))) (: (-: =) (= :] :-] [: [-: [= =] :o) (o: :} :-} 8) 8-) (-8 ;) ;-) (; (-; :( :-( :((
:-(( :((( :-((( ): )-: =( >:( :') :'-) :'( :'-( :/ :-/ =/ =| :| :-| ]= =[ :1 :P :-P :p :-p :O :-O :o :-o :0 :-0
:() >:o :* :-* :3 :-3 =3 :> :-> :X :-X :x :-x :D :-D ;D ;-D =D xD XD xDD XDD 8D 8-D ^_^ ^__^ ^___^ >.< >.> <.<
._. ;_; -_- -__- v.v V.V v_v V_V o_o o_O O_o O_O 0_o o_0 0_0 o.O O.o O.O o.o 0.0 o.0 0.o @_@ <3 <33 <333 </3
(^_^) (-_-) (._.) (>_<) (*_*) (¬_¬) ಠ_ಠ ಠ︵ಠ (ಠ_ಠ) ¯\(ツ)/¯ (╯°□°）╯︵┻━┻ ><(((*>
""".split()
_ABBREVIATIONS = """
' '' C++ \\") <space> a.m. p.m. e.g. E.g. E.G. i.e. I.e. I.E. Adm. Bros. co. Co. Corp. D.C. Dr. Gen. Gov. Inc. Jr. Ltd.
Md. Messrs. Mo. Mont. Mr. Mrs. Ms. Ph.D. Prof. Rep. Rev. Sen. St. vs. v.s. Mt. and/or w/o 'd 'S 's ‘S ‘s 're
'Cause 'cause 'cos 'Cos 'coz 'Coz 'cuz 'Cuz 'bout ma'am Ma'am o'clock O'clock em 'em ll 'll nuff 'nuff
Ak. Ala. Apr. Ariz. Ark. Aug. Calif. Colo. Conn. Dec. Del. Feb. Fla. Ga. Ia. Id. Ill. Ind. Jan. Jul. Jun. Kan.
Kans. Ky. La. Mar. Mass. Mich. Minn. Miss. N.C. N.D. N.H. N.J. N.M. N.Y. Neb. Nebr. Nev. Nov. Oct. Okla. Ore.
Pa. S.C. Sep. Sept. Tenn. Va. Wash. Wis. ä. ö. ü.
""".split() + [f"{letter}." for letter in "abcdefghijklmnopqrstuvwxyz"]
# Clitics: (stems, endings). Each stem comes in lowercase and title case, each ending with its
# apostrophes and without them ("they'll", "theyll"); an ending may be two clitics ("'ll", "'ve").
_W_WORDS = "who what when where why how there that this these those"
_CLITICS = [
    ("i", [("'m",), ("'m", "a")]),
    ("i you he she it we they", [("'ll",), ("'ll", "'ve"), ("'d",), ("'d", "'ve")]),
    ("i you we they", [("'ve",)]),
    ("you we they", [("'re",)]),
    ("he she it who what when where why how there that this", [("'s",)]),
    (_W_WORDS, [("'ll",), ("'ll", "'ve"), ("'d",), ("'d", "'ve")]),
    ("who what when where why how there these those", [("'re",), ("'ve",)]),
    ("ca could do does did had may might must need ought sha should wo would", [("n't",), ("n't", "'ve")]),
    ("could might must should would", [("'ve",)]),
    ("ai are is was were have has dare", [("n't",)]),
]
_DROPPED_G = "doin goin nothin nuthin ol somethin lovin havin"  # whole with or without the apostrophe
_PHRASES = {"y'all": ("y'", "all"), "yall": ("y", "all"), "how'd'y": ("how", "'d", "'y"), "not've": ("not", "'ve"),
            "notve": ("not", "ve"), "cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"),
            "let's": ("let", "'s"), "c'mon": ("c'm", "on")}
_REAL_WORDS = set("ill its hell shell shed were well whore".split())  # never read as a stem + clitic


@functools.cache
def _special_cases() -> dict[str, tuple[str, ...]]:
    """Chunks spaCy never splits by its rules but by a table: clitics (don't -> do n't), times
    (5pm -> 5 pm), abbreviations and emoticons kept whole. Every form with a straight apostrophe
    also has a typographic one."""
    cases: dict[str, tuple[str, ...]] = {word: (word,) for word in (*_EMOTICONS, *_ABBREVIATIONS)}
    for stems, endings in _CLITICS:
        for stem in stems.split():
            for cased in (stem, stem.title()):
                for clitics in endings:
                    for pieces in (clitics, tuple(clitic.replace("'", "") for clitic in clitics)):
                        if (cased + "".join(pieces)).lower() not in _REAL_WORDS:
                            cases[cased + "".join(pieces)] = (cased, *pieces)
    for word in _DROPPED_G.split():
        for cased in (word, word.title(), word + "'", word.title() + "'"):
            cases[cased] = (cased,)
    for word, pieces in _PHRASES.items():
        cases[word] = pieces
        if not word.startswith("y"):  # spaCy has no "Y'all"
            cases[word.title()[0] + word[1:]] = (pieces[0].title()[0] + pieces[0][1:], *pieces[1:])
    for hour in range(1, 13):
        for period in ("a.m.", "am", "p.m.", "pm"):
            cases[f"{hour}{period}"] = (str(hour), period)
    for unit in "cfkCFK":
        cases[f"°{unit}."] = ("°", unit, ".")
    cases.update({word.replace("'", "’"): tuple(piece.replace("'", "’") for piece in pieces)
                  for word, pieces in list(cases.items()) if "'" in word})
    return cases


def _is_icon(char: str) -> bool:
    """One of Unicode's other symbols (category So: emoji, ©, °, arrows...)."""
    return char > "\x7f" and unicodedata.category(char) == "So"


def _is_lower(char: str) -> bool:
    return char.isalpha() and not char.isupper()


def _is_upper(char: str) -> bool:
    return char.isalpha() and not char.islower()


def _prefix_length(chunk: str) -> int:
    """The length of spaCy's prefix at the start of `chunk` (0: none): its first matching rule."""
    first = chunk[0]
    if first.isalnum():  # no prefix starts with a letter or digit
        return 0
    if first in _PREFIX_CHARS or first == "+" and chunk[1:2] not in _DIGITS:
        return 1
    if chunk.startswith("US$"):
        return 3
    if chunk.startswith(("C$", "A$")):
        return 2
    if chunk.startswith(".."):
        return len(chunk) - len(chunk.lstrip("."))
    return 1 if _is_icon(first) else 0


def _suffix_length(chunk: str) -> int:
    """The length of spaCy's suffix at the end of `chunk` (0: none): the longest rule that matches,
    as a search for the first position where one matches to the end finds it."""
    last, n, best = chunk[-1], len(chunk), 0
    if last in _SUFFIX_CHARS or _is_icon(last):
        best = 1
    if chunk.endswith(".."):
        best = n - len(chunk.rstrip("."))
    elif chunk.endswith(("……", "'s", "'S", "’s", "’S")):
        best = 2
    if last in _UNIT_ENDINGS and (unit := _UNIT_AFTER_DIGIT.fullmatch(chunk, max(0, n - 5))):  # a number and a unit, currency or "+"
        tail = unit.group(1)
        if tail in _AFTER_DIGITS or tail == "+":
            best = max(best, len(tail))
    if last == "." and n > 1 and not best:
        before = chunk[-2]
        if before in _PERIOD_SPLITS_AFTER or _is_lower(before) or n > 2 and (
                _is_upper(before) and _is_upper(chunk[-3]) or chunk[-3] == "°" and before in "FfCcKk"):
            best = 1
    return best


def _infixes(chunk: str) -> Iterable[tuple[int, int]]:
    """Spans of spaCy's infixes, left to right: ellipses and icons anywhere; between digits, an
    operator; a period from a lowercase letter to a capital; a comma between letters; a hyphen or
    one of :<>=/ after a letter or digit and before a letter."""
    n, candidate = len(chunk), _INFIX_CHAR.search(chunk, 1)
    while candidate:
        i = candidate.start()
        char, before, after = chunk[i], chunk[i - 1], chunk[i + 1: i + 2]
        end = 0
        if char == "." and after == ".":
            end = n - len(chunk[i:].lstrip("."))
        elif char == "…" or _is_icon(char):
            end = i + 1
        elif char in "+-*^" and before in _DIGITS and after and (after in _DIGITS or after == "-"):
            end = i + 1
        elif char == "." and after and (_is_lower(before) or before in _QUOTES) and (_is_upper(after) or after in _QUOTES):
            end = i + 1
        elif char == "," and before.isalpha() and after.isalpha():
            end = i + 1
        elif before.isalpha() or before in _DIGITS:
            if char in "-–—~":
                hyphen = next((h for h in _HYPHENS if chunk.startswith(h, i) and chunk[i + len(h): i + len(h) + 1].isalpha()), "")
                end = i + len(hyphen) if hyphen else 0
            elif char in ":<>=/" and after.isalpha():
                end = i + 1
        if end:
            yield i, end
        candidate = _INFIX_CHAR.search(chunk, end or i + 1)


def _split(chunk: str) -> tuple[str, ...]:
    """spaCy's tokens of one whitespace-free chunk: strip prefixes and suffixes until a special
    case or nothing is left to strip, then split what remains at its infixes unless it is a URL;
    last, put back together the special cases the rules cut apart ("f(x):" ends in the emoticon
    "):")."""
    special = _special_cases()
    if chunk in special:
        return special[chunk]
    if chunk.isalpha() or chunk.isdecimal():  # most chunks: no rule splits them
        return (chunk,)
    pieces = _split_by_rules(chunk, special)
    if len(pieces) == 1:
        return pieces
    cut_apart, longest, first_pairs = _special_cases_cut_apart()
    if first_pairs.isdisjoint(zip(pieces, pieces[1:])):
        return pieces
    found = [(size, start) for start, pair in enumerate(zip(pieces, pieces[1:])) if pair in first_pairs
             for size in range(2, min(longest, len(pieces) - start) + 1) if pieces[start: start + size] in cut_apart]
    taken: dict[int, int] = {}  # start: size; the longest first, then the earliest (spaCy's filter_spans)
    for size, start in sorted(found, key=lambda match: (-match[0], match[1])):
        if all(start + size <= other or other + other_size <= start for other, other_size in taken.items()):
            taken[start] = size
    joined: list[str] = []
    start = 0
    while start < len(pieces):
        if start in taken:
            joined += cut_apart[pieces[start: start + taken[start]]]
            start += taken[start]
        else:
            joined.append(pieces[start])
            start += 1
    return tuple(joined)


@functools.cache
def _special_cases_cut_apart() -> tuple[dict[tuple[str, ...], tuple[str, ...]], int, frozenset[tuple[str, str]]]:
    """The special cases that the prefix, suffix and infix rules split, keyed by those pieces; the
    most pieces of one; and the two pieces they start with (pieces without such a pair hold none)."""
    cut_apart = {}
    for case, pieces in _special_cases().items():
        by_rules = _split_by_rules(case, {})
        if len(by_rules) > 1 and by_rules != pieces:
            cut_apart[by_rules] = pieces
    return cut_apart, max(map(len, cut_apart)), frozenset(pieces[:2] for pieces in cut_apart)


def _split_by_rules(chunk: str, special: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The affix loop and infix split of `_split`, stopping at the given special cases."""
    prefixes: list[str] = []
    suffixes: list[str] = []
    rest, last_length = chunk, 0
    # Letters alone take no prefix, suffix or infix: "word," is done once its comma is off.
    while rest and len(rest) != last_length and rest not in special and not rest.isalpha():
        last_length = len(rest)
        prefix = _prefix_length(rest)
        if prefix and rest[prefix:] in special:
            prefixes.append(rest[:prefix])
            rest = rest[prefix:]
            break
        suffix = _suffix_length(rest[prefix:]) if rest[prefix:] else 0
        if suffix and rest[:-suffix] in special:
            suffixes.append(rest[-suffix:])
            rest = rest[:-suffix]
            break
        if prefix and suffix and prefix + suffix <= len(rest):
            prefixes.append(rest[:prefix])
            suffixes.append(rest[-suffix:])
            rest = rest[prefix:-suffix]
        elif prefix:
            prefixes.append(rest[:prefix])
            rest = rest[prefix:]
        elif suffix:
            suffixes.append(rest[-suffix:])
            rest = rest[:-suffix]
    middle: list[str] = []
    if rest in special:
        middle = list(special[rest])
    elif rest and (rest.isalpha() or "." not in rest and not _INFIX_CHAR.search(rest, 1) or "." in rest and _is_url(rest)):
        middle = [rest]  # nothing to split at, or a URL
    elif rest.isascii():
        middle = [piece for piece in _ASCII_INFIX.split(rest) if piece]
    elif rest:
        start = 0
        for infix_start, infix_end in _infixes(rest):
            if infix_start != start:
                middle.append(rest[start:infix_start])
            middle.append(rest[infix_start:infix_end])
            start = infix_end
        if rest[start:]:
            middle.append(rest[start:])
    return (*prefixes, *middle, *reversed(suffixes))


def _is_url(rest: str) -> bool:
    return bool((_URL if "://" in rest or "@" in rest else _HOST_URL).fullmatch(rest))


class _Vocabulary:
    """The process's tokens as integer ids, and each chunk it has split as a run of token ids in
    one flat array (chunk number -> start, size): real text repeats its chunks, so most are split
    once, and a text's ids are gathered with a few numpy operations rather than per chunk in
    Python. Cleared when it holds many chunks (~100 MB)."""

    MAX_CHUNKS = 1 << 20

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        # A chunk or token not seen before gets the next number as it is looked up, in C, so a
        # text's chunks are numbered in one pass whether or not they are new.
        self.chunk_numbers: defaultdict[str, int] = defaultdict(itertools.count().__next__)
        self.token_ids: defaultdict[str, int] = defaultdict(itertools.count().__next__)
        self.tokens: list[str] = []
        self.lengths = np.zeros(1 << 16, np.int64)  # characters of each token id
        self.starts = np.zeros(1 << 16, np.int64)  # per chunk number: where its token ids start in `flat`
        self.sizes = np.zeros(1 << 16, np.int64)  # and how many it has
        self.flat = np.zeros(1 << 16, np.int64)
        self.flat_size = 0

    def ids(self, chunks: list[str]) -> np.ndarray:
        """The token ids of these chunks' tokens, in order, splitting the chunks not seen before."""
        if len(self.chunk_numbers) >= self.MAX_CHUNKS:
            self.clear()
        known = len(self.chunk_numbers)
        numbers = np.fromiter(map(self.chunk_numbers.__getitem__, chunks), np.int64, len(chunks))
        if len(self.chunk_numbers) > known:
            self._add([chunks[i] for i in _first_of_each_new(numbers, known).tolist()])
        starts, sizes = self.starts[numbers], self.sizes[numbers]
        if len(sizes) and sizes.max() == 1 and sizes.min() == 1:  # one token per chunk (prose)
            return self.flat[starts]
        # Token p of the text, in chunk k, is flat[starts[k] + p - (tokens before chunk k)].
        shift = starts - np.cumsum(sizes) + sizes
        return self.flat[np.repeat(shift, sizes) + np.arange(int(sizes.sum()))]

    def _add(self, chunks: list[str]) -> None:
        """Split and store the chunks just numbered, in their numbers' order; the arrays grow once
        per call."""
        splits = list(map(_split, chunks))
        sizes = list(map(len, splits))
        pieces = list(itertools.chain.from_iterable(splits))
        known = len(self.tokens)
        ids = np.fromiter(map(self.token_ids.__getitem__, pieces), np.int64, len(pieces))
        self.tokens += [pieces[i] for i in _first_of_each_new(ids, known).tolist()]
        self.lengths = _room(self.lengths, len(self.tokens))
        self.lengths[known: len(self.tokens)] = list(map(len, self.tokens[known:]))
        first = len(self.chunk_numbers) - len(sizes)
        self.starts, self.sizes = _room(self.starts, len(self.chunk_numbers)), _room(self.sizes, len(self.chunk_numbers))
        self.flat = _room(self.flat, self.flat_size + len(pieces))
        self.sizes[first: len(self.chunk_numbers)] = sizes
        self.starts[first: len(self.chunk_numbers)] = self.flat_size + np.cumsum(sizes) - sizes
        self.flat[self.flat_size: self.flat_size + len(pieces)] = ids
        self.flat_size += len(pieces)


def _first_of_each_new(numbers: np.ndarray, known: int) -> np.ndarray:
    """Where each number from `known` on first comes, in the numbers' order: they were handed out
    in turn as they came, so each comes first where it is above all the numbers before it."""
    return np.flatnonzero(numbers > np.maximum.accumulate(np.concatenate([[known - 1], numbers[:-1]])))


def _room(array: np.ndarray, size: int) -> np.ndarray:
    """`array`, doubled until it holds `size` items."""
    while size > len(array):
        array = np.concatenate([array, np.zeros_like(array)])
    return array


_VOCABULARY = _Vocabulary()


def spacy_word_ids(chunks: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The tokens spaCy's English tokenizer makes of a text, given its whitespace-separated chunks
    (str.split()), as ids (equal tokens, equal ids, within this process) and their lengths in
    characters: what n-gram counting needs, without a string per token."""
    ids = _VOCABULARY.ids(chunks)
    return ids, _VOCABULARY.lengths[ids]


def spacy_words(chunks: list[str]) -> list[str]:
    """The tokens themselves, as datatrove keeps them (whitespace tokens dropped)."""
    return [_VOCABULARY.tokens[token_id] for token_id in _VOCABULARY.ids(chunks).tolist()]
