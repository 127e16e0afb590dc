"""What every step reads and writes through: one typed context per reconciler (Argo
Rollouts' rolloutContext), passed to the step functions instead of attributes borrowed by
mixins. Writes open their transaction at the caller, once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from controller.executors.base import Executor
from controller.loop import failpoints
from controller.loop.clock import Clock
from controller.loop.operations import Operations
from controller.loop.phase_status import PhaseStatus
from controller.loop.state import Phase, TrackState
from controller.policy import Policy
from registry.commands import deployment
from registry.jobs import JobView
from registry.service import Registry
from registry.uow import Fence, UnitOfWork


@dataclass
class StepContext:
    reg: Registry
    policy: Policy
    ops: Operations
    clock: Clock
    executor: Executor
    actor: str = "controller"
    # the leader lock's check, run first in every transaction (runtime.leader); None when
    # one process acts alone (tests, the demo, `xlt controller run --once` without a lock)
    fence: Fence | None = None
    # the jobs tracks wait on (train, gate, drift), read once per tick (job_steps.prefetch_jobs)
    prefetched: dict[int, JobView] = field(default_factory=dict)

    def uow(self) -> UnitOfWork:
        """One registry transaction, attributed to the controller (and fenced)."""
        return self.reg.unit_of_work(actor=self.actor, fence=self.fence)

    @contextmanager
    def guarded(self, t: TrackState) -> Iterator[UnitOfWork]:
        """A transaction that first locks the track and checks it is still at the revision
        this step read: the fence that keeps two replicas from both acting."""
        with self.uow() as uow:
            uow.lock_track(t.task, t.language, t.revision)
            yield uow
        failpoints.after_commit()

    def phase(self, uow: UnitOfWork, t: TrackState, phase: Phase, status: PhaseStatus,
              reason: str, expected: int | None) -> None:
        deployment.set_phase(uow, t.task, t.language, phase, status.to_dict(), expected,
                             reason)

    def to_steady(self, uow: UnitOfWork, t: TrackState, reason: str, *, cooldown: bool,
                  expected: int | None, alert: str | None = None, alert_kind: str = "alert",
                  **changes: Any) -> None:
        """Back to STEADY (keeping what `PhaseStatus.steady` keeps, plus `changes`), with
        an optional cooldown and alert."""
        status = t.status.steady(**changes)
        if cooldown:
            status = status.but(cooldown_until=self.clock.now() + self.policy.cooldown_s)
        self.phase(uow, t, Phase.STEADY, status, reason, expected)
        if alert:  # the kind lets webhooks and dashboards tell alerts apart
            uow.event("alert", task=t.task, language=t.language, reason=alert,
                      after={"kind": alert_kind})
