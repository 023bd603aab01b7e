"""A small rule-based sentence splitter for ``--split-sentences``.

Megatron-LM splits with NLTK's punkt model, whose data files NLTK downloads from its own
servers (the PyPI ``nltk`` package and Debian's ``python3-nltk`` ship none), so this package
uses its own rules, which need nothing offline:

- a sentence ends after ``.``, ``!`` or ``?`` (a run of them, like ``?!`` or ``...``), plus any
  closing quotes or brackets, when whitespace follows and the next word starts with an
  uppercase letter, a digit, or an opening quote or bracket;
- not after a known abbreviation (``Mr.``, ``Dr.``, ``e.g.``, ``etc.``, ``U.S.`` ...) or a
  single-letter initial (``J. Smith``);
- a blank line (paragraph break) always ends a sentence.

Sentences are substrings of the text. The whitespace between two sentences is dropped, except
that with ``keep_newlines`` its line breaks stay at the end of the earlier sentence (so joining
the sentences gives the text with only the spaces around sentence breaks removed), as
Megatron-LM's ``--keep-newlines`` does. The rules are for English-like text; for other scripts a
document is split at blank lines and Latin-style punctuation only.
"""

import re
from typing import List

_ABBREVIATIONS = frozenset("""
mr mrs ms dr prof sr jr st mt vs etc al fig figs eq eqs no nos vol vols pp ed eds inc ltd co
corp dept univ approx ca cf e.g i.e a.m p.m u.s u.k u.n jan feb mar apr jun jul aug sep sept
oct nov dec gen col lt sgt capt cmdr rev hon est op
""".split())

# A candidate break: terminal punctuation, closers, then whitespace; group "gap" is the
# whitespace. The next character is checked separately.
_BREAK = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?P<gap>\s+)")
_PARAGRAPH = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_SENTENCE_START = re.compile(r"[\"'\u201c\u2018(\[]*[A-Z0-9\u00c0-\u00de]")
_WORD_BEFORE = re.compile(r"(\S+)$")


def split_sentences(text: str, keep_newlines: bool = False) -> List[str]:
    """The sentences of ``text`` (see the module docstring); all-whitespace pieces are
    dropped."""
    sentences: List[str] = []
    for start, end, gap in _sentence_spans(text):
        piece = text[start:end].strip()
        if not piece:
            continue
        if keep_newlines:
            piece += "\n" * gap.count("\n")
        sentences.append(piece)
    return sentences


def _sentence_spans(text: str):
    """(start, end, gap) of every sentence: ``text[start:end]`` is the sentence, maybe with
    surrounding whitespace, and ``gap`` the whitespace after it (up to the next sentence or the
    end of the text)."""
    cuts = []  # (end of a sentence, start of the next)
    for match in _BREAK.finditer(text):
        gap_start, gap_end = match.span("gap")
        if _SENTENCE_START.match(text, gap_end) and not _is_abbreviation(text, match.start()):
            cuts.append((gap_start, gap_end))
    cuts.extend(match.span() for match in _PARAGRAPH.finditer(text))
    start = 0
    for end, next_start in _merged(sorted(cuts)):
        yield start, end, text[end:next_start]
        start = next_start
    yield start, len(text), text[len(text.rstrip()):]


def _merged(cuts):
    merged = []
    for start, end in cuts:
        if merged and start <= merged[-1][1]:
            merged[-1] = (min(merged[-1][0], start), max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _is_abbreviation(text: str, dot: int) -> bool:
    """Whether the punctuation at ``dot`` ends an abbreviation or an initial, not a sentence."""
    if text[dot] != ".":
        return False
    match = _WORD_BEFORE.search(text, 0, dot)
    if match is None:
        return False
    word = match.group(1).lstrip("\"'(\u201c\u2018[")
    if len(word) == 1 and word.isalpha():
        return True  # an initial: "J. Smith"
    return word.lower() in _ABBREVIATIONS
