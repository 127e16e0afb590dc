"""The controller process: APScheduler runs the reconcile tick and the outbox drain on
intervals; only the replica holding the leader lock acts. SIGTERM (or SIGINT) stops it
cleanly: no new ticks start, and the tick in flight finishes its current transaction."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from controller.clock import Clock, SystemClock
from controller.executors import make_executor
from controller.leader import LeaderLock
from controller.operations import Operations
from controller.policy import Policy
from controller.reconciler import Reconciler
from registry.service import Registry

log = logging.getLogger("xlt.controller")


class Controller:
    def __init__(self, registry: Registry, policy: Policy, ops: Operations,
                 policy_path: str | None = None, clock: Clock | None = None,
                 drain: Callable[[Registry], Any] | None = None,
                 report: Callable[[str], None] = log.info) -> None:
        self.registry = registry
        self.policy = policy
        self.leader = LeaderLock(registry.db, registry.settings.home)
        self.reconciler = Reconciler(registry, policy, ops, clock or SystemClock(),
                                     executor=make_executor(policy.executor, registry,
                                                            policy_path))
        self.drain_outbox = drain
        self.report = report
        self._stop = threading.Event()

    def tick(self) -> list[str]:
        if not self.leader.acquire():
            self.report("standby: another controller replica holds the leader lock")
            return []
        lines = self.reconciler.tick()
        for line in lines:
            self.report(line)
        return lines

    def drain(self) -> None:
        if self.drain_outbox is not None and self.leader.acquire():
            self.drain_outbox(self.registry)

    def run_once(self) -> list[str]:
        try:
            lines = self.tick()
            self.drain()
            return lines
        finally:
            self.leader.release()

    def stop(self, *_: Any) -> None:
        self._stop.set()

    def run_forever(self) -> None:
        scheduler = BackgroundScheduler()
        # max_instances=1 + coalesce: a slow tick is never run twice at once or caught up
        scheduler.add_job(self._safe(self.tick), "interval",
                          seconds=self.policy.tick_interval_s, max_instances=1, coalesce=True,
                          id="reconcile", next_run_time=_now())
        if self.drain_outbox is not None:
            scheduler.add_job(self._safe(self.drain), "interval",
                              seconds=self.policy.outbox_interval_s, max_instances=1,
                              coalesce=True, id="outbox")
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
            except Exception:  # one bad tick must not kill the scheduler; the log says why
                log.exception("controller job %s failed", getattr(fn, "__name__", fn))
        return run


def _now() -> Any:
    from datetime import datetime

    return datetime.now()
