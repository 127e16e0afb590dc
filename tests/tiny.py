"""Tiny randomly initialised BERT models for tests where model quality is not under test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

BASE_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# a small English word list, enough for a WordPiece vocabulary that tokenizes test text
WORDS = ("face smile grin heart red blue cat dog tree flag car house sun moon star fire "  # noqa: SIM905
         "water food cake hand thumbs up down happy sad angry love the a of and").split()


def build_tiny_bert(directory: Path, extra_words: list[str] | None = None,
                    hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Write config, WordPiece vocab and safetensors weights of a tiny BERT to `directory`."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = BASE_TOKENS + WORDS + (extra_words or []) + letters + [f"##{c}" for c in letters]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(str(directory))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=hidden * 2,
                        max_position_embeddings=64)
    BertModel(config).save_pretrained(str(directory), safe_serialization=True)
    return directory


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
