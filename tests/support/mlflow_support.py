"""Helpers for the MLflow mirror's tests: a registry world to mirror, and `mlflow server`
subprocesses on free loopback ports, with every wait bounded."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.data import cldr
from controller.mlflow_mirror.server import server_command, server_env
from tests.support.serve_support import make_lora_file
from tests.support.task_data import TEST_LANGUAGES

TASK = "emoji-group"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class World:
    """A registry with the tiny base registered, and a helper to add adapter versions."""

    registry: Any
    tmp: Path
    fingerprint: str
    base_dir: Path
    seeds: int = 0

    def adapter(self, lang: str = "sw", **kw: Any) -> Any:
        """A real LoRA adapter file (random weights) on the tiny base: the mirror logs each
        version as an MLflow model that must load."""
        self.seeds += 1
        f = make_lora_file(self.tmp / f"a-{lang}-{self.seeds}.safetensors", self.base_dir,
                           self.fingerprint, self.seeds)
        return self.registry.register_adapter(
            task=TASK, language=lang, base="tiny@1", weights=f, teacher_language="en",
            metrics={"accuracy": 0.5 + self.seeds / 100, "macro_f1": 0.4}, **kw)


def make_world(registry: Any, tiny_model_dir: Path, tmp: Path) -> World:
    registry.init()
    cldr.register_task(registry, TEST_LANGUAGES)  # the demo task's data
    enc = registry.register_encoder("tiny", "1", tiny_model_dir)
    return World(registry, tmp, enc.fingerprint, tiny_model_dir)


@dataclass
class MlflowServer:
    """`mlflow server` in its own process group, so stop() ends its workers too."""

    backend_store_uri: str
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120) -> MlflowServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "server.log", "ab")  # noqa: SIM115 - kept by the child
        cmd = server_command(self.backend_store_uri, self.workdir / "mlartifacts",
                             "127.0.0.1", self.port)
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     env=server_env(), cwd=self.workdir,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n"
                                   + self.log_tail())
            with contextlib.suppress(OSError), \
                    urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return self
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"mlflow server not up in {timeout_s} s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = os.getpgid(self.proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        # the group's other members (uvicorn worker) must be gone before the port is reused
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        path = self.workdir / "server.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) \
            if path.exists() else "(no log)"
