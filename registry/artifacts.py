"""Content-addressed artifact store under XLT_HOME/artifacts.

Blobs live at blobs/<sha[:2]>/<sha>. Only safetensors weights are accepted (never pickle);
a model directory is stored as its files' blobs plus a JSON manifest blob. Every read
verifies the sha256, so a tampered or truncated file is refused, not loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from registry.errors import ArtifactError

# pickle-based weight formats can execute code when loaded
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}
ALLOWED_TREE_SUFFIXES = {".safetensors", ".json", ".txt", ".model", ".md", ".vocab", ".merges"}
SAFETENSORS = ".safetensors"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ArtifactError(f"{path.name} is a pickle-format file, which xlt never loads",
                            "save the weights with safetensors (save_pretrained(..., "
                            "safe_serialization=True)) and register that")


class ArtifactStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def blob_path(self, sha: str) -> Path:
        return self.root / "blobs" / sha[:2] / sha

    def _put_bytes_from(self, src: Path) -> str:
        sha = sha256_file(src)
        dest = self.blob_path(sha)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            # copy to a temp name then rename, so a crash never leaves a half blob under its sha
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
            os.close(fd)
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        return sha

    def put_file(self, path: str | os.PathLike[str]) -> str:
        """Store one safetensors file; returns its sha256."""
        src = Path(path)
        if not src.is_file():
            raise ArtifactError(f"no such file: {src}", "check the path")
        refuse_pickle(src)
        if src.suffix.lower() != SAFETENSORS:
            raise ArtifactError(f"{src.name} is not a .safetensors file",
                                "xlt stores weights as safetensors only")
        check_safetensors_header(src)
        return self._put_bytes_from(src)

    def put_json(self, value: object) -> str:
        data = json.dumps(value, sort_keys=True, indent=1).encode()
        sha = hashlib.sha256(data).hexdigest()
        dest = self.blob_path(sha)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, dest)
        return sha

    def put_tree(self, directory: str | os.PathLike[str]) -> str:
        """Store a model directory; returns the sha256 of its manifest."""
        root = Path(directory)
        if not root.is_dir():
            raise ArtifactError(f"no such directory: {root}", "check the path")
        files: dict[str, str] = {}
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = path.relative_to(root).as_posix()
            if any(part.startswith(".") for part in Path(rel).parts):
                continue  # caches and lock files of hub downloads are not part of the model
            refuse_pickle(path)
            if path.suffix.lower() not in ALLOWED_TREE_SUFFIXES:
                continue  # e.g. ONNX/OpenVINO exports shipped beside the model
            if path.suffix.lower() == SAFETENSORS:
                check_safetensors_header(path)
            files[rel] = self._put_bytes_from(path)
        if not any(name.endswith(SAFETENSORS) for name in files):
            raise ArtifactError(f"{root} holds no .safetensors weights",
                                "save the model with safe_serialization=True")
        return self.put_json({"kind": "tree", "files": files})

    def verified_path(self, sha: str) -> Path:
        """Path of a blob after checking that its content still hashes to `sha`."""
        path = self.blob_path(sha)
        if not path.is_file():
            raise ArtifactError(f"artifact {sha[:12]} is missing from {self.root}",
                                "restore the artifact store or re-register the object")
        actual = sha256_file(path)
        if actual != sha:
            raise ArtifactError(
                f"artifact {sha[:12]} is corrupt or tampered: its sha256 is now {actual[:12]}",
                "restore the file from a backup or re-register the object; it was not loaded",
            )
        return path

    def read_json(self, sha: str) -> dict:
        return json.loads(self.verified_path(sha).read_bytes())

    def materialize_tree(self, manifest_sha: str) -> Path:
        """A directory with the tree's files, each verified, for from_pretrained()."""
        manifest = self.read_json(manifest_sha)
        if manifest.get("kind") != "tree":
            raise ArtifactError(f"artifact {manifest_sha[:12]} is not a model directory", "")
        out = self.root / "trees" / manifest_sha
        for rel, sha in manifest["files"].items():
            src = self.verified_path(sha)
            dest = out / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists() or dest.is_symlink():
                dest.unlink()
            os.symlink(src, dest)
        return out


def check_safetensors_header(path: Path) -> None:
    """A cheap format check: an 8-byte little-endian header length, then a JSON header."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise ArtifactError(f"{path.name} is not a safetensors file (too short)", "re-save it")
        n = int.from_bytes(head, "little")
        if n <= 0 or n > 100_000_000:
            raise ArtifactError(f"{path.name} is not a safetensors file (bad header)", "re-save it")
        try:
            json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{path.name} is not a safetensors file (header is not JSON)",
                                "re-save it with safetensors") from exc
