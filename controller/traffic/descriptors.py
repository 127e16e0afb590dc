"""Text descriptors that mean the same thing in every script.

Evidently's own text descriptors (OOV share, sentiment) are English-only and download NLTK
data, so a language's traffic is described here by: length in characters, word count,
share of non-letter characters, share of combining marks, and its **script mix** (which
share of its letters is Latin, Cyrillic, Devanagari, ...) plus the dominant script.

Latin is split in three buckets on purpose: plain ASCII letters, extended Latin (accented
letters, Vietnamese, Yoruba's dot-below vowels) and the IPA-derived letters (ɛ ɔ ɖ ...)
that many African orthographies use. A move from `yo` (ẹ ọ) to `yo-BJ` (ɛ ɔ) keeps the
script Latin but moves letters between the last two buckets, so an orthography change is
visible without the text itself (events may withhold text; descriptors are always kept).

Everything is vectorised: all texts are joined, turned into one array of code points, and
each code point is mapped through a lookup table built once per process; per-text counts
come from one `bincount`. 500,000 short texts take well under a second.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import pandas as pd

# (script, ranges of code points); letters and combining marks inside a range count for
# the script (Indic vowel signs are marks, so they must count). Order is the column order.
SCRIPT_RANGES: tuple[tuple[str, tuple[tuple[int, int], ...]], ...] = (
    ("latin", ((0x41, 0x5A), (0x61, 0x7A), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A))),
    ("latin_ext", ((0xC0, 0x24F), (0x1E00, 0x1EFF), (0x2C60, 0x2C7F), (0xA720, 0xA7FF),
                   (0xAB30, 0xAB6F))),
    ("latin_ipa", ((0x250, 0x2AF), (0x1D00, 0x1DBF))),
    ("greek", ((0x370, 0x3FF), (0x1F00, 0x1FFF))),
    ("cyrillic", ((0x400, 0x52F), (0x1C80, 0x1C8F), (0x2DE0, 0x2DFF), (0xA640, 0xA69F))),
    ("armenian", ((0x530, 0x58F),)),
    ("hebrew", ((0x590, 0x5FF),)),
    ("arabic", ((0x600, 0x6FF), (0x750, 0x77F), (0x8A0, 0x8FF), (0xFB50, 0xFDFF),
                (0xFE70, 0xFEFF))),
    ("devanagari", ((0x900, 0x97F), (0xA8E0, 0xA8FF))),
    ("bengali", ((0x980, 0x9FF),)),
    ("gurmukhi", ((0xA00, 0xA7F),)),
    ("gujarati", ((0xA80, 0xAFF),)),
    ("oriya", ((0xB00, 0xB7F),)),
    ("tamil", ((0xB80, 0xBFF),)),
    ("telugu", ((0xC00, 0xC7F),)),
    ("kannada", ((0xC80, 0xCFF),)),
    ("malayalam", ((0xD00, 0xD7F),)),
    ("sinhala", ((0xD80, 0xDFF),)),
    ("thai", ((0xE00, 0xE7F),)),
    ("lao", ((0xE80, 0xEFF),)),
    ("tibetan", ((0xF00, 0xFFF),)),
    ("myanmar", ((0x1000, 0x109F),)),
    ("georgian", ((0x10A0, 0x10FF), (0x2D00, 0x2D2F))),
    ("hangul", ((0x1100, 0x11FF), (0x3130, 0x318F), (0xAC00, 0xD7AF))),
    ("ethiopic", ((0x1200, 0x139F), (0x2D80, 0x2DDF), (0xAB00, 0xAB2F))),
    ("khmer", ((0x1780, 0x17FF),)),
    ("tifinagh", ((0x2D30, 0x2D7F),)),
    ("nko", ((0x7C0, 0x7FF),)),
    ("han", ((0x2E80, 0x2FDF), (0x3005, 0x3007), (0x3400, 0x4DBF), (0x4E00, 0x9FFF),
             (0xF900, 0xFAFF), (0x20000, 0x2FFFF))),
    ("hiragana", ((0x3040, 0x309F),)),
    ("katakana", ((0x30A0, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9F))),
)
SCRIPTS: tuple[str, ...] = tuple(name for name, _ in SCRIPT_RANGES) + ("other",)
SCRIPT_COLUMNS: tuple[str, ...] = tuple(f"script_{s}" for s in SCRIPTS)
NUMERIC_DESCRIPTORS: tuple[str, ...] = ("char_length", "word_count", "non_letter_share",
                                        "mark_share")
DOMINANT = "dominant_script"
NO_SCRIPT = "none"  # a text without a single letter (digits, punctuation, emoji only)
DESCRIPTOR_COLUMNS: tuple[str, ...] = NUMERIC_DESCRIPTORS + SCRIPT_COLUMNS + (DOMINANT,)

# classes in the lookup table: 0 whitespace, 1 other non-letter (digits, punctuation,
# symbols, emoji), 2 combining mark of no script (accents that ride on any letter),
# 3 + i the i-th script of SCRIPTS ("other" = a letter in no listed range)
_SPACE, _NONLETTER, _MARK, _FIRST_SCRIPT = 0, 1, 2, 3
N_CLASSES = _FIRST_SCRIPT + len(SCRIPTS)
_TABLE_SIZE = 0x30000  # BMP, SMP and the CJK extension planes; above maps to non-letter
_INHERITED_MARKS = ((0x300, 0x36F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF),
                    (0xFE20, 0xFE2F))


@lru_cache(maxsize=1)
def class_table() -> np.ndarray:
    """uint8 class of every code point below _TABLE_SIZE (built once, ~0.1 s)."""
    cats = [unicodedata.category(chr(cp)) for cp in range(_TABLE_SIZE)]
    first = np.frombuffer("".join(c[0] for c in cats).encode("ascii"), dtype=np.uint8)
    table = np.full(_TABLE_SIZE, _NONLETTER, dtype=np.uint8)
    is_letter = (first == ord("L")) | (first == ord("M"))
    table[is_letter] = _FIRST_SCRIPT + SCRIPTS.index("other")
    table[first == ord("Z")] = _SPACE
    for cp in (0x09, 0x0A, 0x0B, 0x0C, 0x0D):
        table[cp] = _SPACE
    for lo, hi in _INHERITED_MARKS:
        span = slice(lo, hi + 1)
        table[span] = np.where(first[span] == ord("M"), _MARK, table[span])
    for index, (_, ranges) in enumerate(SCRIPT_RANGES):
        for lo, hi in ranges:
            span = slice(lo, min(hi, _TABLE_SIZE - 1) + 1)
            table[span] = np.where(is_letter[span], _FIRST_SCRIPT + index, table[span])
    return table


def _codepoints(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """All code points of all texts, and each text's length; one encode for the lot."""
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    joined = "".join(texts)
    cps = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
    return cps, lengths


def class_counts(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, N_CLASSES) int counts of each character class per text (NFC first, so that
    a decomposed `o` + U+0323 counts like the precomposed `ọ`), plus the code points and
    each text's length (in code points, after NFC)."""
    texts = [unicodedata.normalize("NFC", t or "") for t in texts]
    n = len(texts)
    cps, lengths = _codepoints(texts)
    classes = class_table()[np.minimum(cps, _TABLE_SIZE - 1)].astype(np.int64)
    classes[cps >= _TABLE_SIZE] = _NONLETTER
    owner = np.repeat(np.arange(n, dtype=np.int64), lengths)
    flat = np.bincount(owner * N_CLASSES + classes, minlength=n * N_CLASSES)
    return flat.reshape(n, N_CLASSES), cps, lengths


def _word_counts(cps: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Words = runs of non-whitespace; a run starts where a non-space follows a space or the
    start of a text."""
    n = len(lengths)
    if cps.size == 0:
        return np.zeros(n, dtype=np.int64)
    space = class_table()[np.minimum(cps, _TABLE_SIZE - 1)] == _SPACE
    starts = np.zeros(cps.size, dtype=bool)
    starts[1:] = space[:-1]
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    starts[offsets[lengths > 0]] = True
    starts &= ~space
    owner = np.repeat(np.arange(n, dtype=np.int64), lengths)
    return np.bincount(owner[starts], minlength=n)


def describe(texts: Sequence[str]) -> pd.DataFrame:
    """One row per text: NUMERIC_DESCRIPTORS, one `script_<s>` share per script (shares of
    the text's letters; all zero for a text without letters) and `dominant_script`."""
    counts, cps, lengths = class_counts(texts)
    letters = counts[:, _FIRST_SCRIPT:]
    n_letters = letters.sum(axis=1)
    non_space = lengths - counts[:, _SPACE]
    # marks of no script (accents) are part of letters for "non-letter share"
    letterish = n_letters + counts[:, _MARK]
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = np.where(n_letters[:, None] > 0, letters / n_letters[:, None], 0.0)
        non_letter = np.where(non_space > 0, 1.0 - letterish / non_space, 0.0)
        marks = np.where(letterish > 0, counts[:, _MARK] / letterish, 0.0)
    # the Latin buckets are one script for "dominant": a Yoruba text is Latin either way
    script_names = np.array(SCRIPTS + (NO_SCRIPT,), dtype=object)
    merged = letters.copy()
    merged[:, 0] += merged[:, 1] + merged[:, 2]
    merged[:, 1:3] = 0
    dominant = np.where(n_letters > 0, merged.argmax(axis=1), len(SCRIPTS))
    frame = pd.DataFrame(shares, columns=list(SCRIPT_COLUMNS))
    frame.insert(0, "char_length", lengths.astype(np.float64))
    frame.insert(1, "word_count", _word_counts(cps, lengths).astype(np.float64))
    frame.insert(2, "non_letter_share", non_letter)
    frame.insert(3, "mark_share", marks)
    frame[DOMINANT] = script_names[dominant]
    return frame


def describe_one(text: str) -> dict[str, float | str]:
    """Descriptors of one text as a JSON-ready dict, for logging one inference event; zero
    script shares are left out (they are implied) to keep the stored row small."""
    row = describe([text]).iloc[0].to_dict()
    return {k: (v if isinstance(v, str) else float(v)) for k, v in row.items()
            if not (k.startswith("script_") and v == 0.0)}


def from_records(records: Sequence[dict[str, float | str]]) -> pd.DataFrame:
    """Rebuild the descriptor frame from stored `describe_one` dicts (missing shares = 0)."""
    frame = pd.DataFrame.from_records(list(records))
    for col in NUMERIC_DESCRIPTORS + SCRIPT_COLUMNS:
        frame[col] = frame[col].astype(np.float64).fillna(0.0) if col in frame else 0.0
    if DOMINANT not in frame:
        frame[DOMINANT] = NO_SCRIPT
    return frame[list(DESCRIPTOR_COLUMNS)]
