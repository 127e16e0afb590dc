"""The outbox consumer: drains pending rows into MLflow, in order per ordering key.

At-least-once: a row is marked delivered only after its MLflow calls succeeded; a failure
marks it failed with exponential backoff (registry.outbox_failed), and every later row of the
same key waits, both in the registry's claim and inside this drain's batch. When MLflow
itself is unreachable the drain stops at once: every other call would fail the same way.

Drains may run concurrently (the controller's beside `xlt mlflow sync`): each takes its rows
with `registry.outbox_claim` (a lease; FOR UPDATE SKIP LOCKED on PostgreSQL), which hands a
row to one drain only and a key's rows in order, and gives back what it did not finish.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from controller.mlflow_mirror.connection import (
    describe,
    fast_fail,
    is_unavailable,
    short_reason,
)
from controller.mlflow_mirror.handlers import Mirror, apply
from registry.service import Registry

log = logging.getLogger(__name__)


@dataclass
class DrainReport:
    delivered: int = 0
    replayed: int = 0  # rows whose effect MLflow already had (a retry after a lost reply)
    ignored: int = 0
    failed: int = 0
    unavailable: bool = False
    errors: list[dict[str, Any]] = field(default_factory=list)
    backlog: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def drain(registry: Registry, mirror: Mirror | None = None, *, batch_size: int = 100,
          max_rows: int | None = None, base_delay_s: float = 1.0) -> DrainReport:
    """Deliver pending outbox rows until none is ready, MLflow is unreachable, or `max_rows`
    rows were handled. Never raises for an MLflow failure: the report and the outbox say it."""
    mirror = mirror or Mirror.open(registry)
    report = DrainReport()
    started = time.monotonic()
    failed_keys: set[str] = set()  # keys held back for the rest of this drain
    handled = 0
    consumer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    with fast_fail(), _released(registry, consumer):
        while max_rows is None or handled < max_rows:
            limit = batch_size if max_rows is None else min(batch_size, max_rows - handled)
            rows = registry.outbox_claim(consumer, limit)
            if not rows:
                break
            for row in rows:
                if row.ordering_key in failed_keys:
                    continue  # an earlier row of this key failed in this very batch
                if max_rows is not None and handled >= max_rows:
                    break
                handled += 1
                try:
                    outcome = apply(mirror, row.payload)
                except Exception as exc:
                    failed_keys.add(row.ordering_key)
                    _failed(registry, report, row, exc, base_delay_s)
                    if is_unavailable(exc):
                        report.unavailable = True
                        break
                    continue
                registry.outbox_delivered(row.id)
                if outcome == "replayed":
                    report.replayed += 1
                elif outcome == "ignored":
                    report.ignored += 1
                report.delivered += 1
            if report.unavailable:
                break
    report.backlog = registry.outbox_backlog()
    report.seconds = round(time.monotonic() - started, 3)
    return report


@contextmanager
def _released(registry: Registry, consumer: str) -> Iterator[None]:
    """Rows this drain claimed and did not finish go back at once (not after the lease)."""
    try:
        yield
    finally:
        try:
            registry.outbox_release(consumer)
        except Exception as exc:  # the database is gone: the lease expires by itself
            log.warning("mlflow mirror: could not give back claimed outbox rows (%s); "
                        "they are retried when the lease ends", exc)


def _failed(registry: Registry, report: DrainReport, row: Any, exc: Exception,
            base_delay_s: float) -> None:
    error = describe(exc)
    retry_in = registry.outbox_failed(row.id, error, base_delay_s)
    report.failed += 1
    report.errors.append({"outbox_id": row.id, "key": row.ordering_key, "action": row.topic,
                          "attempts": row.attempts + 1, "error": error,
                          "reason": short_reason(exc), "retry_in_s": retry_in})
    log.warning("mlflow mirror: outbox row %s (%s, %s) failed, retry in %g s: %s",
                row.id, row.ordering_key, row.topic, retry_in, error)
