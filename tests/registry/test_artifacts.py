"""Content-addressed artifacts: safetensors only, sha256 verified on every load."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.artifacts import ArtifactStore, sha256_file
from registry.errors import ArtifactError
from tests.support.tiny import write_adapter_file


def test_put_and_verify(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    f = write_adapter_file(tmp_path / "a.safetensors", "f" * 64)
    sha = store.put_file(f)
    assert sha == sha256_file(f)
    assert store.put_file(f) == sha  # idempotent: same content, same blob
    assert store.verified_path(sha).read_bytes() == f.read_bytes()


@pytest.mark.parametrize("name", ["model.bin", "weights.pt", "x.pkl", "ckpt.pth"])
def test_pickle_refused(tmp_path: Path, name: str) -> None:
    f = tmp_path / name
    f.write_bytes(b"\x80\x04\x95")
    with pytest.raises(ArtifactError, match="pickle-format"):
        ArtifactStore(tmp_path / "s").put_file(f)


def test_not_safetensors_refused(tmp_path: Path) -> None:
    f = tmp_path / "fake.safetensors"
    f.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ArtifactError, match="not a safetensors file"):
        ArtifactStore(tmp_path / "s").put_file(f)


def test_tampered_blob_refused(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    sha = store.put_file(write_adapter_file(tmp_path / "a.safetensors", None))
    blob = store.blob_path(sha)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="corrupt or tampered"):
        store.verified_path(sha)


def test_missing_blob_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="missing"):
        ArtifactStore(tmp_path).verified_path("0" * 64)


def test_tree_with_pickle_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    import shutil

    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ArtifactError, match="pickle-format"):
        ArtifactStore(tmp_path / "s").put_tree(d)


def test_tree_round_trip_verified(tmp_path: Path, tiny_model_dir: Path) -> None:
    store = ArtifactStore(tmp_path / "s")
    sha = store.put_tree(tiny_model_dir)
    out = store.materialize_tree(sha)
    assert (out / "config.json").read_text() == (tiny_model_dir / "config.json").read_text()
    weights = next(p for p in store.read_json(sha)["files"].items()
                   if p[0].endswith(".safetensors"))
    store.blob_path(weights[1]).write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="corrupt or tampered"):
        store.materialize_tree(sha)
