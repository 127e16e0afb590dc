"""Audit events, their outbox rows and (for alerts) their delivery rows, written in the same
transaction as the change."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from registry.schema import AlertDelivery, Event, OutboxMessage, Track

PENDING, DELIVERED = "pending", "delivered"  # alert_deliveries.status


def track_state(track: Track) -> dict[str, Any]:
    """The part of a track that events record before and after; replay rebuilds it."""
    return {
        "base_encoder_id": track.base_encoder_id,
        "champion_id": track.champion_id,
        "canary_id": track.canary_id,
        "canary_weight": track.canary_weight,
        "previous_champion_id": track.previous_champion_id,
        "revision": track.revision,
        "phase": track.phase,
        "unservable_on": track.unservable_on,
    }


def record_event(session: Session, *, actor: str, action: str, track: Track | None = None,
                 adapter_id: int | None = None, task: str | None = None,
                 language: str | None = None, before: dict[str, Any] | None = None,
                 after: dict[str, Any] | None = None, reason: str | None = None,
                 payload: dict[str, Any] | None = None) -> Event:
    if track is not None:
        task, language = track.task, track.language
    ev = Event(actor=actor, action=action, task=task, language=language,
               track_id=track.id if track is not None else None, adapter_id=adapter_id,
               before=before, after=after, reason=reason)
    session.add(ev)
    session.flush()  # the outbox row points at the event id
    ordering_key = f"{task}/{language}" if task else f"global/{action}"
    session.add(OutboxMessage(
        event_id=ev.id, topic=action, ordering_key=ordering_key,
        payload={"event_id": ev.id, "action": action, "task": task, "language": language,
                 "adapter_id": adapter_id, "before": before, "after": after,
                 "reason": reason, "actor": actor, **(payload or {})},
    ))
    return ev


def enqueue(session: Session, event_id: int, receivers: tuple[str, ...] | list[str]) -> int:
    """Delivery rows for one alert event (inside the event's own transaction)."""
    for name in dict.fromkeys(receivers):
        session.add(AlertDelivery(event_id=event_id, receiver=name, status=PENDING,
                                  attempts=0))
    session.flush()
    return len(set(receivers))
