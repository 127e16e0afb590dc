"""The controller process: APScheduler runs the reconcile tick, the outbox drain and a
leadership heartbeat on intervals; only the replica holding the leader lock acts. SIGTERM
(or SIGINT) stops it cleanly: no new ticks start, and the tick in flight finishes its
current transaction.

Leadership (controller.runtime.leader): the three jobs share one LeaderLock, which alone owns its
connection. The heartbeat re-takes a lost lock within about a second of the database
answering again and then starts a tick at once; every step and every transaction of the
tick is fenced by the lock, so a replica that lost it stops before another one acts. A
database outage is one line in the log, not a traceback per job."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from controller.executors.base import Executor
from controller.loop.clock import Clock
from controller.loop.operations import Operations
from controller.loop.reconciler import Reconciler, TrackState
from controller.policy import Policy, TrackPolicy
from controller.runtime.leader import (
    LeaderLock,
    LostLeadership,
    is_database_error,
)
from registry.service import Registry

log = logging.getLogger("xlt.controller")
HEARTBEAT_S = 1.0  # how soon a lost lock is re-taken once the database answers
ENSURE_EVERY_S = 0.1  # how often a tick re-checks the lock between its tracks' steps


def summarise(lines: list[str]) -> list[str]:
    """A tick's lines for the log: every track that did something, one line each; the
    tracks that had nothing due, one line for all (1,000 steady tracks would otherwise be
    1,000 lines a tick, ~2.9 M a day at a 30 s tick)."""
    steady = [line for line in lines if line.endswith(": steady")]
    out = [line for line in lines if not line.endswith(": steady")]
    if steady:
        out.append(f"{len(steady)} track(s) steady, nothing due")
    return out


class FencedReconciler(Reconciler):
    """The reconciler, acting only while `leader` holds the lock: checked before each
    track's step, and inside each of its transactions by the context's fence."""

    def __init__(self, registry: Registry, policy: Policy, ops: Operations, clock: Clock,
                 *, leader: LeaderLock, executor: Executor, actor: str = "controller") -> None:
        super().__init__(registry, policy, ops, clock, executor, actor=actor,
                         fence=leader.fence)
        self.leader = leader
        self._ensured_at = -1.0

    def step(self, t: TrackState, tp: TrackPolicy) -> str:
        # asking the server costs a round trip: at most every ENSURE_EVERY_S, not per
        # track (1,000 steady tracks would be 1,000 queries); every write is fenced anyway
        now = time.monotonic()
        if now - self._ensured_at >= ENSURE_EVERY_S:
            self.leader.ensure()
            self._ensured_at = now
        return super().step(t, tp)

    def dispatch_jobs(self) -> list[str]:
        self.leader.ensure()
        return super().dispatch_jobs()


class Controller:
    """The process around the loop: the leader lock, the tick, the outbox drain and the
    alert dispatcher on their intervals. Built by controller.runtime.bootstrap, which wires
    its parts; it builds none itself."""

    def __init__(self, registry: Registry, policy: Policy, reconciler: FencedReconciler,
                 leader: LeaderLock, drain: Callable[[Registry], Any] | None = None,
                 report: Callable[[str], None] = log.info) -> None:
        self.registry = registry
        self.policy = policy
        self.report = report
        self.leader = leader
        self.reconciler = reconciler
        self.drain_outbox = drain
        self._stop = threading.Event()
        self._scheduler: BackgroundScheduler | None = None
        self._term = 0  # leadership term seen by the heartbeat
        self.metrics: Any = None  # a ControllerMetrics, set by serve_metrics()

    def tick(self) -> list[str]:
        if not self.leader.acquire():
            self._observe(None, leader=False)
            return []  # the lock says why, once (standby, or the database is down)
        started = time.perf_counter()
        self.reconciler._ensured_at = -1.0  # the first step of a tick always checks
        try:
            lines = self.reconciler.tick()
        except LostLeadership:
            self._observe(None, leader=False)
            return []  # the lock reported it; the heartbeat re-takes it
        for line in summarise(lines):
            self.report(line)
        self._observe(time.perf_counter() - started, leader=True)
        return lines

    # -- observability hook: metrics after each tick, alert delivery on its own interval --
    def serve_metrics(self, port: int, host: str = "127.0.0.1") -> Any:
        from controller.observability.server import start_metrics_server

        server = start_metrics_server(self.registry, port, host)
        self.metrics = server.metrics
        self.report(f"metrics on http://{host}:{server.port}/metrics")
        return server

    def _observe(self, seconds: float | None, leader: bool) -> None:
        if self.metrics is not None:
            self.metrics.after_tick(seconds, leader)

    def dispatch_alerts(self) -> Any:
        from controller.alerts.dispatcher import dispatch
        from controller.executors.owner import worker_id

        if not self.leader.acquire():
            return None
        return dispatch(self.registry, self.policy.alerts, worker_id())

    def drain(self) -> None:
        if self.drain_outbox is not None and self.leader.acquire():
            self.drain_outbox(self.registry)

    def heartbeat(self) -> None:
        """Keep (or re-take) the lock; on a new term, run the tick and drain now."""
        if self.leader.acquire() and self.leader.changes != self._term:
            first = self._term == 0
            self._term = self.leader.changes
            if not first and self._scheduler is not None:
                for job in ("reconcile", "outbox"):
                    if self._scheduler.get_job(job) is not None:
                        self._scheduler.modify_job(job, next_run_time=datetime.now())

    def settle_training(self, timeout: float = 3600.0) -> list[str]:
        """Wait for the jobs this process launched, launching queued ones as slots free
        up, until none is left (tests and the demo, in simulated time: every job a
        simulated hour starts ends within it). The controller itself never calls this."""
        lines: list[str] = []
        while True:
            self.reconciler.executor.wait(timeout)
            if not self.leader.acquire():
                return lines
            try:
                launched = self.reconciler.dispatch_jobs()
            except LostLeadership:
                return lines
            started = [line for line in launched if " launched (" in line]
            lines += started
            if not started:
                return lines

    def run_once(self, settle: bool = False) -> list[str]:
        try:
            lines = self.tick()
            if settle:
                lines += self.settle_training()
            self.drain()
            self.dispatch_alerts()
            return lines
        finally:
            self.leader.release()

    def stop(self, *_: Any) -> None:
        self._stop.set()

    def run_forever(self) -> None:
        scheduler = self._scheduler = BackgroundScheduler()
        # max_instances=1 + coalesce: a slow tick is never run twice at once or caught up
        scheduler.add_job(self._safe(self.heartbeat), "interval",
                          seconds=min(HEARTBEAT_S, self.policy.tick_interval_s),
                          max_instances=1, coalesce=True, id="leader",
                          next_run_time=datetime.now())
        scheduler.add_job(self._safe(self.tick), "interval",
                          seconds=self.policy.tick_interval_s, max_instances=1, coalesce=True,
                          id="reconcile", next_run_time=datetime.now())
        if self.drain_outbox is not None:
            scheduler.add_job(self._safe(self.drain), "interval",
                              seconds=self.policy.outbox_interval_s, max_instances=1,
                              coalesce=True, id="outbox")
        scheduler.add_job(self._safe(self.dispatch_alerts), "interval",
                          seconds=self.policy.alerts.interval_s, max_instances=1,
                          coalesce=True, id="alerts", next_run_time=datetime.now())
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        scheduler.start()
        self.report(f"controller running: tick every {self.policy.tick_interval_s:g}s, "
                    f"{len(self.policy.tracks)} tracks; SIGTERM stops it")
        try:
            self._stop.wait()
        finally:
            scheduler.shutdown(wait=True)  # lets the tick in flight finish
            self.leader.release()
            self.report("controller stopped")

    def _safe(self, fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except Exception as exc:  # one bad tick must not kill the scheduler
                if is_database_error(exc):
                    self.leader.note_database_error(exc)  # one line per outage
                else:
                    log.exception("controller job %s failed", getattr(fn, "__name__", fn))
        return run
