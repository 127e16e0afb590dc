"""The executors on this machine, for every kind of job: `inline` (a thread of the
controller process) and
`subprocess` (`python -m controller.runtime.worker JOB_ID` in its own session)."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from controller.executors.base import (
    Poll,
    Progress,
    WorkFn,
    handle_poll,
    run_claimed,
    wait_until_claimed,
)
from registry.jobs import JobView
from registry.service import Registry


class InlineExecutor:
    name = "inline"

    def __init__(self, registry: Registry, work: WorkFn) -> None:
        # the threads write with their own Registry: the controller's changes its actor
        self.registry = Registry(registry.settings, actor="worker")
        self.work = work
        self._threads: dict[int, threading.Thread] = {}
        self._launches = itertools.count(1)

    def gpu_count(self) -> int:
        return _local_gpus()

    def launch(self, job: JobView, device: str | None) -> str:
        # the launch number tells a relaunch of the job (after a timeout) from the thread
        # it replaced, so the old thread's late outcome is refused
        handle = f"thread:{socket.gethostname()}:{os.getpid()}:{job.id}.{next(self._launches)}"
        thread = threading.Thread(target=self._run, args=(job.id, handle, device),
                                  name=f"xlt-{job.kind}-{job.id}", daemon=True)
        self._threads[job.id] = thread
        thread.start()
        return handle

    def _run(self, job_id: int, handle: str, device: str | None) -> None:
        job = wait_until_claimed(self.registry, job_id, handle)
        if job is not None:
            run_claimed(self.registry, job, self.work, device)

    def poll(self, job: JobView) -> Poll:
        ours = f"thread:{socket.gethostname()}:{os.getpid()}:"
        if not (job.handle or "").startswith(ours):
            return handle_poll(job.handle)
        thread = self._threads.get(job.id)
        if thread is None:
            return Poll(Progress.LOST)  # our pid, but not our thread: a reused pid
        # a finished thread wrote the outcome after this tick read the row: next tick
        return Poll(Progress.RUNNING if thread.is_alive() else Progress.FINISHED)

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for job_id, thread in list(self._threads.items()):
            thread.join(max(0.0, deadline - time.monotonic()))
            if not thread.is_alive():
                self._threads.pop(job_id, None)


class SubprocessExecutor:
    name = "subprocess"

    def __init__(self, registry: Registry, policy_path: str | None) -> None:
        self.registry = registry
        self.policy_path = policy_path
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    def gpu_count(self) -> int:
        return _local_gpus()

    def launch(self, job: JobView, device: str | None) -> str:
        env = {**os.environ, "XLT_HOME": str(self.registry.settings.home),
               "XLT_DATABASE_URL": self.registry.db.url}
        cmd = [sys.executable, "-m", "controller.runtime.worker", str(job.id)]
        if self.policy_path:
            cmd += ["--policy", self.policy_path]
        if device:
            cmd += ["--device", device]
        log_dir = Path(self.registry.settings.home) / "jobs"
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"{job.id}.log", "ab") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # outlives a killed controller
        self._procs[job.id] = proc
        return f"pid:{socket.gethostname()}:{proc.pid}"

    def poll(self, job: JobView) -> Poll:
        proc = self._procs.get(job.id)
        if proc is None or job.handle != f"pid:{socket.gethostname()}:{proc.pid}":
            return handle_poll(job.handle)  # launched before a restart: its pid tells
        if proc.poll() is None:  # reaped here, so an exited worker is no zombie
            return Poll(Progress.RUNNING)
        self._procs.pop(job.id, None)
        # it exited: its outcome is on the row (this tick read it before), or it died
        return Poll(Progress.FINISHED if proc.returncode == 0 else Progress.LOST)

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for proc in list(self._procs.values()):
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return


def _local_gpus() -> int:
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # no torch build with CUDA: no GPUs
        return 0
