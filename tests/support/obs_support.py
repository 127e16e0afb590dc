"""Shared by the observability tests: a real HTTP webhook receiver on 127.0.0.1 that can
be stopped and started again on the same port, a registry whose sw track is inside a guard
window with a regressing champion (the next tick rolls it back), and a controller process
(`xlt controller run`) started the way an operator starts it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from controller.data import cldr
from registry.service import Registry
from registry.settings import load_settings
from tests.support.task_data import TEST_LANGUAGES
from tests.support.tiny import write_adapter_file

TASK = "emoji-group"
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Receiver:
    """Records every POST it is sent (path, headers, JSON body) and answers 200."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.received: list[dict[str, Any]] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Receiver:
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length", 0))
                received.append({"path": self.path, "headers": dict(self.headers),
                                  "body": json.loads(self.rfile.read(length) or b"null")})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def open_registry(url: str, home: Path, actor: str = "setup") -> Registry:
    return Registry(load_settings(home=home, database_url=url), actor=actor)


def regressing_track(url: str, home: Path, tiny_dir: Path, language: str = "sw") -> Registry:
    """sw: v1 then v2 promoted through a canary, in its guard window (baseline accuracy
    0.9), with 20 labelled live events on v2 that are all wrong: a regression."""
    reg = open_registry(url, home)
    reg.init()
    cldr.register_task(reg, TEST_LANGUAGES)  # the demo task's data
    enc = reg.register_encoder("tiny", "1", tiny_dir)
    for seed in (1, 2):
        weights = write_adapter_file(home / f"a{seed}.safetensors", enc.fingerprint, seed)
        reg.register_adapter(task=TASK, language=language, base="tiny@1", weights=weights,
                             teacher_language="en", metrics={"accuracy": 0.5 + seed / 10})
    reg.promote(TASK, language, 1)
    reg.start_canary(TASK, language, 2, 50)
    reg.promote(TASK, language, 2, reason="canary passed")
    now = datetime.now(UTC)
    guard = {"until": (now + timedelta(hours=1)).timestamp(),
             "since": (now - timedelta(minutes=10)).timestamp(), "version": 2,
             "baseline_accuracy": 0.9}
    reg.set_phase(TASK, language, "STEADY", {"guard": guard,
                                             "last_check_at": now.timestamp()})
    reg.log_inference_events([
        {"task": TASK, "language": language, "adapter_version": 2, "routing_key": f"u{i}",
         "prediction": "Smileys & Emotion", "confidence": 0.8,
         "feedback_label": "Animals & Nature", "at": now - timedelta(minutes=5)}
        for i in range(20)])
    return reg


def start_controller(home: Path, url: str, policy: Path, *extra: str,
                     log: Path | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "XLT_HOME": str(home),
           "XLT_DATABASE_URL": url, "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db"}
    out = open(log or home / "controller.log", "ab")  # noqa: SIM115 (the child owns it)
    return subprocess.Popen([sys.executable, "-m", "controller.cli", "controller", "run",
                             "--policy", str(policy), *extra], cwd=ROOT, env=env,
                            stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120,
             every: float = 0.25, proc: subprocess.Popen[bytes] | None = None,
             log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise AssertionError(f"controller exited ({proc.returncode}) before {what}:\n{tail}")
        time.sleep(every)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")
