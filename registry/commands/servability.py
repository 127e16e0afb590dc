"""Marking a track "not servable on <base>", and lifting the mark.

The controller marks a track when every training attempt its policy allows has failed the
gates on the track's base: routing then serves the track's fallback (its parent tag's
champion, or the bare base) instead of waiting for a champion that will not come. The mark
names the base; it stops applying as soon as the track moves to another base (a base
upgrade retries the language), and `clear_not_servable` removes it explicitly.
"""

from __future__ import annotations

from typing import Any

from registry.audit import track_state
from registry.errors import InvalidInput, InvalidTransition
from registry.languages import canonical_language
from registry.schema import BaseEncoder, Track, utcnow
from registry.uow import UnitOfWork


def _base_ref(uow: UnitOfWork, track: Track) -> str:
    base = uow.session.get(BaseEncoder, track.base_encoder_id)
    assert base is not None
    return base.ref


def mark_not_servable(uow: UnitOfWork, task: str, language: str, reason: str,
                      detail: dict[str, Any] | None = None,
                      expected_revision: int | None = None) -> Track:
    """One event (`not_servable`) with the failed gates and best figures in `detail`."""
    if not reason or not reason.strip():
        raise InvalidInput("no reason given for marking the track not servable",
                           "say which gates failed")
    track = uow.lock_track(task, canonical_language(language), expected_revision)
    if track.champion_id is not None:
        raise InvalidTransition(f"track {task}/{track.language} has a champion",
                                "only a track with no champion can be marked not servable")
    before = track_state(track)
    track.unservable_on = _base_ref(uow, track)
    track.revision += 1
    track.updated_at = utcnow()
    uow.event("not_servable", track=track, before=before,
              after={**track_state(track), **(detail or {})}, reason=reason)
    return track


def clear_not_servable(uow: UnitOfWork, task: str, language: str, reason: str,
                       expected_revision: int | None = None) -> Track | None:
    """Lift the mark (a base upgrade, or a person retrying); None when there was none."""
    track = uow.lock_track(task, canonical_language(language), expected_revision)
    if track.unservable_on is None:
        return None
    before = track_state(track)
    track.unservable_on = None
    track.revision += 1
    track.updated_at = utcnow()
    uow.event("servable_again", track=track, before=before, after=track_state(track),
              reason=reason)
    return track


def is_marked(track: Track, base_ref: str) -> bool:
    return track.unservable_on is not None and track.unservable_on == base_ref
