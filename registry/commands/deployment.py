"""Moving adapters through a track: canary, weight, promote, abort, rollback, reject, gate.

Each function runs inside the caller's UnitOfWork, locks the track, checks the expected
revision and the preconditions, changes the track, bumps its revision, and records one event.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from registry.audit import track_state
from registry.commands.lookups import adapter_by_version
from registry.domain import (
    CAN_GATE,
    CAN_PROMOTE,
    CAN_REJECT,
    CAN_ROLL_BACK_TO,
    CAN_START_CANARY,
    CANARY,
    CHAMPION,
    GATED,
    REJECTED,
    RETIRED,
    ROLLED_BACK,
    require_compatible,
    require_status,
    validate_weight,
)
from registry.errors import InvalidInput, InvalidTransition, NoChampion
from registry.languages import canonical_language
from registry.schema import Adapter, BaseEncoder, Track, utcnow
from registry.uow import UnitOfWork


def _bump(track: Track) -> None:
    track.revision += 1
    track.updated_at = utcnow()


def _locked(uow: UnitOfWork, task: str, language: str, expected_revision: int | None) -> Track:
    return uow.lock_track(task, canonical_language(language), expected_revision)


def _base(uow: UnitOfWork, track: Track) -> BaseEncoder:
    return uow.session.get(BaseEncoder, track.base_encoder_id)  # type: ignore[return-value]


def start_canary(uow: UnitOfWork, task: str, language: str, version: int, weight: float,
                 expected_revision: int | None = None, reason: str | None = None) -> Track:
    weight = validate_weight(weight)
    track = _locked(uow, task, language, expected_revision)
    candidate = adapter_by_version(uow.session, task, track.language, version)
    if track.champion_id is None:
        raise NoChampion(f"track {task}/{track.language} has no champion to compare a canary with",
                         "promote a first champion with `xlt promote`")
    if track.canary_id is not None:
        current = uow.session.get(Adapter, track.canary_id)
        raise InvalidTransition(
            f"track {task}/{track.language} already runs canary v{current.version}",  # type: ignore[union-attr]
            "abort it first with `xlt canary abort`")
    require_status(candidate, CAN_START_CANARY, "start a canary of")
    require_compatible(candidate, _base(uow, track), "start a canary of")
    before = track_state(track)
    candidate.status = CANARY
    track.canary_id, track.canary_weight = candidate.id, weight
    _bump(track)
    uow.event("canary_start", track=track, adapter_id=candidate.id, before=before,
              after=track_state(track), reason=reason)
    return track


def set_canary_weight(uow: UnitOfWork, task: str, language: str, weight: float,
                      expected_revision: int | None = None, reason: str | None = None) -> Track:
    weight = validate_weight(weight)
    track = _locked(uow, task, language, expected_revision)
    if track.canary_id is None:
        raise InvalidTransition(f"track {task}/{track.language} has no canary",
                                "start one with `xlt canary start`")
    before = track_state(track)
    track.canary_weight = weight
    _bump(track)
    uow.event("canary_weight", track=track, adapter_id=track.canary_id, before=before,
              after=track_state(track), reason=reason)
    return track


def abort_canary(uow: UnitOfWork, task: str, language: str,
                 expected_revision: int | None = None, reason: str | None = None) -> Track:
    track = _locked(uow, task, language, expected_revision)
    if track.canary_id is None:
        raise InvalidTransition(f"track {task}/{track.language} has no canary to abort",
                                "nothing to do")
    before = track_state(track)
    canary = uow.session.get(Adapter, track.canary_id)
    canary.status = REJECTED  # type: ignore[union-attr]
    adapter_id = track.canary_id
    track.canary_id, track.canary_weight = None, 0.0
    _bump(track)
    uow.event("canary_abort", track=track, adapter_id=adapter_id, before=before,
              after=track_state(track), reason=reason)
    return track


def promote(uow: UnitOfWork, task: str, language: str, version: int,
            expected_revision: int | None = None, reason: str | None = None) -> Track:
    track = _locked(uow, task, language, expected_revision)
    candidate = adapter_by_version(uow.session, task, track.language, version)
    require_status(candidate, CAN_PROMOTE, "promote")
    require_compatible(candidate, _base(uow, track), "promote")
    before = track_state(track)
    if track.champion_id is not None:
        old = uow.session.get(Adapter, track.champion_id)
        old.status = RETIRED  # type: ignore[union-attr]
        track.previous_champion_id = track.champion_id
    if track.canary_id == candidate.id:
        track.canary_id, track.canary_weight = None, 0.0
    candidate.status = CHAMPION
    track.champion_id = candidate.id
    _bump(track)
    uow.event("promote", track=track, adapter_id=candidate.id, before=before,
              after=track_state(track), reason=reason)
    return track


def _last_good_other_than(uow: UnitOfWork, track: Track, exclude: set[int]) -> int | None:
    """The newest retired champion of the track, to keep as `previous` after a rollback."""
    q = (select(Adapter.id).where(Adapter.task == track.task, Adapter.language == track.language,
                                  Adapter.status == RETIRED, Adapter.id.not_in(exclude))
         .order_by(Adapter.version.desc()).limit(1))
    return uow.session.scalar(q)


def rollback(uow: UnitOfWork, task: str, language: str, to_version: int | None = None,
             expected_revision: int | None = None, reason: str | None = None) -> Track:
    track = _locked(uow, task, language, expected_revision)
    if to_version is None:
        if track.previous_champion_id is None:
            raise NoChampion(f"track {task}/{track.language} has no previous champion",
                             "name a version with `xlt rollback --to VERSION`")
        target = uow.session.get(Adapter, track.previous_champion_id)
    else:
        target = adapter_by_version(uow.session, task, track.language, to_version)
    assert target is not None
    if target.id == track.champion_id:
        raise InvalidTransition(f"{target.ref} is already the champion", "nothing to do")
    require_status(target, CAN_ROLL_BACK_TO, "roll back to")
    require_compatible(target, _base(uow, track), "roll back to")
    before = track_state(track)
    if track.champion_id is not None:
        bad = uow.session.get(Adapter, track.champion_id)
        bad.status = ROLLED_BACK  # type: ignore[union-attr]
    target.status = CHAMPION
    track.champion_id = target.id
    track.previous_champion_id = _last_good_other_than(uow, track, {target.id})
    _bump(track)
    uow.event("rollback", track=track, adapter_id=target.id, before=before,
              after=track_state(track), reason=reason)
    return track


def mark_gated(uow: UnitOfWork, task: str, language: str, version: int,
               reason: str | None = None) -> Adapter:
    track = _locked(uow, task, language, None)
    adapter = adapter_by_version(uow.session, task, track.language, version)
    require_status(adapter, CAN_GATE, "mark as gated")
    adapter.status = GATED
    uow.event("gated", track=track, adapter_id=adapter.id, after={"status": GATED},
              reason=reason)
    return adapter


def reject(uow: UnitOfWork, task: str, language: str, version: int,
           reason: str | None = None) -> Adapter:
    track = _locked(uow, task, language, None)
    adapter = adapter_by_version(uow.session, task, track.language, version)
    require_status(adapter, CAN_REJECT, "reject")
    before = track_state(track)
    if track.canary_id == adapter.id:
        track.canary_id, track.canary_weight = None, 0.0
        _bump(track)
    adapter.status = REJECTED
    uow.event("reject", track=track, adapter_id=adapter.id, before=before,
              after=track_state(track), reason=reason)
    return adapter


def set_phase(uow: UnitOfWork, task: str, language: str, phase: str,
              phase_data: dict[str, Any] | None = None, expected_revision: int | None = None,
              reason: str | None = None) -> Track:
    """The controller's bookkeeping: which step of the loop the track is in."""
    if not phase:
        raise InvalidInput("empty phase", "give the controller phase")
    track = _locked(uow, task, language, expected_revision)
    before = track_state(track)
    track.phase, track.phase_data = phase, dict(phase_data or {})
    _bump(track)
    uow.event("phase", track=track, before=before, after={**track_state(track),
                                                         "phase_data": track.phase_data},
              reason=reason)
    return track
