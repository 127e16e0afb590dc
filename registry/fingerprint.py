"""The compatibility fingerprint of a base encoder: sha256 of canonical JSON of exactly what
an adapter depends on (architecture sizes and the tokenizer's vocabulary)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from registry.errors import ArtifactError

FINGERPRINT_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                      "vocab_size")


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def vocabulary_hash(vocab: Mapping[str, int]) -> str:
    return hashlib.sha256(canonical_json(sorted(vocab.items(), key=lambda kv: kv[1]))).hexdigest()


def fingerprint_inputs(config: Mapping[str, Any], vocab: Mapping[str, int]) -> dict[str, Any]:
    missing = [f for f in FINGERPRINT_FIELDS if f not in config]
    if missing:
        raise ArtifactError(f"model config lacks {', '.join(missing)}",
                            "register a transformers encoder directory (config.json + tokenizer)")
    inputs = {f: config[f] for f in FINGERPRINT_FIELDS}
    inputs["tokenizer_vocab_sha256"] = vocabulary_hash(vocab)
    return inputs


def fingerprint_of(inputs: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(dict(inputs))).hexdigest()


def model_dir_fingerprint(model_dir: str | Path) -> tuple[str, dict[str, Any]]:
    """Fingerprint of a transformers model directory (config.json + its tokenizer)."""
    from transformers import AutoTokenizer  # heavy import, only where needed

    path = Path(model_dir)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ArtifactError(f"{path} has no config.json",
                            "point at a transformers model directory saved with save_pretrained")
    from registry.jsonsafe import loads

    config = loads(config_file.read_bytes(), str(config_file), max_bytes=10_000_000,
                   error=ArtifactError, hint="re-save the model")
    if not isinstance(config, dict):
        raise ArtifactError(f"{config_file} is not a JSON object", "re-save the model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # transformers raises many kinds for a missing tokenizer
        raise ArtifactError(f"cannot load the tokenizer in {path}: {exc}",
                            "save the tokenizer next to the model (tokenizer.save_pretrained)"
                            ) from exc
    inputs = fingerprint_inputs(config, tokenizer.get_vocab())
    return fingerprint_of(inputs), inputs


def loaded_model_fingerprint(model: Any, tokenizer: Any) -> str:
    """Fingerprint of an in-memory model and tokenizer, for the check at load time."""
    return fingerprint_of(fingerprint_inputs(model.config.to_dict(), tokenizer.get_vocab()))
