"""Starting MLflow's own server (UI + REST) on the store xlt mirrors into."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from controller.mlflow_mirror.errors import MlflowUiError
from controller.mlflow_mirror.naming import is_remote_uri


def server_command(backend_store_uri: str, artifacts_dir: Path, host: str = "127.0.0.1",
                   port: int = 5000) -> list[str]:
    """`mlflow server` for one store; one worker, since the UI serves a handful of people."""
    return [sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", backend_store_uri,
            "--artifacts-destination", str(artifacts_dir),
            "--host", host, "--port", str(port), "--workers", "1"]


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    # MLflow's job runner (GenAI evaluation jobs) starts eight extra processes; xlt uses none
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ui_command(tracking_uri: str, home: Path, host: str, port: int) -> list[str]:
    """The command that serves the configured store, refusing what cannot work."""
    if is_remote_uri(tracking_uri):
        raise MlflowUiError(f"MLFLOW_TRACKING_URI is a server already ({tracking_uri})",
                            "open it in a browser; `xlt mlflow ui` serves a local store")
    if not port_free(host, port):
        raise MlflowUiError(f"port {port} on {host} is in use", "pick another with --port")
    return server_command(tracking_uri, home / "mlartifacts", host, port)
