"""Content-addressed artifact store under XLT_HOME/artifacts.

Blobs live at blobs/<sha[:2]>/<sha>. Only safetensors weights are accepted (never pickle),
judged by content (registry.weights), whatever the file is called; a model directory is
stored as its regular files' blobs plus a JSON manifest blob. Every read verifies the
sha256, so a tampered or truncated file is refused, not loaded.

Nothing is stored from a refused input: files are first copied into a staging folder
(opened without following links, hashed while copied), validated there -- so the bytes
checked are the bytes stored -- and moved under their sha only when every check passed.
A link anywhere in an offered file or directory is refused with its path: it could point
at any file on the machine (/etc/passwd), which would then be copied and published. A hard
link (a file with more than one name) is refused the same way: its other name may be
anywhere on the disk.

Each process stages in its own folder, staging/p<pid>-<host>; a process killed mid-register
leaves its folder behind, and the next writer (or `xlt db check`) removes the folders of
dead processes of this host. A folder whose owner is alive is never touched.

A refusal by the machine (disk full, read-only, permission) is a StorageError naming the
path and the reason, never a traceback.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry import jsonsafe
from registry.errors import ArtifactError, StorageError
from registry.weights import WeightsHeader, check_encoder_shapes, read_header

# pickle-based weight formats can execute code when loaded
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}
ALLOWED_TREE_SUFFIXES = {".safetensors", ".json", ".txt", ".model", ".md", ".vocab", ".merges"}
SAFETENSORS = ".safetensors"
MAX_CONFIG_BYTES = 10_000_000  # a model's config.json is a few kB


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


def refuse_hard_link(path: Path, st: os.stat_result) -> None:
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        raise ArtifactError(f"{path} is a hard link ({st.st_nlink} names for one file)",
                            "register a copy of the real files (cp, not ln); links are "
                            "never followed")


def storage_error(exc: OSError, path: Path | str, doing: str) -> StorageError:
    """The machine refused a file operation: one line naming the path and the reason."""
    reason = exc.strerror or type(exc).__name__
    hint = ("free space on that disk and retry; nothing was recorded"
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
            else "check that the folder exists and is writable; nothing was recorded")
    return StorageError(f"cannot {doing} {exc.filename or path}: {reason}", hint)


STAGING_PREFIX = "p"
OLD_STAGING_AGE_S = 3600.0  # flat .tmp-* files of older xlt versions: no owner recorded


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _host() -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in socket.gethostname())


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
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, dest)
            except OSError as exc:
                raise storage_error(exc, dest, "store") from exc
        self.files.clear()

    def discard(self) -> None:
        for tmp, _ in self.files.values():
            tmp.unlink(missing_ok=True)
        self.files.clear()


class ArtifactStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._staging_for: tuple[int, Path] | None = None  # (pid, its folder)

    def staging_dir(self) -> Path:
        """This process's staging folder (created on first use, after sweeping the folders
        of dead processes: start-up cleaning)."""
        pid = os.getpid()
        if self._staging_for is None or self._staging_for[0] != pid:  # new, or forked
            self.sweep_staging()
            folder = self.root / "staging" / f"{STAGING_PREFIX}{pid}-{_host()}"
            self._staging_for = (pid, folder)
        folder = self._staging_for[1]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, folder, "create") from exc
        return folder

    def sweep_staging(self) -> dict[str, Any]:
        """Remove what killed processes left in staging: folders p<pid>-<this host> whose
        pid is not alive, and flat files of older xlt versions untouched for an hour.
        Folders of live processes and of other hosts are left alone."""
        top = self.root / "staging"
        removed: list[str] = []
        kept: list[str] = []
        freed = 0
        try:
            entries = list(os.scandir(top))
        except FileNotFoundError:
            entries = []
        except OSError as exc:
            raise storage_error(exc, top, "read") from exc
        host, now = _host(), time.time()
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.is_dir(follow_symlinks=False):
                    pid_text, _, owner_host = entry.name[len(STAGING_PREFIX):].partition("-")
                    if (not entry.name.startswith(STAGING_PREFIX) or not pid_text.isdigit()
                            or owner_host != host or _pid_alive(int(pid_text))):
                        kept.append(entry.name)
                        continue
                    freed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                    shutil.rmtree(path)
                elif entry.name.startswith(".tmp-"):
                    st = entry.stat(follow_symlinks=False)
                    if now - st.st_mtime < OLD_STAGING_AGE_S:
                        kept.append(entry.name)
                        continue
                    freed += st.st_size
                    path.unlink()
                else:
                    kept.append(entry.name)
                    continue
            except FileNotFoundError:  # another sweeper got there first
                continue
            except OSError as exc:
                raise storage_error(exc, path, "remove") from exc
            removed.append(entry.name)
        return {"removed": removed, "kept": kept, "freed_bytes": freed}

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
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ArtifactError(f"{src} is not a regular file", "give a file")
            refuse_hard_link(src, st)
            tmpdir = self.staging_dir()
            tmp = tmpdir / "?"
            try:
                out_fd, tmp_name = tempfile.mkstemp(dir=tmpdir, prefix=".tmp-")
                tmp = Path(tmp_name)
                h = hashlib.sha256()
                staged.files[name] = (tmp, "")
                with os.fdopen(out_fd, "wb") as out:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
                        out.write(chunk)
            except OSError as exc:  # the disk under staging (reading src is checked above)
                raise storage_error(exc, tmpdir if tmp.name == "?" else tmp, "write") from exc
        staged.files[name] = (tmp, h.hexdigest())
        return tmp

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
            tmp = None
            try:
                fd, tmp = tempfile.mkstemp(dir=self.staging_dir(), prefix=".tmp-")
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, dest)
            except OSError as exc:
                if tmp is not None:
                    Path(tmp).unlink(missing_ok=True)
                raise storage_error(exc, tmp or dest, "write") from exc
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
            model_config = jsonsafe.loads(staged.files["config.json"][0].read_bytes(),
                                          str(root / "config.json"),
                                          max_bytes=MAX_CONFIG_BYTES, error=ArtifactError,
                                          hint="re-save the model")
            if not isinstance(model_config, dict):
                raise ArtifactError(f"{root / 'config.json'} is not a JSON object",
                                    "re-save the model")
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
            st = path.lstat()
            mode = st.st_mode
            if stat.S_ISLNK(mode):
                refuse_link(path)
            refuse_hard_link(path, st)
            if name in names and not stat.S_ISREG(mode):
                raise ArtifactError(f"{path} is not a regular file", "remove it from the "
                                    "model directory")
            if name in names:
                out.append(path.relative_to(root).as_posix())
    return sorted(out)


def check_safetensors_header(path: Path) -> None:
    """Validate a safetensors file by content (kept for callers of the old name)."""
    read_header(path)
