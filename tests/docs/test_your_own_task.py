"""docs/your-own-task.md, run as written in small form: every command of its bash blocks,
in order, with the tiny test base in place of me5-small@1 and one epoch. A command that
fails, or a doc command this test does not know how to run, fails the test. SQLite and
PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "your-own-task.md"


def doc_commands() -> list[str]:
    lines, inside = [], False
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```bash"
            continue
        if inside and line.strip():
            lines.append(line.strip())
    return lines


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_command_of_the_tutorial_runs(tmp_path: Path, db_url: str,
                                            tiny_model_dir: Path) -> None:
    env = {**os.environ, "XLT_HOME": str(tmp_path / "home"), "XLT_DATABASE_URL": db_url,
           "HF_HUB_OFFLINE": "1"}
    env.pop("XLT_SERVE_TOKENS", None)
    ran: list[str] = []
    server: subprocess.Popen[bytes] | None = None
    port = free_port()

    def run(argv: list[str]) -> str:
        proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, (argv, proc.stdout, proc.stderr)
        return proc.stdout

    try:
        for line in doc_commands():
            argv = shlex.split(line.removesuffix("&").strip())
            if argv[:2] == ["pip", "install"]:  # the dev extra installs them
                for module in ("pycountry", "pycountry_convert"):
                    __import__(module)
            elif argv[0] == "python":
                run([sys.executable, str(ROOT / argv[1]), *argv[2:]])
            elif argv[0] == "export":
                key, _, value = argv[1].partition("=")
                env[key] = value
            elif argv[:2] == ["xlt", "serve"]:
                server = subprocess.Popen(
                    [sys.executable, "-m", "controller.cli", "serve", "--host", "127.0.0.1",
                     "--port", str(port)], cwd=tmp_path, env=env,
                    stdout=open(tmp_path / "serve.log", "wb"),  # noqa: SIM115
                    stderr=subprocess.STDOUT, start_new_session=True)
            elif argv[0] == "curl":
                assert server is not None, "curl before xlt serve"
                body = argv[argv.index("-d") + 1].encode()
                header = argv[argv.index("-H") + 1]
                answer = _post_when_up(server, f"http://127.0.0.1:{port}/v1/predict", body,
                                       header, tmp_path / "serve.log")
                assert answer["predictions"][0]["label"] in (
                    "Africa", "Asia", "Europe", "North America", "Oceania", "South America")
            elif argv[0] == "xlt":
                args = [a.replace("me5-small@1", "tiny@1") for a in argv[1:]]
                if args[:2] == ["encoder", "register"]:
                    args = ["encoder", "register", "tiny@1", str(tiny_model_dir)]
                if args[0] == "train":
                    args += ["--epochs", "1", "--json"]
                out = run([sys.executable, "-m", "controller.cli", *args])
                if args[0] == "train":
                    trained = json.loads(out)
                    assert trained["version"] == 1 and trained["teacher"] == "en"
            else:
                pytest.fail(f"the tutorial has a command this test cannot run: {line}")
            ran.append(argv[0] if argv[0] != "xlt" else " ".join(argv[:2]))
    finally:
        if server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    assert "xlt train" in ran and "curl" in ran and "xlt controller" in ran
    # the adapter's lineage names every registered file it read, with its sha256
    shown = subprocess.run([sys.executable, "-m", "controller.cli", "adapter", "show",
                            "--task", "region", "--lang", "sw", "--json"], env=env,
                           capture_output=True, text=True, timeout=120)
    hyper = json.loads(shown.stdout)["hyperparams"]
    assert hyper["recipe"] == "transfer+labels" and hyper["pairs_from"] == {"sw": "by-id"}
    assert {(d["language"], d["split"]) for d in hyper["datasets"]} >= {
        ("en", "train"), ("sw", "train"), ("sw", "test")}
    # what xlt serve answered is in the traffic log (written off the request path, flushed
    # on its clean shutdown)
    from sqlalchemy import func, select

    from registry.schema import InferenceEvent
    from registry.service import Registry

    reg = Registry.open(home=tmp_path / "home", database_url=db_url)
    with reg.reading() as session:
        logged = session.scalar(select(func.count()).select_from(InferenceEvent).where(
            InferenceEvent.task == "region", InferenceEvent.language == "sw"))
    assert logged == 1


def _post_when_up(server: subprocess.Popen[bytes], url: str, body: bytes, header: str,
                  log: Path) -> dict:
    name, _, value = header.partition(":")
    deadline = time.monotonic() + 120
    while True:
        assert server.poll() is None, log.read_text()
        request = urllib.request.Request(url, data=body, method="POST", headers={
            name.strip(): value.strip(), "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or time.monotonic() > deadline:  # 503: still starting
                raise AssertionError(f"{exc.code} {exc.read()!r}") from None
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)
