"""A `tokenizers` Unigram tokenizer.json reproducing e5.c's tokenizer exactly.

e5.c: map every codepoint through the file's normalisation map (idempotent: no output
contains a mapped codepoint), collapse runs of spaces, prepend U+2581 unless the text starts
with a space, turn spaces into U+2581, then one Viterbi pass over the whole string (no
splitting on whitespace) with unknown single characters scored min(score) - 10.

Here: the map is applied by a `Precompiled` normaliser (a darts-clone double array, the
format SentencePiece models ship; built with the `dartsclone` package) for codepoints of 3
and 4 UTF-8 bytes, and by `Replace` regexes for those of 1 and 2 bytes. The split exists
because tokenizers applies a Precompiled map per grapheme cluster when the cluster is
shorter than 6 bytes, and then maps only its first codepoint: a 1- or 2-byte mapped
codepoint (controls, NBSP, spacing diacritics) followed by a combining mark would lose
the mark. With the short codepoints handled by Replace the only remaining case is a mapped
3-byte codepoint (e.g. a full-width letter) directly followed by a 2-byte combining mark
(U+0300-U+07FF), which no shipped locale contains (the parity test checks all of them).
Then `Replace(" {2,}", " ")`, a Metaspace pre-tokenizer with prepend_scheme "always" and
split=False (whole-string Viterbi, as e5.c), and `<s> $A </s>` around every text.
"""

from __future__ import annotations

import struct
from collections import defaultdict

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from controller.encoders.e5file import E5File

METASPACE = "\u2581"
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


def precompiled_charsmap(entries: dict[int, tuple[int, ...]]) -> bytes:
    """SentencePiece's precompiled_charsmap: u32 trie size, darts-clone units, then the
    NUL-terminated replacement strings the trie's values point into."""
    import dartsclone  # conversion-time only

    items = sorted((chr(cp).encode(), "".join(map(chr, out)).encode())
                   for cp, out in entries.items())
    blob = bytearray()
    values = []
    for _, out in items:
        values.append(len(blob))
        blob += out + b"\0"
    trie = dartsclone.DoubleArray()
    trie.build([k for k, _ in items], values=values)
    units = bytes(trie.array())
    return struct.pack("<I", len(units)) + units + bytes(blob)


def _char_class(cps: list[int]) -> str:
    return "[" + "".join(f"\\x{{{cp:X}}}" for cp in sorted(cps)) + "]"


def build_normalizer(norm_map: dict[int, tuple[int, ...]]) -> normalizers.Normalizer:
    short: dict[str, list[int]] = defaultdict(list)
    long: dict[int, tuple[int, ...]] = {}
    for cp, out in norm_map.items():
        if len(chr(cp).encode()) <= 2:
            short["".join(map(chr, out))].append(cp)
        else:
            long[cp] = out
    steps: list[normalizers.Normalizer] = [
        normalizers.Replace(Regex(_char_class(cps)), out) for out, cps in sorted(short.items())]
    if long:
        steps.append(normalizers.Precompiled(precompiled_charsmap(long)))
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    return normalizers.Sequence(steps)


def build_tokenizer(f: E5File) -> Tokenizer:
    vocab = [(p, float(s)) for p, s in zip(f.pieces, f.scores, strict=True)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=f.unk, byte_fallback=False))
    tok.normalizer = build_normalizer(f.norm_map)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE,
                                                 prepend_scheme="always", split=False)
    tok.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always",
                                     split=False)
    bos, eos = f.pieces[f.bos], f.pieces[f.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, f.bos), (eos, f.eos)])
    tok.add_special_tokens([p for p in SPECIALS if p in set(f.pieces[:4] + f.pieces[-1:])])
    return tok


def tokenizer_config(f: E5File, max_length: int) -> dict[str, object]:
    """tokenizer_config.json for transformers' generic fast tokenizer (it loads
    tokenizer.json as written, so nothing is re-derived from a vocabulary)."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
            "bos_token": f.pieces[f.bos], "eos_token": f.pieces[f.eos],
            "cls_token": f.pieces[f.bos], "sep_token": f.pieces[f.eos],
            "pad_token": f.pieces[f.pad], "unk_token": f.pieces[f.unk],
            "mask_token": "<mask>" if "<mask>" in f.pieces[-1:] else None,
            "padding_side": "right", "truncation_side": "right"}
