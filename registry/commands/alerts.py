"""Alert deliveries: every `alert` event reaches each webhook receiver, at least once, and
exactly once to a receiver that is up when it is sent.

Rows are written in the same transaction as the alert event (UnitOfWork.event calls
registry.audit.enqueue for the receivers its Registry knows), so an alert can never be
committed without its deliveries; `catch_up` adds rows for alert events that were written
without them (another process, a receiver added to the policy later). A dispatcher claims
due rows with a lease, sends them outside any transaction, and marks each delivered after a
2xx or failed with an exponential backoff. A dispatcher that dies between sending and
marking loses its lease; the row is sent again with the same idempotency key (the event
id), so a receiver can drop the repeat.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from registry.audit import DELIVERED, PENDING, enqueue
from registry.schema import AlertDelivery, Event, utcnow

if TYPE_CHECKING:
    from registry.uow import UnitOfWork

MAX_BACKOFF_S = 300.0


def catch_up(uow: UnitOfWork, receivers: list[str], since: datetime) -> int:
    """Rows for alert events since `since` that lack one for a receiver; returns how many."""
    if not receivers:
        return 0
    events = uow.session.scalars(select(Event.id).where(
        Event.action == "alert", Event.at >= since)).all()
    if not events:
        return 0
    have = set(uow.session.execute(select(AlertDelivery.event_id, AlertDelivery.receiver)
                                   .where(AlertDelivery.event_id.in_(events))).tuples())
    added = 0
    for event_id in events:
        missing = [r for r in receivers if (event_id, r) not in have]
        added += enqueue(uow.session, event_id, missing) if missing else 0
    return added


def claim(uow: UnitOfWork, owner: str, lease_s: float, limit: int = 50,
          receivers: list[str] | None = None) -> list[dict[str, Any]]:
    """Due rows (pending, not backing off, not leased to a live claim), now leased to
    `owner`. PostgreSQL skips rows another dispatcher holds locked; SQLite's writer
    transaction is already exclusive."""
    now = utcnow()
    query = (select(AlertDelivery).where(
        AlertDelivery.status == PENDING,
        or_(AlertDelivery.next_attempt_at.is_(None), AlertDelivery.next_attempt_at <= now),
        or_(AlertDelivery.claimed_until.is_(None), AlertDelivery.claimed_until <= now))
        .order_by(AlertDelivery.id).limit(limit))
    if receivers is not None:
        query = query.where(AlertDelivery.receiver.in_(receivers))
    if uow.session.bind is not None and uow.session.bind.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    rows = uow.session.scalars(query).all()
    out = []
    for row in rows:
        row.claimed_by, row.claimed_until = owner, now + timedelta(seconds=lease_s)
        event = uow.session.get(Event, row.event_id)
        assert event is not None
        out.append({"delivery_id": row.id, "receiver": row.receiver, "attempts": row.attempts,
                    "event": {"id": event.id, "at": event.at.isoformat(), "task": event.task,
                              "language": event.language, "actor": event.actor,
                              "reason": event.reason, "after": event.after or {}}})
    return out


def _own(uow: UnitOfWork, delivery_id: int, owner: str) -> AlertDelivery | None:
    row = uow.session.get(AlertDelivery, delivery_id, with_for_update=True)
    # a lease that expired and was taken by another dispatcher is no longer ours to mark
    if row is None or row.status != PENDING or row.claimed_by != owner:
        return None
    return row


def mark_delivered(uow: UnitOfWork, delivery_id: int, owner: str) -> bool:
    row = _own(uow, delivery_id, owner)
    if row is None:
        return False
    row.status, row.delivered_at, row.attempts = DELIVERED, utcnow(), row.attempts + 1
    row.last_error, row.claimed_until = None, None
    return True


def mark_failed(uow: UnitOfWork, delivery_id: int, owner: str, error: str,
                base_delay_s: float = 1.0) -> float | None:
    """Back off exponentially (capped); the row stays pending: an alert is never dropped."""
    row = _own(uow, delivery_id, owner)
    if row is None:
        return None
    row.attempts += 1
    delay = min(MAX_BACKOFF_S, base_delay_s * 2 ** (row.attempts - 1))
    row.next_attempt_at = utcnow() + timedelta(seconds=delay)
    row.last_error, row.claimed_until = error[:2000], None
    return delay


def backlog(session: Session) -> dict[str, Any]:
    """Undelivered rows per receiver: how many, how old the oldest, how many failing."""
    rows = session.execute(select(
        AlertDelivery.receiver, func.count(), func.min(AlertDelivery.created_at),
        func.sum(func.coalesce(AlertDelivery.attempts, 0)))
        .where(AlertDelivery.status == PENDING).group_by(AlertDelivery.receiver)).all()
    return {r: {"pending": int(n), "oldest": oldest, "attempts": int(a or 0)}
            for r, n, oldest, a in rows}
