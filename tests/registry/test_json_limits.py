"""Nesting and size bombs in any JSON (or TOML) xlt parses from a user are refusals with
exit 2 and nothing stored, never an internal error: safetensors headers, an adapter's xlt
metadata, an encoder's config.json, --config/--metrics files, the policy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from registry.errors import ArtifactError, InvalidInput, UnsafeInput
from registry.jsonsafe import loads
from tests.registry.test_artifact_refusals import refused, snapshot
from tests.support.tiny import write_adapter_file

DEEP = 200_000


def bomb(depth: int = DEEP) -> str:
    return "[" * depth + "]" * depth


def test_loads_refuses_bombs_and_accepts_json() -> None:
    with pytest.raises(InvalidInput, match="nests deeper than 64 levels"):
        loads(bomb(), "x", max_bytes=10 * DEEP)
    with pytest.raises(InvalidInput, match="nests deeper than 64 levels"):
        loads(bomb(100), "x", max_bytes=10_000)  # parses, but deeper than the limit
    with pytest.raises(InvalidInput, match="more than the 10 xlt reads"):
        loads("[1, 2, 3, 4, 5]", "x", max_bytes=10)
    assert loads(bomb(64), "x", max_bytes=10_000) is not None
    assert loads('{"a": [1, {"b": 2}]}', "x", max_bytes=100) == {"a": [1, {"b": 2}]}


@pytest.fixture
def world(registry: Any, tiny_model_dir: Path) -> Any:
    registry.init()
    registry.fingerprint = registry.register_encoder("tiny", "1", tiny_model_dir).fingerprint
    return registry


def _header_file(path: Path, header: bytes) -> Path:
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    return path


def test_safetensors_header_bomb_refused(world: Any, tmp_path: Path) -> None:
    bad = _header_file(tmp_path / "deep.safetensors", bomb().encode())
    refused(world, ArtifactError, "is not a safetensors file .*nests deeper",
            lambda: world.register_adapter(task="emoji-group", language="sw", base="tiny@1",
                                           weights=bad))


def test_xlt_metadata_bomb_refused(world: Any, tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "meta.safetensors"
    save_file({"head.bias": np.zeros(8, np.float32)}, str(path),
              metadata={"xlt": bomb(5000)})
    refused(world, ArtifactError, "unreadable xlt metadata .*nests deeper",
            lambda: world.register_adapter(task="emoji-group", language="sw", base="tiny@1",
                                           weights=path))


def test_encoder_config_bomb_refused(world: Any, tmp_path: Path, tiny_model_dir: Path) -> None:
    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir, d)
    (d / "config.json").write_text('{"a": ' + bomb() + "}")
    refused(world, ArtifactError, "config.json nests deeper",
            lambda: world.register_encoder("tiny", "2", d))


def test_cli_config_and_metrics_bombs_exit_2(world: Any, tmp_path: Path) -> None:
    from controller.cli import cli

    weights = write_adapter_file(tmp_path / "a.safetensors", world.fingerprint)
    deep = tmp_path / "deep.json"
    deep.write_text('{"a": ' + bomb() + "}")
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"a": "x" * 2_000_000}))
    before = snapshot(world)
    for flag, path, words in (("--config", deep, "nests deeper than 64 levels"),
                              ("--metrics", big, "more than the 1000000 xlt reads")):
        result = CliRunner().invoke(cli, [
            "--home", str(world.settings.home), "--db", world.db.url, "adapter", "register",
            "--task", "emoji-group", "--lang", "sw", "--base", "tiny@1", "--weights",
            str(weights), flag, str(path)])
        assert result.exit_code == 2, result.output
        assert words in result.output and "internal error" not in result.output
        assert result.output.count("\n") == 1
    assert snapshot(world) == before


@pytest.mark.parametrize("text,words", [
    ("x = " + "[" * 5000 + "]" * 5000 + "\n", "nests too deep"),
    ("x = " + "[" * 100 + "]" * 100 + "\n", "nests deeper than 64"),
    ("# " + "x" * 1_100_000 + "\n", "more than the 1000000"),
])
def test_policy_bombs_refused(text: str, words: str) -> None:
    from controller.policy import parse_policy

    with pytest.raises(UnsafeInput, match=words):
        parse_policy(text)
