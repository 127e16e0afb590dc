"""Where jobs (trainings, gate evaluations, drift checks) run. The tick never waits on
one: it `launch`es a queued job (the returned handle is written on the job row in the
same step) and on later ticks `poll`s it.

  inline      a thread of the controller process (the embedded default and the tests);
              handle thread:HOST:PID:JOB.N (N: the launch). A killed controller takes its
              threads along: the next controller finds the pid dead and launches the job
              again.
  subprocess  `python -m controller.runtime.worker JOB_ID` in its own session, so a job
              survives a controller restart; handle pid:HOST:PID.
  ray         a Ray task on a cluster (controller.executors.ray); handle ray:...

A worker records the job's outcome itself (succeeded with its result, or failed)
on the job row; an executor whose worker cannot reach the database (Ray) returns the
outcome from `poll` and the controller records it. Every worker first waits until the job
row names its handle, so a launch whose record was lost (a controller killed in between)
never runs twice."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from controller.executors.owner import pid_alive
from registry.db import db_unavailable
from registry.errors import StaleRevision
from registry.jobs import JobStatus, JobView
from registry.schema import Job
from registry.service import Registry

log = logging.getLogger("xlt.controller")
# what a worker runs: (kind, params) -> the result written on the job row
WorkFn = Callable[[str, dict[str, Any]], dict[str, Any]]
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
        """GPUs jobs may be placed on (0: none; jobs then run on CPU)."""

    def launch(self, job: JobView, device: str | None) -> str:
        """Start the job somewhere else and return its handle; never waits for it."""

    def poll(self, job: JobView) -> Poll:
        """Where the launched job stands (its row says running)."""

    def wait(self, timeout: float) -> None:
        """Block until the jobs this process launched are over (tests, demo)."""


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


def run_claimed(registry: Registry, job: JobView, work: WorkFn,
                device: str | None) -> None:
    """Run a claimed job and write its outcome on its row (one transaction)."""
    params = {**job.params, "job_id": job.id, **({"device": device} if device else {})}
    try:
        result = work(job.kind, params)
    except Exception as exc:  # recorded on the job; the controller retries or alerts
        log.exception("%s job %s failed", job.kind, job.id)
        record_outcome(registry, job, "failed", error=f"{type(exc).__name__}: {exc}")
        return
    record_outcome(registry, job, "succeeded", result=result)


def record_outcome(registry: Registry, job: JobView, status: str,
                   result: dict[str, Any] | None = None, error: str | None = None) -> bool:
    """Write a finished worker's outcome on its job row, retrying while the database does
    not answer: a worker that ends without writing leaves its job `running`, and while its
    process lives nothing else would notice before the policy's `timeout_s`. The write is
    refused (and dropped) when the job no longer runs under this worker's handle."""
    delay, deadline = 1.0, time.monotonic() + OUTCOME_RETRY_S
    while True:
        try:
            registry.update_job(job.id, status, result=result, error=error, worker=job.handle)
            return True
        except StaleRevision as exc:
            log.warning("%s job %s: outcome %s dropped: %s", job.kind, job.id, status, exc)
            return False
        except Exception as exc:
            if not db_unavailable(exc) or time.monotonic() > deadline:
                log.exception("%s job %s: outcome %s could not be recorded", job.kind,
                              job.id, status)
                return False
            log.warning("%s job %s: recording outcome %s failed (%s); retrying in "
                        "%.0f s", job.kind, job.id, status, type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
