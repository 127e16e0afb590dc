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


def adapter_tensors(rng: np.random.Generator, hidden: int = 32, layers: int = 2,
                    rank: int = 4, labels: int = 8,
                    targets: tuple[str, ...] = ("query", "value")) -> dict[str, np.ndarray]:
    """LoRA pairs (peft's names, under `lora.`) on the attention projections of a tiny BERT
    (tests.tinymodel) and a head: what controller.training.artifact.load_adapter needs."""
    tensors = {}
    for layer in range(layers):
        for target in targets:
            module = f"lora.base_model.model.encoder.layer.{layer}.attention.self.{target}"
            tensors[f"{module}.lora_A.weight"] = rng.standard_normal((rank, hidden)).astype(
                np.float32)
            tensors[f"{module}.lora_B.weight"] = np.zeros((hidden, rank), np.float32)
    tensors["head.weight"] = rng.standard_normal((labels, hidden)).astype(np.float32)
    tensors["head.bias"] = np.zeros(labels, np.float32)
    return tensors


EMOJI_LABELS = ("Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink",
                "Travel & Places", "Activities", "Objects", "Symbols")


def adapter_config(hidden: int = 32, rank: int = 4, labels: int = 8,
                   targets: tuple[str, ...] = ("query", "value")) -> dict:
    return {"kind": "lora", "r": rank, "alpha": 2 * rank, "dropout": 0.0,
            "target_modules": sorted(targets), "layers_to_transform": None,
            "head_shape": [hidden, labels], "num_labels": labels,
            # 8 outputs: the demo task's labels (a registered emoji-group task checks them)
            "labels": list(EMOJI_LABELS) if labels == len(EMOJI_LABELS)
            else [f"label{i}" for i in range(labels)]}


def write_adapter_file(path: Path, base_fingerprint: str | None, seed: int = 0) -> Path:
    """A small adapter file for the tiny BERT (hidden 32, 2 layers) with xlt metadata, as
    save_adapter writes it: loadable on that base (registering proves it)."""
    rng = np.random.default_rng(seed)
    meta: dict = {"format": 1, "config": adapter_config()}
    if base_fingerprint:
        meta["base_fingerprint"] = base_fingerprint
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(adapter_tensors(rng), str(path), metadata={"xlt": json.dumps(meta)})
    return path
