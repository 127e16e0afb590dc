"""Weights files checked by content, not by name: the safetensors layout read and validated
in pure Python before anything else touches the file (no torch, no numpy).

A safetensors file is an 8-byte little-endian header length N, a JSON header of N bytes,
then one data region. The header maps tensor names to {dtype, shape, data_offsets} (plus
an optional "__metadata__" of strings). Checked here: N within the file and below a bound,
the header a JSON object, every dtype known, every shape a list of non-negative integers,
every tensor's byte span equal to its element count times its dtype's size, and the spans
tiling the data region exactly (no gap, no overlap, nothing outside the file) -- the same
rules the safetensors library enforces, reported as one ArtifactError naming the file.
Then the tensors are compared with what the adapter's recorded config says they are.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry import jsonsafe
from registry.errors import ArtifactError, InvalidInput

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
MAX_METADATA_BYTES = 1_000_000  # an adapter's xlt metadata is a few kB
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
               "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
               "I64": 8, "U64": 8, "F64": 8, "C64": 8}
HINT = "save the weights with safetensors (save_pretrained(..., safe_serialization=True))"


@dataclass
class WeightsHeader:
    tensors: dict[str, tuple[str, list[int]]] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


def _refuse(name: str, why: str) -> ArtifactError:
    return ArtifactError(f"{name} is not a safetensors file ({why})", HINT)


def read_header(path: Path, name: str | None = None) -> WeightsHeader:
    """Parse and validate the safetensors layout of `path`; ArtifactError if anything is off."""
    name = name or path.name
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            if len(head) != 8:
                raise _refuse(name, f"{size} bytes, shorter than the 8-byte header length")
            n = int.from_bytes(head, "little")
            if n < 2 or n > MAX_HEADER_BYTES or 8 + n > size:
                raise _refuse(name, f"header length {n} does not fit a {size}-byte file")
            raw = fh.read(n)
    except OSError as exc:
        raise ArtifactError(f"cannot read {name}: {exc.strerror or exc}", "check the file") \
            from exc
    try:
        header = jsonsafe.loads(raw, "header", max_bytes=MAX_HEADER_BYTES)
    except InvalidInput as exc:  # not JSON, or a nesting bomb
        raise _refuse(name, f"its {exc.message}") from exc
    if not isinstance(header, dict):
        raise _refuse(name, "its header is not a JSON object")
    out = WeightsHeader()
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in meta.items()):
        raise _refuse(name, "__metadata__ is not a map of strings")
    out.metadata = meta
    spans = []
    for tensor, info in header.items():
        if not isinstance(info, dict):
            raise _refuse(name, f"tensor {tensor!r} has no dtype/shape/offsets")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPE_BYTES:
            raise _refuse(name, f"tensor {tensor!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise _refuse(name, f"tensor {tensor!r} has a bad shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise _refuse(name, f"tensor {tensor!r} has bad data offsets {offsets!r}")
        if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise _refuse(name, f"tensor {tensor!r}: {offsets[1] - offsets[0]} bytes for "
                                f"shape {shape} of {dtype}")
        spans.append((offsets[0], offsets[1], tensor))
        out.tensors[tensor] = (dtype, shape)
    data_len, end = size - 8 - n, 0
    for begin, stop, tensor in sorted(spans):
        if begin != end:
            raise _refuse(name, f"tensor {tensor!r} starts at byte {begin}, expected {end} "
                                "(a gap or an overlap in the data)")
        end = stop
    if end != data_len:
        raise _refuse(name, f"the tensors cover {end} data bytes, the file holds {data_len} "
                            "(truncated or padded)")
    return out


def xlt_metadata(header: WeightsHeader, name: str) -> dict[str, Any]:
    """The adapter's JSON under the metadata key `xlt` ({} when absent)."""
    raw = header.metadata.get("xlt")
    if raw is None:
        return {}
    try:
        meta = jsonsafe.loads(raw, f"{name}'s xlt metadata", max_bytes=MAX_METADATA_BYTES)
    except InvalidInput as exc:
        raise ArtifactError(f"{name} has unreadable xlt metadata ({exc.message})",
                            "re-save the adapter") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("config", {}), dict):
        raise ArtifactError(f"{name} has malformed xlt metadata", "re-save the adapter")
    return meta


def check_adapter_shapes(header: WeightsHeader, config: dict[str, Any], name: str) -> None:
    """The tensors are what the recorded config says: head [labels, hidden] and [labels],
    LoRA A [r, in] and B [out, r]. Fields the config does not record are not checked."""
    def fail(what: str) -> ArtifactError:
        return ArtifactError(f"{name}: {what}", "the file does not match its recorded config; "
                             "re-save the adapter")

    head_shape = config.get("head_shape")
    if head_shape is not None:
        if (not isinstance(head_shape, list) or len(head_shape) != 2
                or not all(isinstance(d, int) for d in head_shape)):
            raise fail(f"recorded head_shape {head_shape!r} is not [hidden, labels]")
        hidden, labels = head_shape
        expect = {"head.weight": [labels, hidden], "head.bias": [labels]}
        for key, shape in expect.items():
            got = header.tensors.get(key)
            if got is None:
                raise fail(f"tensor {key} is missing")
            if got[1] != shape:
                raise fail(f"tensor {key} has shape {got[1]}, the config says {shape}")
        if "num_labels" in config and config["num_labels"] != labels:
            raise fail(f"num_labels {config['num_labels']} but the head has {labels} outputs")
    _check_lexical(header, config, fail, name)
    rank = config.get("r")
    if isinstance(rank, int):
        for key, (_, shape) in header.tensors.items():
            if ".lora_A." in key and (len(shape) != 2 or shape[0] != rank):
                raise fail(f"tensor {key} has shape {shape}, rank r={rank} needs [{rank}, in]")
            if ".lora_B." in key and (len(shape) != 2 or shape[1] != rank):
                raise fail(f"tensor {key} has shape {shape}, rank r={rank} needs [out, {rank}]")


# the features a lexical half is written with (controller.training.lexical); a reader
# refuses any other, since the same ids would mean other n-grams
LEXICAL_FORMAT = "tfidf-char2-5-word1-2-blake2b-v1"


def _check_lexical(header: WeightsHeader, config: dict[str, Any], fail: Any,
                   name: str) -> None:
    """A lexical half (controller.training.lexical) is all four tensors, as many n-grams as
    the config records, one weight column per label; or none of them."""
    lexical = config.get("lexical")
    present = [k for k in header.tensors if k.startswith("head.lexical.")]
    if lexical is None:
        if present:
            raise fail(f"tensor {present[0]} is present, but the config records no lexical "
                       "head")
        return
    if isinstance(lexical, dict) and lexical.get("format") != LEXICAL_FORMAT:
        raise ArtifactError(f"{name}: its lexical head has features "
                            f"{lexical.get('format')!r}, this xlt reads {LEXICAL_FORMAT!r}",
                            "serve it with the xlt version that trained it, or retrain it")
    ngrams = lexical.get("ngrams") if isinstance(lexical, dict) else None
    labels = config.get("num_labels")
    if not isinstance(ngrams, int) or isinstance(ngrams, bool) or ngrams < 0 \
            or not isinstance(labels, int):
        raise fail(f"recorded lexical {lexical!r} has no n-gram count, or num_labels is "
                   "missing")
    expect = {"head.lexical.ids": ("I64", [ngrams]), "head.lexical.idf": ("F32", [ngrams]),
              "head.lexical.weight": ("F32", [ngrams, labels]),
              "head.lexical.bias": ("F32", [labels])}
    stray = sorted(set(present) - set(expect))
    if stray:
        raise fail(f"tensor {stray[0]} is not part of a lexical head")
    for key, (dtype, shape) in expect.items():
        got = header.tensors.get(key)
        if got is None:
            raise fail(f"tensor {key} is missing")
        if got != (dtype, shape):
            raise fail(f"tensor {key} is {got[0]} {got[1]}, the config says {dtype} {shape}")


def check_encoder_shapes(header: WeightsHeader, model_config: dict[str, Any],
                         name: str) -> None:
    """The word embeddings match config.json's vocab_size x hidden_size."""
    vocab, hidden = model_config.get("vocab_size"), model_config.get("hidden_size")
    if not isinstance(vocab, int) or not isinstance(hidden, int):
        return
    for key, (_, shape) in header.tensors.items():
        if key.endswith("word_embeddings.weight") and shape != [vocab, hidden]:
            raise ArtifactError(f"{name}: {key} has shape {shape}, config.json says "
                                f"[{vocab}, {hidden}]", "the weights and config.json do not "
                                "belong together")
