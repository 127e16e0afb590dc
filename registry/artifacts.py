"""Content-addressed artifact store under XLT_HOME/artifacts.

Blobs live at blobs/<sha[:2]>/<sha>. Only safetensors weights are accepted (never pickle),
judged by content (registry.weights), whatever the file is called; a model directory is
stored as its regular files' blobs plus a JSON manifest blob. Every read verifies the
sha256, so a tampered or truncated file is refused, not loaded.

Nothing is stored from a refused input: files are first copied into a staging folder
(opened without following links, hashed while copied), validated there -- so the bytes
checked are the bytes stored -- and moved under their sha only when every check passed.
A link anywhere in an offered file or directory is refused with its path: it could point
at any file on the machine (/etc/passwd), which would then be copied and published.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from registry.errors import ArtifactError
from registry.weights import WeightsHeader, check_encoder_shapes, read_header

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


def refuse_link(path: Path) -> None:
    if path.is_symlink():
        raise ArtifactError(f"{path} is a symbolic link (to {os.readlink(path)})",
                            "register a copy of the real files; links are never followed")


@dataclass
class Staged:
    """Files copied into the store's staging folder, validated, not yet published."""

    store: ArtifactStore
    files: dict[str, tuple[Path, str]] = field(default_factory=dict)  # name -> (tmp, sha)
    headers: dict[str, WeightsHeader] = field(default_factory=dict)

    def sha(self, name: str) -> str:
        return self.files[name][1]

    def commit(self) -> None:
        """Move each staged file under its sha (content already there: just drop ours)."""
        for tmp, sha in self.files.values():
            dest = self.store.blob_path(sha)
            if dest.exists():
                tmp.unlink(missing_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
        self.files.clear()

    def discard(self) -> None:
        for tmp, _ in self.files.values():
            tmp.unlink(missing_ok=True)
        self.files.clear()


class ArtifactStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def blob_path(self, sha: str) -> Path:
        return self.root / "blobs" / sha[:2] / sha

    @contextmanager
    def staging(self) -> Iterator[Staged]:
        """Stage files; whatever was not committed when the block ends is removed."""
        staged = Staged(self)
        try:
            yield staged
        finally:
            staged.discard()

    def _stage_copy(self, staged: Staged, src: Path, name: str) -> Path:
        """Copy one regular file into staging, never through a link; hashed on the way."""
        try:
            fd = os.open(src, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            if exc.errno == errno.ELOOP or src.is_symlink():
                refuse_link(src)
            raise ArtifactError(f"cannot read {src}: {exc.strerror or exc}",
                                "check the path") from exc
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise ArtifactError(f"{src} is not a regular file", "give a file")
            tmpdir = self.root / "staging"
            tmpdir.mkdir(parents=True, exist_ok=True)
            out_fd, tmp = tempfile.mkstemp(dir=tmpdir, prefix=".tmp-")
            h = hashlib.sha256()
            staged.files[name] = (Path(tmp), "")
            with os.fdopen(out_fd, "wb") as out:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
                    out.write(chunk)
        staged.files[name] = (Path(tmp), h.hexdigest())
        return Path(tmp)

    def stage_weights(self, staged: Staged, path: str | os.PathLike[str]) -> WeightsHeader:
        """Stage one weights file under the name "weights", validated as safetensors by its
        content (whatever its suffix); returns its parsed header."""
        src = Path(path)
        refuse_link(src)
        if not src.is_file():
            raise ArtifactError(f"no such file: {src}", "check the path")
        refuse_pickle(src)
        tmp = self._stage_copy(staged, src, "weights")
        header = read_header(tmp, name=src.name)
        staged.headers["weights"] = header
        return header

    def put_file(self, path: str | os.PathLike[str]) -> str:
        """Store one safetensors file; returns its sha256."""
        with self.staging() as staged:
            self.stage_weights(staged, path)
            sha = staged.sha("weights")
            staged.commit()
        return sha

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
        with self.staging() as staged:
            files = self.stage_tree(staged, directory)
            staged.commit()
        return self.put_json({"kind": "tree", "files": files})

    def stage_tree(self, staged: Staged, directory: str | os.PathLike[str]) -> dict[str, str]:
        """Stage a model directory's files (regular files only: a link anywhere is refused),
        each safetensors file validated by content and against config.json; returns the
        manifest's {relative path: sha}."""
        root = Path(directory)
        rels = walk_tree(root)
        files: dict[str, str] = {}
        weights = []
        for rel in rels:
            path = root / rel
            if any(part.startswith(".") for part in Path(rel).parts):
                continue  # caches and lock files of hub downloads are not part of the model
            refuse_pickle(path)
            if path.suffix.lower() not in ALLOWED_TREE_SUFFIXES:
                continue  # e.g. ONNX/OpenVINO exports shipped beside the model
            tmp = self._stage_copy(staged, path, rel)
            if path.suffix.lower() == SAFETENSORS:
                staged.headers[rel] = read_header(tmp, name=rel)
                weights.append(rel)
            files[rel] = staged.sha(rel)
        if not weights:
            raise ArtifactError(f"{root} holds no .safetensors weights",
                                "save the model with safe_serialization=True")
        if "config.json" in files:
            try:
                model_config = json.loads(staged.files["config.json"][0].read_bytes())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ArtifactError(f"{root / 'config.json'} is not JSON",
                                    "re-save the model") from exc
            for rel in weights:
                check_encoder_shapes(staged.headers[rel], model_config, rel)
        return files

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
            # swapped in atomically: trainings in threads or workers side by side load the
            # same tree, and an unlink-then-link would show them a missing config.json
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            os.symlink(src, tmp)
            os.replace(tmp, dest)
        return out


def walk_tree(root: Path) -> list[str]:
    """Relative paths of every file under `root`, refusing any link (file or directory, at
    any depth, hidden folders included) and anything that is not a regular file."""
    refuse_link(root)
    if not root.is_dir():
        raise ArtifactError(f"no such directory: {root}", "check the path")
    out = []
    for here, dirs, names in os.walk(root, followlinks=False):
        for name in sorted(dirs) + sorted(names):
            path = Path(here) / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                refuse_link(path)
            if name in names and not stat.S_ISREG(mode):
                raise ArtifactError(f"{path} is not a regular file", "remove it from the "
                                    "model directory")
            if name in names:
                out.append(path.relative_to(root).as_posix())
    return sorted(out)


def check_safetensors_header(path: Path) -> None:
    """Validate a safetensors file by content (kept for callers of the old name)."""
    read_header(path)
