"""The compatibility fingerprint is computed from a real transformers directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry.errors import ArtifactError
from registry.fingerprint import loaded_model_fingerprint, model_dir_fingerprint


def test_fingerprint_stable_and_sensitive(tiny_model_dir: Path, tiny_model_dir_v2: Path) -> None:
    fp1, inputs = model_dir_fingerprint(tiny_model_dir)
    assert fp1 == model_dir_fingerprint(tiny_model_dir)[0]
    assert inputs["model_type"] == "bert" and inputs["hidden_size"] == 32
    assert model_dir_fingerprint(tiny_model_dir_v2)[0] != fp1  # one vocabulary word more


def test_loaded_model_matches_directory(tiny_model_dir: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(tiny_model_dir))
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert loaded_model_fingerprint(model, tok) == model_dir_fingerprint(tiny_model_dir)[0]


def test_not_a_model_directory(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no config.json"):
        model_dir_fingerprint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ArtifactError):
        model_dir_fingerprint(tmp_path)
