"""Replaying the audit log: every change records the track's state before and after, so the
current state of a track is the `after` of its newest state-changing event. A mismatch
between replay and the row means a write bypassed the registry."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.audit import track_state
from registry.schema import Event, Track

STATE_KEYS = ("base_encoder_id", "champion_id", "canary_id", "canary_weight",
              "previous_champion_id", "revision", "phase", "unservable_on")


def replay_track(session: Session, track_id: int) -> dict[str, Any] | None:
    state: dict[str, Any] | None = None
    events = session.scalars(select(Event).where(Event.track_id == track_id).order_by(Event.id))
    for ev in events:
        if ev.after is None or "revision" not in ev.after:
            continue  # events that do not change the track (registrations, reports)
        if state is not None and ev.before is not None:
            expected = {k: ev.before.get(k) for k in STATE_KEYS}
            if expected != state:
                raise AssertionError(f"event {ev.id} starts from {expected}, replay has {state}")
        state = {k: ev.after.get(k) for k in STATE_KEYS}
    return state


def verify_track(session: Session, track: Track) -> tuple[bool, dict[str, Any] | None,
                                                          dict[str, Any]]:
    replayed = replay_track(session, track.id)
    actual = track_state(track)
    return replayed == actual, replayed, actual
