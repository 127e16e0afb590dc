"""Tiny randomly initialised BERT models for tests where model quality is not under test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def build_tiny_bert(directory: Path, extra_words: list[str] | None = None,
                    hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A tiny BERT with a real WordPiece tokenizer (see tests.support.tinymodel)."""
    from tests.support.tinymodel import make_tiny_bert

    return make_tiny_bert(directory, seed=seed, hidden=hidden, layers=layers,
                          extra_words=extra_words or ())


def write_adapter_file(path: Path, base_fingerprint: str | None, seed: int = 0) -> Path:
    """A small safetensors file shaped like an adapter artifact, with xlt metadata."""
    rng = np.random.default_rng(seed)
    tensors = {"lora.A": rng.standard_normal((4, 32)).astype(np.float32),
               "head.weight": rng.standard_normal((8, 32)).astype(np.float32)}
    meta = {"config": {"kind": "lora", "r": 4}}
    if base_fingerprint:
        meta["base_fingerprint"] = base_fingerprint
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"xlt": json.dumps(meta)})
    return path
