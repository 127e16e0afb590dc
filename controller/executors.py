"""Where trainings run. The tick never waits on one: it `launch`es a queued job (the
returned handle is written on the job row in the same step) and on later ticks `poll`s it.

  inline      a thread of the controller process (the embedded default and the tests);
              handle thread:HOST:PID:JOB.N (N: the launch). A killed controller takes its
              threads along: the next controller finds the pid dead and launches the job
              again.
  subprocess  `python -m controller.worker JOB_ID` in its own session, so a training
              survives a controller restart; handle pid:HOST:PID.
  ray         a Ray task on a cluster (controller.ray_executor); handle ray:...

A worker records the job's outcome itself (succeeded with the adapter version, or failed)
on the job row; an executor whose worker cannot reach the database (Ray) returns the
outcome from `poll` and the controller records it. Every worker first waits until the job
row names its handle, so a launch whose record was lost (a controller killed in between)
never trains twice."""

from __future__ import annotations

import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from controller.owner import pid_alive
from registry.errors import StaleRevision
from registry.jobs import JobStatus, JobView
from registry.schema import Job
from registry.service import Registry

log = logging.getLogger("xlt.controller")
TrainFn = Callable[[str, str, dict[str, Any]], dict[str, Any]]  # (task, language, params)
CLAIM_WAIT_S = 60.0
OUTCOME_RETRY_S = 600.0  # how long a finished worker keeps trying to record its outcome


class Progress(StrEnum):
    RUNNING = "running"
    FINISHED = "finished"  # the outcome is in `Poll` (or already on the job row)
    LOST = "lost"  # the worker is gone and the job row still says running


@dataclass(frozen=True)
class Poll:
    progress: Progress
    result: dict[str, Any] | None = None
    error: str | None = None


class Executor(Protocol):
    name: str

    def gpu_count(self) -> int:
        """GPUs trainings may be placed on (0: none; jobs then run on CPU)."""

    def launch(self, job: JobView, device: str | None) -> str:
        """Start the job somewhere else and return its handle; never waits for it."""

    def poll(self, job: JobView) -> Poll:
        """Where the launched job stands (its row says running)."""

    def wait(self, timeout: float) -> None:
        """Block until the trainings this process launched are over (tests, demo)."""


def handle_poll(handle: str | None) -> Poll:
    """A handle another executor (or another process) made: alive while its process is."""
    kind, _, rest = (handle or "").partition(":")
    if kind == "thread":  # thread:HOST:PID:JOB.N
        owner = rest.rsplit(":", 1)[0]
    elif kind == "pid":
        owner = rest
    else:
        return Poll(Progress.RUNNING)  # e.g. a Ray task seen by a local executor: trust it
    return Poll(Progress.RUNNING if pid_alive(owner) else Progress.LOST)


def wait_until_claimed(registry: Registry, job_id: int, handle: str) -> JobView | None:
    """The worker's first step: the job row must be running under this very handle."""
    deadline = time.monotonic() + CLAIM_WAIT_S
    while time.monotonic() < deadline:
        with registry.reading() as s:
            row = s.get(Job, job_id)
            job = JobView.of(row) if row is not None else None
        if job is None or job.status.finished:
            return None
        if job.status == JobStatus.RUNNING and job.handle == handle:
            return job
        if job.status == JobStatus.RUNNING and job.handle != handle:
            return None  # another launch owns it
        time.sleep(0.05)
    return None


def run_claimed(registry: Registry, job: JobView, train: TrainFn,
                device: str | None) -> None:
    """Train a claimed job and write its outcome on its row (one transaction)."""
    params = {**job.params, "job_id": job.id, **({"device": device} if device else {})}
    try:
        result = train(params["task"], params["language"], params)
    except Exception as exc:  # recorded on the job; the controller retries or alerts
        log.exception("training job %s failed", job.id)
        record_outcome(registry, job, "failed", error=f"{type(exc).__name__}: {exc}")
        return
    record_outcome(registry, job, "succeeded", result=result)


def record_outcome(registry: Registry, job: JobView, status: str,
                   result: dict[str, Any] | None = None, error: str | None = None) -> bool:
    """Write a finished worker's outcome on its job row, retrying while the database does
    not answer: a worker that ends without writing leaves its job `running`, and while its
    process lives nothing else would notice before the policy's `timeout_s`. The write is
    refused (and dropped) when the job no longer runs under this worker's handle."""
    from controller.leader import is_database_error

    delay, deadline = 1.0, time.monotonic() + OUTCOME_RETRY_S
    while True:
        try:
            registry.update_job(job.id, status, result=result, error=error, worker=job.handle)
            return True
        except StaleRevision as exc:
            log.warning("training job %s: outcome %s dropped: %s", job.id, status, exc)
            return False
        except Exception as exc:
            if not is_database_error(exc) or time.monotonic() > deadline:
                log.exception("training job %s: outcome %s could not be recorded", job.id,
                              status)
                return False
            log.warning("training job %s: recording outcome %s failed (%s); retrying in "
                        "%.0f s", job.id, status, type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


class InlineExecutor:
    name = "inline"

    def __init__(self, registry: Registry, train: TrainFn) -> None:
        # the threads write with their own Registry: the controller's changes its actor
        self.registry = Registry(registry.settings, actor="worker")
        self.train = train
        self._threads: dict[int, threading.Thread] = {}
        self._launches = itertools.count(1)

    def gpu_count(self) -> int:
        return _local_gpus()

    def launch(self, job: JobView, device: str | None) -> str:
        # the launch number tells a relaunch of the job (after a timeout) from the thread
        # it replaced, so the old thread's late outcome is refused
        handle = f"thread:{socket.gethostname()}:{os.getpid()}:{job.id}.{next(self._launches)}"
        thread = threading.Thread(target=self._run, args=(job.id, handle, device),
                                  name=f"xlt-train-{job.id}", daemon=True)
        self._threads[job.id] = thread
        thread.start()
        return handle

    def _run(self, job_id: int, handle: str, device: str | None) -> None:
        job = wait_until_claimed(self.registry, job_id, handle)
        if job is not None:
            run_claimed(self.registry, job, self.train, device)

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
        cmd = [sys.executable, "-m", "controller.worker", str(job.id)]
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


def make_executor(name: str, registry: Registry, policy_path: str | None,
                  train: TrainFn, policy: Any = None) -> Executor:
    if name == "subprocess":
        return SubprocessExecutor(registry, policy_path)
    if name == "ray":
        from controller.ray_executor import RayExecutor

        return RayExecutor(registry, policy)
    return InlineExecutor(registry, train)
