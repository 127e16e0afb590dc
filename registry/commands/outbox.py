"""The outbox: rows written with each event, drained in order per track by the MLflow mirror.

Delivery is at-least-once: a consumer claims pending rows, applies them (idempotently), and
marks each delivered or failed with an exponential backoff. Order per ordering key holds
because a key's later rows wait while an earlier row of the same key is undelivered.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select

from registry.errors import NotFound
from registry.schema import OutboxMessage, utcnow
from registry.uow import UnitOfWork

MAX_BACKOFF_S = 300.0


def pending(uow: UnitOfWork, limit: int = 100) -> list[OutboxMessage]:
    """Undelivered rows, oldest first, skipping every row behind a key's first pending row
    that is still backing off (so a key is never delivered out of order)."""
    now = utcnow()
    rows = uow.session.scalars(select(OutboxMessage).where(OutboxMessage.delivered_at.is_(None))
                               .order_by(OutboxMessage.id).limit(limit * 5)).all()
    blocked: set[str] = set()
    ready = []
    for row in rows:
        if row.ordering_key in blocked:
            continue
        due = row.next_attempt_at
        if due is not None and due.replace(tzinfo=now.tzinfo) > now:
            blocked.add(row.ordering_key)
            continue
        ready.append(row)
        if len(ready) >= limit:
            break
    return ready


def _row(uow: UnitOfWork, outbox_id: int) -> OutboxMessage:
    row = uow.session.get(OutboxMessage, outbox_id, with_for_update=True)
    if row is None:
        raise NotFound(f"no outbox row {outbox_id}", "")
    return row


def mark_delivered(uow: UnitOfWork, outbox_id: int) -> None:
    row = _row(uow, outbox_id)
    row.delivered_at, row.attempts, row.last_error = utcnow(), row.attempts + 1, None


def mark_failed(uow: UnitOfWork, outbox_id: int, error: str, base_delay_s: float = 1.0) -> float:
    """Record a failed delivery; returns the backoff until the next attempt (seconds)."""
    row = _row(uow, outbox_id)
    row.attempts += 1
    delay = min(MAX_BACKOFF_S, base_delay_s * 2 ** (row.attempts - 1))
    row.next_attempt_at = utcnow() + timedelta(seconds=delay)
    row.last_error = error[:2000]
    return delay


def backlog(uow: UnitOfWork) -> dict[str, Any]:
    rows = uow.session.scalars(select(OutboxMessage).where(
        OutboxMessage.delivered_at.is_(None))).all()
    return {"pending": len(rows), "failing": sum(1 for r in rows if r.attempts > 0),
            "oldest_id": min((r.id for r in rows), default=None)}
