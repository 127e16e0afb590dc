"""The machine's refusals and leftovers: a full disk is a one-line exit-2 refusal naming
the path (on SQLite, blaming the disk, not a server); staging left by a killed register is
cleaned at the next writer's start and by `xlt db check`, never a live process's; a hard
link is refused like a symbolic link."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from registry.artifacts import ArtifactStore
from registry.errors import ArtifactError, StorageError
from tests.registry.test_artifact_refusals import refused, snapshot
from tests.support.tiny import write_adapter_file

ROOT = Path(__file__).resolve().parents[2]


def cli(home: Path, db: str, *args: str) -> Any:
    from controller.cli import cli as xlt

    return CliRunner().invoke(xlt, ["--home", str(home), "--db", db, *args])


# -- hard links ---------------------------------------------------------------------------
@pytest.fixture
def world(registry: Any, tiny_model_dir: Path) -> Any:
    registry.init()
    registry.fingerprint = registry.register_encoder("tiny", "1", tiny_model_dir).fingerprint
    return registry


def test_hard_link_in_encoder_directory_refused(world: Any, tmp_path: Path,
                                                tiny_model_dir: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")  # stands for /etc/passwd
    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir, d)
    os.link(secret, d / "notes.txt")
    msg = refused(world, ArtifactError, "is a hard link",
                  lambda: world.register_encoder("tiny", "2", d))
    assert str(d / "notes.txt") in msg
    blobs = Path(world.settings.artifacts_dir) / "blobs"
    assert not any(b"root:" in p.read_bytes() for p in blobs.rglob("*") if p.is_file())


def test_hard_linked_adapter_weights_refused(world: Any, tmp_path: Path) -> None:
    real = write_adapter_file(tmp_path / "real.safetensors", world.fingerprint)
    os.link(real, tmp_path / "alias.safetensors")
    refused(world, ArtifactError, "is a hard link", lambda: world.register_adapter(
        task="emoji-group", language="sw", base="tiny@1", weights=tmp_path / "alias.safetensors"))


# -- staging left by killed processes -------------------------------------------------------
STAGER = """
import sys, time
from pathlib import Path
from registry.artifacts import ArtifactStore
store = ArtifactStore(sys.argv[1])
with store.staging() as staged:
    store.stage_weights(staged, sys.argv[2])
    print(store.staging_dir(), flush=True)
    time.sleep(600)  # killed here, mid-register
"""


def _stager(root: Path, weights: Path) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen([sys.executable, "-c", STAGER, str(root), str(weights)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    folder = Path(proc.stdout.readline().strip())
    assert folder.is_dir() and any(folder.iterdir()), "the stager staged nothing"
    return proc, folder


def test_staging_of_a_killed_process_is_swept_a_live_ones_kept(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    weights = write_adapter_file(tmp_path / "a.safetensors", "f" * 64)
    dead, dead_folder = _stager(root, weights)
    live, live_folder = _stager(root, weights)
    try:
        dead.send_signal(signal.SIGKILL)
        dead.wait(30)
        assert dead_folder.is_dir()  # SIGKILL ran no clean-up
        other_host = root / "staging" / f"p{dead.pid}-some-other-host"
        other_host.mkdir()
        store = ArtifactStore(root)
        store.staging_dir()  # a new writer starts: it sweeps first
        assert not dead_folder.exists()
        assert live_folder.is_dir() and any(live_folder.iterdir())
        assert other_host.is_dir()  # another machine's pids mean nothing here
    finally:
        live.kill()
        live.wait(30)
    report = ArtifactStore(root).sweep_staging()
    assert live_folder.name in report["removed"] and report["freed_bytes"] > 0
    assert not live_folder.exists()


def test_db_check_sweeps_staging(db_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert cli(home, db_url, "init").exit_code == 0
    weights = write_adapter_file(tmp_path / "a.safetensors", "f" * 64)
    proc, folder = _stager(home / "artifacts", weights)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    result = cli(home, db_url, "db", "check")
    assert result.exit_code == 0, result.output
    assert "staging: removed 1 left by dead processes" in result.output
    assert not folder.exists()


# -- a full disk ----------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 3 MB file system (tmpfs) to fill; needs mount rights (root in a container)."""
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path) -> None:
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_full_disk_register_is_a_clean_refusal(small_disk: Path, db_url: str,
                                               tmp_path: Path, tiny_model_dir: Path) -> None:
    from registry.service import Registry
    from registry.settings import load_settings

    home = small_disk / "home"
    reg = Registry(load_settings(home=home, database_url=db_url), actor="tester")
    reg.init()
    fp = reg.register_encoder("tiny", "1", tiny_model_dir).fingerprint
    weights = write_adapter_file(tmp_path / "a.safetensors", fp)
    fill(small_disk)
    before = snapshot(reg)
    with pytest.raises(StorageError, match="No space left on device") as info:
        reg.register_adapter(task="emoji-group", language="sw", base="tiny@1", weights=weights)
    assert str(home / "artifacts" / "staging") in str(info.value)
    assert snapshot(reg) == before
    result = cli(home, db_url, "adapter", "register", "--task", "emoji-group", "--lang", "sw",
                 "--base", "tiny@1", "--weights", str(weights))
    assert result.exit_code == 2, result.output
    assert result.output.startswith("xlt: error: cannot write ") and result.output.count("\n") == 1
    assert "No space left on device; free space on that disk" in result.output
    assert "internal error" not in result.output
    assert snapshot(reg) == before


def test_full_disk_under_sqlite_blames_the_disk(small_disk: Path, tmp_path: Path,
                                                tiny_model_dir: Path) -> None:
    home = small_disk / "home"
    db = f"sqlite:///{home / 'registry.db'}"
    assert cli(home, db, "init").exit_code == 0
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps({"task": "emoji-group", "language": "sw",
                                          "prediction": "a", "confidence": 0.5,
                                          "text": f"{i} " + "x" * 1500})
                              + "\n" for i in range(3000)))
    fill(small_disk)
    result = cli(home, db, "events", "ingest", str(events))
    assert result.exit_code == 2, result.output
    assert f"SQLite registry {home / 'registry.db'}: database or disk is full" in result.output
    assert "server" not in result.output and "internal error" not in result.output
    (small_disk / "filler").unlink()  # space again: the registry works as before
    time.sleep(0.1)
    assert cli(home, db, "status").exit_code == 0
