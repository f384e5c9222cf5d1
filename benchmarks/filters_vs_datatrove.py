"""raylm's `web` quality filters against datatrove's Gopher and C4 filters, on the same cleaned text.

    python benchmarks/filters_vs_datatrove.py [--venv /tmp/raylm-datatrove] [--show N]

The corpus is built from files every Debian/Python machine has plus ../shared/data: Wikipedia
articles, sections and paragraphs (wikitext-2), the licences in /usr/share/common-licenses, Debian
copyright files, rendered man pages and Python source files; each document goes through raylm's
cleaning first, and both sides judge that text. datatrove 0.10.1 (and spaCy, whose blank English
pipeline its word tokenizer uses; no model download) run in an environment of their own.

Printed: keep/drop agreement overall (and with the alphabetic-words rule set aside on both sides),
per rule family and per rule, each rule judged alone (every other rule off on both sides); a
confusion matrix; the disagreements by (raylm reason, datatrove reason); both sides' documents per
second for the whole web profile. Speed is timed in fresh processes, raylm's and datatrove's in
turn for --rounds rounds, each a first pass over the corpus after one warm-up sentence (spaCy's
pipeline loaded, raylm's token cache empty): the best round of each side is its speed, as this
VM's speed drifts by tens of percent from minute to minute.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import sysconfig
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmark_env import benchmark_env, sh  # noqa: E402
from raylm.config import CleanConfig, FiltersConfig, WebRules  # noqa: E402
from raylm.data.clean import clean_texts  # noqa: E402
from raylm.data.filters import apply_quality_filters  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
DATATROVE = ["datatrove[processing]==0.10.1", "spacy"]  # processing: the text utilities its filters import

# Every rule alone: raylm's WebRules overrides (over OFF) and datatrove's filter with its arguments
# (over its own all-off settings). Thresholds are the defaults of both.
OFF = dict(min_words=0, max_words=10**12, min_mean_word_length=0.0, max_mean_word_length=1e12,
           max_symbol_to_word_ratio=1e12, max_bullet_lines_fraction=1.0, max_ellipsis_lines_fraction=1.0,
           min_alpha_words_fraction=0.0, min_stop_words=0, max_duplicate_lines_fraction=1.0,
           max_duplicate_line_chars_fraction=1.0, max_duplicate_paragraphs_fraction=1.0,
           max_duplicate_paragraph_chars_fraction=1.0, max_top_ngram_chars_fraction={},
           max_duplicate_ngram_chars_fraction={}, c4_line_rules=False, c4_min_sentences=0,
           c4_drop_lorem_ipsum=False, c4_drop_curly_bracket=False)
REPETITION_OFF = dict(dup_line_frac=None, dup_para_frac=None, dup_line_char_frac=None, dup_para_char_frac=None,
                      top_n_grams=(), dup_n_grams=())
QUALITY_OFF = dict(min_doc_words=None, max_doc_words=None, min_avg_word_length=None, max_avg_word_length=None,
                   max_symbol_word_ratio=None, max_bullet_lines_ratio=None, max_ellipsis_lines_ratio=None,
                   max_non_alpha_words_ratio=None, min_stop_words=None)
C4_OFF = dict(remove_citations=False, filter_no_terminal_punct=False, min_num_sentences=-1, min_words_per_line=-1,
              max_word_length=-1, filter_lorem_ipsum=False, filter_javascript=False, filter_curly_bracket=False,
              filter_policy=False)
C4_LINES = dict(remove_citations=True, filter_no_terminal_punct=True, min_words_per_line=3, max_word_length=1000,
                filter_javascript=True, filter_policy=True)
NGRAM_TOP = {2: 0.20, 3: 0.18, 4: 0.16}
NGRAM_DUP = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
RULES = {  # name: (family, raylm overrides, datatrove filter, datatrove arguments)
    "duplicate_paragraphs": ("repetition", dict(max_duplicate_paragraphs_fraction=0.3), "repetition", dict(dup_para_frac=0.3)),
    "duplicate_paragraph_chars": ("repetition", dict(max_duplicate_paragraph_chars_fraction=0.2), "repetition",
                                  dict(dup_para_char_frac=0.2)),
    "duplicate_lines": ("repetition", dict(max_duplicate_lines_fraction=0.3), "repetition", dict(dup_line_frac=0.3)),
    "duplicate_line_chars": ("repetition", dict(max_duplicate_line_chars_fraction=0.2), "repetition",
                             dict(dup_line_char_frac=0.2)),
    **{f"top_{n}gram": ("repetition", dict(max_top_ngram_chars_fraction={n: f}), "repetition", dict(top_n_grams=((n, f),)))
       for n, f in NGRAM_TOP.items()},
    **{f"duplicate_{n}gram": ("repetition", dict(max_duplicate_ngram_chars_fraction={n: f}), "repetition",
                              dict(dup_n_grams=((n, f),))) for n, f in NGRAM_DUP.items()},
    "word_count": ("quality", dict(min_words=50, max_words=100_000), "quality", dict(min_doc_words=50, max_doc_words=100_000)),
    "mean_word_length": ("quality", dict(min_mean_word_length=3.0, max_mean_word_length=10.0), "quality",
                         dict(min_avg_word_length=3, max_avg_word_length=10)),
    "symbol_ratio": ("quality", dict(max_symbol_to_word_ratio=0.1), "quality", dict(max_symbol_word_ratio=0.1)),
    "bullet_lines": ("quality", dict(max_bullet_lines_fraction=0.9), "quality", dict(max_bullet_lines_ratio=0.9)),
    "ellipsis_lines": ("quality", dict(max_ellipsis_lines_fraction=0.3), "quality", dict(max_ellipsis_lines_ratio=0.3)),
    "alpha_words": ("quality", dict(min_alpha_words_fraction=0.8), "quality", dict(max_non_alpha_words_ratio=0.8)),
    "stop_words": ("quality", dict(min_stop_words=2), "quality", dict(min_stop_words=2)),
    "c4_lorem_ipsum": ("c4", dict(c4_drop_lorem_ipsum=True), "c4", dict(filter_lorem_ipsum=True)),
    "c4_curly_bracket": ("c4", dict(c4_drop_curly_bracket=True), "c4", dict(filter_curly_bracket=True)),
    "c4_lines_and_sentences": ("c4", dict(c4_line_rules=True, c4_min_sentences=5), "c4", dict(C4_LINES, min_num_sentences=5)),
}
ALPHA = "alpha_words"
WARM_UP = "warm up the spaCy pipeline with some text. It loads once."  # both sides judge it once, untimed

DATATROVE_SIDE = r"""
import json, sys, time
from datatrove.data import Document
from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
docs = [json.loads(line) for line in open(sys.argv[1])]
rules = json.loads(sys.argv[2])
OFF = {"repetition": json.loads(sys.argv[3]), "quality": json.loads(sys.argv[4]), "c4": json.loads(sys.argv[5])}
CLASSES = {"repetition": GopherRepetitionFilter, "quality": GopherQualityFilter, "c4": C4QualityFilter}

def verdict(filters, text):
    # the first filter that drops the document, as a pipeline runs them, and the text C4 keeps
    doc = Document(text=text, id="0")
    for name, f in filters:
        result = f.filter(doc)
        if result is not True:
            return f"{name}:{result[1] if isinstance(result, tuple) else 'dropped'}", doc.text
    return None, doc.text

def tuples(arguments):
    return {k: tuple(tuple(x) for x in v) if k in ("top_n_grams", "dup_n_grams") else v for k, v in arguments.items()}

web = [("repetition", GopherRepetitionFilter()), ("quality", GopherQualityFilter()), ("c4", C4QualityFilter())]
verdict(web, sys.argv[6])  # one-time set-up (spaCy's pipeline) aside, as on raylm's side
started = time.perf_counter()
overall = [verdict(web, d["text"]) for d in docs]
seconds = time.perf_counter() - started
if rules is None:  # a speed round only
    print(seconds)
    sys.exit()
per_rule = {}
for name, (family, arguments) in rules.items():
    f = CLASSES[family](**{**OFF[family], **tuples(arguments)})
    per_rule[name] = [verdict([(family, f)], d["text"])[0] for d in docs]
no_alpha = [verdict([("repetition", GopherRepetitionFilter()), ("quality", GopherQualityFilter(max_non_alpha_words_ratio=None)),
                     ("c4", C4QualityFilter())], d["text"])[0] for d in docs]
print(json.dumps({"overall": [r for r, _ in overall], "kept_text": [t for _, t in overall],
                  "per_rule": per_rule, "no_alpha": no_alpha}))
"""

RAYLM_SPEED = r"""
import json, sys, time
sys.path.insert(0, sys.argv[2])
from filters_vs_datatrove import WARM_UP, raylm_verdicts
from raylm.config import WebRules
docs = [json.loads(line) for line in open(sys.argv[1])]
raylm_verdicts([{"text": WARM_UP}], WebRules())  # as datatrove's side warms spaCy up: one-time set-up aside
started = time.perf_counter()
raylm_verdicts(docs, WebRules())
print(time.perf_counter() - started)
"""


def corpus(limit_per_kind: int) -> list[dict]:
    """(kind, name, text) documents from this machine and ../shared/data."""
    docs = []

    def add(kind: str, name: str, text: str) -> None:
        if text.strip():
            docs.append({"kind": kind, "name": name, "text": text})

    for split in ("valid", "test"):
        text = (SHARED / f"wikitext2-{split}.txt").read_text()
        articles = [a for a in re.split(r"\n(?= = [^=].* = \n)", text) if a.strip()]
        for i, article in enumerate(articles[: limit_per_kind // 2]):
            add("wikipedia article", f"wikitext2-{split}#{i}", article)
            sections = [s for s in re.split(r"\n(?= = = [^=].* = = \n)", article) if s.strip()]
            for j, section in enumerate(sections[1:3]):
                add("wikipedia section", f"wikitext2-{split}#{i}.{j}", section)
            paragraphs = [p for p in article.split("\n") if len(p.split()) > 30]
            if paragraphs:
                add("wikipedia paragraph", f"wikitext2-{split}#{i}.p", paragraphs[0])
    for path in sorted(Path("/usr/share/common-licenses").iterdir())[:limit_per_kind]:
        if path.is_file():
            add("licence", path.name, path.read_text(errors="replace"))
    for path in sorted(Path("/usr/share/doc").glob("*/copyright"))[:limit_per_kind]:
        add("debian copyright", path.parent.name, path.read_text(errors="replace"))
    for path in sorted(Path("/usr/share/man/man1").glob("*.1.gz"))[:limit_per_kind]:
        rendered = subprocess.run(["man", "-l", str(path)], capture_output=True, text=True,
                                  env={"MANWIDTH": "80", "MAN_KEEP_FORMATTING": "0", "PATH": "/usr/bin:/bin"})
        add("man page", path.name, subprocess.run(["col", "-b"], input=rendered.stdout, capture_output=True,
                                                  text=True).stdout)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py"))[:limit_per_kind]:
        add("python file", path.name, path.read_text(errors="replace"))
    cleaned = clean_texts(pa.array([d["text"] for d in docs]), CleanConfig()).to_pylist()
    return [{**d, "text": text} for d, text in zip(docs, cleaned)]


def raylm_verdicts(docs: list[dict], rules: WebRules, max_word_chars: int = 1000) -> list[tuple[str | None, str]]:
    config = FiltersConfig(profile="web", max_word_chars=max_word_chars, web=rules)
    results = [apply_quality_filters(d["text"], "record", config) for d in docs]
    return [(r.reason, r.text) for r in results]


def agreement(ours: list[bool], theirs: list[bool]) -> float:
    return sum(a == b for a, b in zip(ours, theirs)) / len(ours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", default="/tmp/raylm-datatrove", type=Path)
    parser.add_argument("--limit", default=300, type=int, help="Documents of each source kind at most.")
    parser.add_argument("--show", default=3, type=int, help="Disagreeing documents to name per cause.")
    parser.add_argument("--rounds", default=3, type=int, help="Speed rounds; each side's best counts.")
    args = parser.parse_args()
    python = benchmark_env(args.venv, DATATROVE)
    docs = corpus(args.limit)
    print(f"{len(docs)} documents: {dict(Counter(d['kind'] for d in docs))}")

    overall = raylm_verdicts(docs, WebRules())
    per_rule = {name: [r for r, _ in raylm_verdicts(docs, WebRules(**{**OFF, **overrides}), max_word_chars=0)]
                for name, (_, overrides, _, _) in RULES.items()}
    no_alpha = [r for r, _ in raylm_verdicts(docs, WebRules(min_alpha_words_fraction=0.0))]

    with tempfile.NamedTemporaryFile("w", suffix=".jsonl") as f:
        f.writelines(json.dumps({"text": d["text"]}) + "\n" for d in docs)
        f.flush()
        datatrove_side = [str(python), "-c", DATATROVE_SIDE, f.name]
        settings = [json.dumps(REPETITION_OFF), json.dumps(QUALITY_OFF), json.dumps(C4_OFF), WARM_UP]
        theirs = json.loads(sh(*datatrove_side, json.dumps({k: (v[2], v[3]) for k, v in RULES.items()}), *settings,
                               echo=False))
        rounds = [(float(sh(sys.executable, "-c", RAYLM_SPEED, f.name, str(ROOT / "benchmarks"), echo=False)),
                   float(sh(*datatrove_side, "null", *settings, echo=False))) for _ in range(args.rounds)]

    ours_drop = [r is not None for r, _ in overall]
    theirs_drop = [r is not None for r in theirs["overall"]]
    print(f"\noverall keep/drop agreement: {agreement(ours_drop, theirs_drop):.1%}; with the alphabetic-words rule set "
          f"aside on both sides: {agreement([r is not None for r in no_alpha], [r is not None for r in theirs['no_alpha']]):.1%}")
    both_kept = [i for i in range(len(docs)) if not ours_drop[i] and not theirs_drop[i]]
    same_text = sum(overall[i][1] == theirs["kept_text"][i] for i in both_kept)
    print(f"documents both keep: {len(both_kept)}, of which C4 left the same text on both sides: {same_text}")
    print("\nconfusion (rows raylm, columns datatrove):   keep   drop")
    for label, mine in (("keep", False), ("drop", True)):
        row = [sum(1 for a, b in zip(ours_drop, theirs_drop) if a == mine and b == their) for their in (False, True)]
        print(f"  raylm {label:4}                             {row[0]:6d} {row[1]:6d}")

    print("\nper rule, each alone on both sides (drops raylm / datatrove):")
    families: dict[str, list[float]] = {}
    for name, (family, *_) in RULES.items():
        mine, their = [r is not None for r in per_rule[name]], [r is not None for r in theirs["per_rule"][name]]
        share = agreement(mine, their)
        families.setdefault(family, []).append(share)
        aside = " (set aside: tokenisation)" if name == ALPHA else ""
        print(f"  {family:10} {name:26} {share:7.1%}   {sum(mine):5d} / {sum(their):5d}{aside}")
    for family, shares in families.items():
        print(f"  family {family:10} lowest rule agreement {min(shares):.1%}")

    causes = Counter((overall[i][0], theirs["overall"][i]) for i in range(len(docs)) if ours_drop[i] != theirs_drop[i])
    print("\ndisagreements by cause (raylm reason, datatrove reason): count, e.g.")
    for (mine, their), count in causes.most_common():
        examples = [f"{docs[i]['kind']}:{docs[i]['name']}" for i in range(len(docs))
                    if (overall[i][0], theirs["overall"][i]) == (mine, their)][: args.show]
        print(f"  {mine or 'kept'} / {their or 'kept'}: {count}  {', '.join(examples)}")
    raylm_seconds, datatrove_seconds = min(r for r, _ in rounds), min(d for _, d in rounds)
    print("\nspeed rounds (seconds, raylm / datatrove): " + ", ".join(f"{r:.2f} / {d:.1f}" for r, d in rounds))
    print(f"speed, the whole web profile, each side's best round: raylm {len(docs) / raylm_seconds:,.0f} docs/s, "
          f"datatrove {len(docs) / datatrove_seconds:,.0f} docs/s ({datatrove_seconds / raylm_seconds:.1f}x)")


if __name__ == "__main__":
    main()
