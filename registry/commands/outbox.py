"""The outbox: rows written with each event, drained in order per track by the MLflow mirror.

Delivery is at-least-once: a consumer claims pending rows, applies them (idempotently), and
marks each delivered or failed with an exponential backoff. Order per ordering key holds
because a key's later rows wait while an earlier row of the same key is undelivered.

Any number of drains may run at once (the controller's, `xlt mlflow sync`, ...): `claim`
gives each drain only the *first* undelivered row of a key, and only when no other drain
holds it, so a row is delivered by one drain and a key's rows one after another. The
claim is a lease (claimed_by, claimed_until) written in a short transaction; on PostgreSQL
the rows are picked with FOR UPDATE SKIP LOCKED, so concurrent claimers neither wait on
nor take each other's rows; on SQLite the writer's BEGIN IMMEDIATE serialises claimers.
No transaction stays open while MLflow is called. A drain that dies leaves its lease to
expire (LEASE_S), after which another drain delivers the row again (handlers are
idempotent).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import aliased

from registry.errors import NotFound
from registry.schema import OutboxMessage, utcnow
from registry.uow import UnitOfWork

MAX_BACKOFF_S = 300.0
LEASE_S = 300.0  # longer than any one delivery (MLflow calls time out well before)


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


def claim(uow: UnitOfWork, consumer: str, limit: int = 100,
          lease_s: float = LEASE_S) -> list[OutboxMessage]:
    """Lease up to `limit` rows to `consumer`: each the first undelivered row of its key,
    due (not backing off), and not under another live lease. Oldest first."""
    now = utcnow()
    o, earlier = OutboxMessage, aliased(OutboxMessage)
    blocked = select(earlier.id).where(earlier.ordering_key == o.ordering_key,
                                       earlier.delivered_at.is_(None),
                                       earlier.id < o.id).exists()
    q = (select(o).where(o.delivered_at.is_(None),
                         or_(o.next_attempt_at.is_(None), o.next_attempt_at <= now),
                         or_(o.claimed_until.is_(None), o.claimed_until < now),
                         ~blocked)
         .order_by(o.id).limit(limit))
    if not uow.db.is_sqlite:
        q = q.with_for_update(skip_locked=True, of=o)
    rows = list(uow.session.scalars(q).all())
    until = now + timedelta(seconds=lease_s)
    for row in rows:
        row.claimed_by, row.claimed_until = consumer[:200], until
    return rows


def release(uow: UnitOfWork, consumer: str) -> int:
    """Give back every undelivered row `consumer` still holds (a drain that stops early)."""
    result = uow.session.execute(
        update(OutboxMessage).where(OutboxMessage.claimed_by == consumer[:200],
                                    OutboxMessage.delivered_at.is_(None))
        .values(claimed_by=None, claimed_until=None))
    return int(result.rowcount or 0)


def _row(uow: UnitOfWork, outbox_id: int) -> OutboxMessage:
    row = uow.session.get(OutboxMessage, outbox_id, with_for_update=True)
    if row is None:
        raise NotFound(f"no outbox row {outbox_id}", "")
    return row


def mark_delivered(uow: UnitOfWork, outbox_id: int) -> None:
    row = _row(uow, outbox_id)
    if row.delivered_at is not None:
        return  # another drain delivered it after our lease ran out: nothing to record
    row.delivered_at, row.attempts, row.last_error = utcnow(), row.attempts + 1, None
    row.claimed_by = row.claimed_until = None


def mark_failed(uow: UnitOfWork, outbox_id: int, error: str, base_delay_s: float = 1.0) -> float:
    """Record a failed delivery; returns the backoff until the next attempt (seconds)."""
    row = _row(uow, outbox_id)
    row.attempts += 1
    delay = min(MAX_BACKOFF_S, base_delay_s * 2 ** (row.attempts - 1))
    row.next_attempt_at = utcnow() + timedelta(seconds=delay)
    row.last_error = error[:2000]
    row.claimed_by = row.claimed_until = None
    return delay


def backlog(uow: UnitOfWork) -> dict[str, Any]:
    rows = uow.session.scalars(select(OutboxMessage).where(
        OutboxMessage.delivered_at.is_(None))).all()
    return {"pending": len(rows), "failing": sum(1 for r in rows if r.attempts > 0),
            "oldest_id": min((r.id for r in rows), default=None)}
