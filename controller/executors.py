"""Where long work runs. `inline` runs a job inside the controller's tick (the embedded
default and the tests); `subprocess` starts `python -m controller.worker JOB_ID` in its own
session, so a training run survives a controller restart and its pid tells a dead worker
from a slow one. A Ray executor implements the same `launch` for GPU clusters."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from registry.service import Registry


class Executor(Protocol):
    name: str

    def launch(self, job_id: int, run_inline: Callable[[], dict[str, Any]]) -> (
            dict[str, Any] | int):
        """Run the job: returns its result (finished here) or a worker pid (running there)."""


class InlineExecutor:
    name = "inline"

    def launch(self, job_id: int, run_inline: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        return run_inline()


class SubprocessExecutor:
    name = "subprocess"

    def __init__(self, registry: Registry, policy_path: str | None) -> None:
        self.registry = registry
        self.policy_path = policy_path

    def launch(self, job_id: int, run_inline: Callable[[], dict[str, Any]]) -> int:
        env = {**os.environ, "XLT_HOME": str(self.registry.settings.home),
               "XLT_DATABASE_URL": self.registry.db.url}
        cmd = [sys.executable, "-m", "controller.worker", str(job_id)]
        if self.policy_path:
            cmd += ["--policy", self.policy_path]
        log_dir = Path(self.registry.settings.home) / "jobs"
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"{job_id}.log", "ab") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # outlives a killed controller
        return proc.pid


def make_executor(name: str, registry: Registry, policy_path: str | None) -> Executor:
    if name == "subprocess":
        return SubprocessExecutor(registry, policy_path)
    return InlineExecutor()
