"""Artifacts are judged by content, not by name, and links are never followed. Every
refusal is a domain error with a clear message and leaves nothing behind: no blob in the
store, no row in the database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file
from sqlalchemy import func, select

from registry.errors import ArtifactError, IncompatibleAdapter
from registry.schema import Adapter, BaseEncoder, Event, OutboxMessage, Track
from registry.weights import read_header
from tests.support.tiny import write_adapter_file

TASK = "emoji-group"


@pytest.fixture
def world(registry: Any, tiny_model_dir: Path, tmp_path: Path) -> Any:
    registry.init()
    enc = registry.register_encoder("tiny", "1", tiny_model_dir)
    registry.fingerprint = enc.fingerprint
    return registry


def snapshot(reg: Any) -> dict[str, Any]:
    """Every file in the artifact store and the row count of every table a register writes."""
    root = Path(reg.settings.artifacts_dir)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    with reg.reading() as s:
        rows = {m.__name__: s.scalar(select(func.count()).select_from(m))
                for m in (Adapter, BaseEncoder, Event, OutboxMessage, Track)}
    return {"files": files, "rows": rows}


def refused(reg: Any, error: type[Exception], match: str, fn: Any) -> str:
    before = snapshot(reg)
    with pytest.raises(error, match=match) as info:
        fn()
    assert snapshot(reg) == before, "a refusal left something behind"
    return str(info.value)


def register(reg: Any, weights: Path) -> Any:
    return reg.register_adapter(task=TASK, language="sw", base="tiny@1", weights=weights)


def test_upper_case_suffix_is_checked_like_any_other(world: Any, tmp_path: Path) -> None:
    other = "0" * 64  # another base's fingerprint
    bad = write_adapter_file(tmp_path / "x.SAFETENSORS", other)
    msg = refused(world, IncompatibleAdapter, "was trained on base fingerprint 000000000000",
                  lambda: register(world, bad))
    assert "x.SAFETENSORS" in msg and world.fingerprint[:12] in msg  # names both sides
    # the suffix is irrelevant either way: a good file with an odd name is accepted
    for name in ("good.SAFETENSORS", "weights", "adapter.bin.safetensors"):
        good = write_adapter_file(tmp_path / name, world.fingerprint, seed=len(name))
        assert register(world, good).artifact_sha256


def test_wrong_or_missing_fingerprint_refused(world: Any, tmp_path: Path) -> None:
    wrong = write_adapter_file(tmp_path / "wrong.safetensors", "f" * 64)
    refused(world, IncompatibleAdapter, "trained on base fingerprint ffffffffffff",
            lambda: register(world, wrong))
    none = write_adapter_file(tmp_path / "none", None)  # no suffix, no fingerprint
    refused(world, IncompatibleAdapter, "records no base fingerprint",
            lambda: register(world, none))


def _valid_bytes(tmp_path: Path, fp: str) -> bytes:
    return write_adapter_file(tmp_path / "valid.safetensors", fp).read_bytes()


@pytest.mark.parametrize("damage", ["header_cut", "data_cut", "huge_length", "not_json",
                                    "bad_dtype", "offsets_overlap", "pickle_content"])
def test_damaged_file_refused_by_content(world: Any, tmp_path: Path, damage: str) -> None:
    raw = _valid_bytes(tmp_path, world.fingerprint)
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    if damage == "header_cut":
        data = raw[:8 + n // 2]
    elif damage == "data_cut":
        data = raw[:-7]
    elif damage == "huge_length":
        data = (10**12).to_bytes(8, "little") + raw[8:]
    elif damage == "not_json":
        data = raw[:8] + b"\xff" * n + raw[8 + n:]
    else:
        lora_a = next(k for k in header if k.endswith(".lora_A.weight"))
        if damage == "bad_dtype":
            header[lora_a]["dtype"] = "OBJECT"
        elif damage == "offsets_overlap":
            header["head.weight"]["data_offsets"] = header[lora_a]["data_offsets"]
        if damage == "pickle_content":
            data = b"\x80\x04\x95" + b"\x00" * 64
        else:
            body = json.dumps(header).encode()
            data = len(body).to_bytes(8, "little") + body + raw[8 + n:]
    bad = tmp_path / "damaged.safetensors"
    bad.write_bytes(data)
    refused(world, ArtifactError, "is not a safetensors file", lambda: register(world, bad))


def test_shapes_checked_against_the_recorded_config(world: Any, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    meta = {"base_fingerprint": world.fingerprint,
            "config": {"kind": "lora", "r": 4, "head_shape": [32, 8], "num_labels": 8}}
    tensors = {"lora.m.lora_A.weight": rng.standard_normal((4, 32)).astype(np.float32),
               "head.weight": rng.standard_normal((8, 16)).astype(np.float32),  # not 32
               "head.bias": rng.standard_normal(8).astype(np.float32)}
    path = tmp_path / "shape.safetensors"
    save_file(tensors, str(path), metadata={"xlt": json.dumps(meta)})
    refused(world, ArtifactError, r"head.weight has shape \[8, 16\], the config says \[8, 32\]",
            lambda: register(world, path))
    tensors["head.weight"] = rng.standard_normal((8, 32)).astype(np.float32)
    tensors["lora.m.lora_A.weight"] = rng.standard_normal((2, 32)).astype(np.float32)
    save_file(tensors, str(path), metadata={"xlt": json.dumps(meta)})
    refused(world, ArtifactError, "rank r=4", lambda: register(world, path))


def test_symlinked_weights_file_refused(world: Any, tmp_path: Path) -> None:
    real = write_adapter_file(tmp_path / "elsewhere" / "real.safetensors", world.fingerprint)
    link = tmp_path / "link.safetensors"
    link.symlink_to(real)
    msg = refused(world, ArtifactError, "is a symbolic link", lambda: register(world, link))
    assert str(link) in msg


def _model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir, d)
    return d


@pytest.mark.parametrize("where", ["file_outside", "dir_outside", "weights_link",
                                   "hidden_dir_link"])
def test_encoder_directory_with_a_link_refused(world: Any, tmp_path: Path,
                                                tiny_model_dir: Path, where: str) -> None:
    d = _model_copy(tiny_model_dir, tmp_path)
    if where == "file_outside":
        link = d / "notes.txt"
        link.symlink_to("/etc/passwd")
    elif where == "dir_outside":
        link = d / "extra"
        link.symlink_to("/etc", target_is_directory=True)
    elif where == "weights_link":
        weights = d / "model.safetensors"
        moved = tmp_path / "moved.safetensors"
        weights.rename(moved)
        link = weights
        link.symlink_to(moved)
    else:
        (d / ".cache").mkdir()
        link = d / ".cache" / "passwd"
        link.symlink_to("/etc/passwd")
    msg = refused(world, ArtifactError, "is a symbolic link",
                  lambda: world.register_encoder("tiny", "2", d))
    assert str(link) in msg
    blobs = Path(world.settings.artifacts_dir) / "blobs"
    assert not any(b"root:" in p.read_bytes() for p in blobs.rglob("*") if p.is_file())


def test_encoder_weights_checked_against_config(world: Any, tmp_path: Path,
                                                tiny_model_dir: Path) -> None:
    d = _model_copy(tiny_model_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    header = read_header(d / "model.safetensors")
    emb = next(k for k in header.tensors if k.endswith("word_embeddings.weight"))
    assert header.tensors[emb][1] == [cfg["vocab_size"], cfg["hidden_size"]]
    cfg["hidden_size"] += 1  # config.json no longer describes these weights
    (d / "config.json").write_text(json.dumps(cfg))
    refused(world, ArtifactError, "config.json says",
            lambda: world.register_encoder("tiny", "2", d))


def test_load_refuses_malformed_adapter_with_a_domain_error(world: Any, tmp_path: Path) -> None:
    """At load (controller.training.artifact), a damaged file is an ArtifactError, never the
    safetensors library's own SafetensorError."""
    from controller.training.artifact import read_adapter

    raw = _valid_bytes(tmp_path, world.fingerprint)
    for name, data in (("cut.SAFETENSORS", raw[:-3]), ("junk", os.urandom(64)),
                       ("empty.safetensors", b"")):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ArtifactError, match="is not a safetensors file"):
            read_adapter(path)
    upper = tmp_path / "fine.SAFETENSORS"
    upper.write_bytes(raw)
    meta, lora, head = read_adapter(upper)
    assert meta["base_fingerprint"] == world.fingerprint and "weight" in head
    assert any(k.endswith(".lora_A.weight") for k in lora)


def test_cli_refuses_upper_case_suffix_with_wrong_fingerprint(world: Any, tmp_path: Path
                                                              ) -> None:
    from click.testing import CliRunner

    from controller.cli import cli

    bad = write_adapter_file(tmp_path / "x.SAFETENSORS", "1" * 64)
    before = snapshot(world)
    result = CliRunner().invoke(cli, ["--home", str(world.settings.home), "--db",
                                      world.db.url, "adapter", "register", "--task", TASK,
                                      "--lang", "sw", "--base", "tiny@1", "--weights",
                                      str(bad)])
    assert result.exit_code == 3, result.output
    assert "x.SAFETENSORS was trained on base fingerprint 111111111111" in result.output
    assert snapshot(world) == before
