"""Typed job state: what the controller reads of a job row (never a free dict).

Kinds: `train` (a candidate adapter), `gate` (a candidate's held-out evaluation against
its champion: the gate report) and `drift` (one track's drift check over a fixed window:
the drift report and its files). Every kind has the same lifecycle: a job is `queued`
(waiting for a slot), `running` (launched: `handle` says where, `device` on what), then
`succeeded` or `failed`. A running job whose worker is gone goes back to `queued` (and is
launched again) until its attempts run out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from registry.schema import Job


class JobKind(StrEnum):
    TRAIN = "train"
    GATE = "gate"
    DRIFT = "drift"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED)


@dataclass(frozen=True)
class JobView:
    id: int
    kind: str
    task: str | None
    language: str | None
    status: JobStatus
    params: dict[str, Any]
    executor: str
    attempts: int
    handle: str | None  # executor-specific: thread:/pid:/ray: ... (controller.executors)
    device: str | None
    created_at: datetime | None
    result: dict[str, Any] | None
    error: str | None
    started_at: datetime | None = None  # when the running attempt was launched

    def running_for(self, now: datetime | None = None) -> float | None:
        """Seconds since the running attempt was launched (wall time: the database's
        clock wrote started_at), or None when it is not running."""
        if self.status != JobStatus.RUNNING or self.started_at is None:
            return None
        started = self.started_at if self.started_at.tzinfo else \
            self.started_at.replace(tzinfo=UTC)  # SQLite returns naive UTC
        return ((now or datetime.now(UTC)) - started).total_seconds()

    @classmethod
    def of(cls, job: Job) -> JobView:
        return cls(job.id, job.kind, job.task, job.language, JobStatus(job.status),
                   dict(job.params or {}), job.executor, int(job.attempts or 0), job.handle,
                   job.device, job.created_at, job.result, job.error, job.started_at)
