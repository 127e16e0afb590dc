"""Moving adapters through a track: canary, weight, promote, abort, rollback, reject, gate.

Each function runs inside the caller's UnitOfWork, locks the track, checks the expected
revision and the preconditions, changes the track, bumps its revision, and records one event.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from registry.audit import track_state
from registry.commands.lookups import adapter_by_version
from registry.commands.upgrade import active_upgrade, move_upgrade, serving_base
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
    require_status,
    validate_weight,
)
from registry.errors import InvalidInput, InvalidTransition, NoChampion
from registry.languages import canonical_language
from registry.schema import Adapter, BaseEncoder, Track, utcnow
from registry.uow import UnitOfWork
from registry.upgrades import UpgradeStatus


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
    # an upgrade candidate runs on the target base beside the champion on the old one
    base = serving_base(uow, track, candidate, "start a canary of")
    before = track_state(track)
    candidate.status = CANARY
    track.canary_id, track.canary_weight = candidate.id, weight
    _bump(track)
    extra = {}
    if base.id != track.base_encoder_id:
        row = move_upgrade(uow, track, UpgradeStatus.CANARY, candidate.id, emit=False)
        extra = {"canary_base": base.ref, "upgrade_id": row.id if row else None}
    uow.event("canary_start", track=track, adapter_id=candidate.id, before=before,
              after={**track_state(track), **extra}, reason=reason)
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
    extra = _fail_upgrade_of(uow, track, adapter_id, f"canary aborted: {reason or 'by hand'}")
    uow.event("canary_abort", track=track, adapter_id=adapter_id, before=before,
              after={**track_state(track), **extra}, reason=reason)
    return track


def promote(uow: UnitOfWork, task: str, language: str, version: int,
            expected_revision: int | None = None, reason: str | None = None) -> Track:
    track = _locked(uow, task, language, expected_revision)
    candidate = adapter_by_version(uow.session, task, track.language, version)
    require_status(candidate, CAN_PROMOTE, "promote")
    old_base = _base(uow, track)
    new_base = serving_base(uow, track, candidate, "promote")
    before = {**track_state(track), "base": old_base.ref}
    extra: dict[str, Any] = {}
    if new_base.id != old_base.id:
        # an upgrade: base and champion move together; `previous` stays on the old base
        track.base_encoder_id = new_base.id
        row = move_upgrade(uow, track, UpgradeStatus.DONE, candidate.id,
                           f"promoted v{candidate.version} on {new_base.ref}", emit=False)
        extra = {"from_base": old_base.ref, "to_base": new_base.ref,
                 "upgrade_id": row.id if row else None}
    if track.champion_id is not None:
        old = uow.session.get(Adapter, track.champion_id)
        old.status = RETIRED  # type: ignore[union-attr]
        track.previous_champion_id = track.champion_id
    if track.canary_id == candidate.id:
        track.canary_id, track.canary_weight = None, 0.0
    candidate.status = CHAMPION
    track.champion_id = candidate.id
    track.unservable_on = None  # a champion on this base: servable after all
    _bump(track)
    uow.event("promote", track=track, adapter_id=candidate.id, before=before,
              after={**track_state(track), "base": new_base.ref, **extra}, reason=reason)
    return track


def _fail_upgrade_of(uow: UnitOfWork, track: Track, adapter_id: int | None,
                     reason: str) -> dict[str, Any]:
    """A rejected or aborted upgrade candidate fails its upgrade: the track stays put."""
    row = active_upgrade(uow.session, track)
    if row is None or row.candidate_id is None or row.candidate_id != adapter_id:
        return {}
    move_upgrade(uow, track, UpgradeStatus.FAILED, None, reason.strip(), emit=False)
    return {"upgrade_id": row.id, "upgrade_status": str(UpgradeStatus.FAILED)}


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
    old_base = _base(uow, track)
    # the target is served on the base it was trained on: a rollback across an upgrade
    # returns the track to the old base together with the old champion
    new_base = uow.session.get(BaseEncoder, target.base_encoder_id)
    assert new_base is not None
    before = {**track_state(track), "base": old_base.ref}
    extra: dict[str, Any] = {}
    if new_base.id != old_base.id:
        if track.canary_id is not None:
            raise InvalidTransition(
                f"cannot roll {task}/{track.language} back to {new_base.ref} while canary "
                f"{track.canary_id} runs on {old_base.ref}", "abort the canary first")
        if active_upgrade(uow.session, track) is not None:
            raise InvalidTransition(f"track {task}/{track.language} has an upgrade in flight",
                                    "let it finish or fail first")
        track.base_encoder_id = new_base.id
        row = move_upgrade(uow, track, UpgradeStatus.ROLLED_BACK, None,
                           f"rolled back to {target.ref} on {new_base.ref}", emit=False)
        extra = {"from_base": old_base.ref, "to_base": new_base.ref,
                 "upgrade_id": row.id if row else None}
    if track.champion_id is not None:
        bad = uow.session.get(Adapter, track.champion_id)
        bad.status = ROLLED_BACK  # type: ignore[union-attr]
    target.status = CHAMPION
    track.champion_id = target.id
    track.previous_champion_id = _last_good_other_than(uow, track, {target.id})
    _bump(track)
    uow.event("rollback", track=track, adapter_id=target.id, before=before,
              after={**track_state(track), "base": new_base.ref, **extra}, reason=reason)
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
    extra = _fail_upgrade_of(uow, track, adapter.id, f"v{version} rejected: {reason or ''}")
    uow.event("reject", track=track, adapter_id=adapter.id, before=before,
              after={**track_state(track), **extra}, reason=reason)
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


def advance_upgrade(uow: UnitOfWork, task: str, language: str, status: str,
                    candidate_version: int | None = None, reason: str | None = None
                    ) -> dict[str, Any] | None:
    """The controller's step of a track's active upgrade (training, gating, failed);
    None when the track has no active upgrade."""
    track = _locked(uow, task, language, None)
    candidate_id = None
    if candidate_version is not None:
        candidate_id = adapter_by_version(uow.session, task, track.language,
                                          candidate_version).id
    if status not in UpgradeStatus.__members__.values():
        raise InvalidInput(f"upgrade status {status!r} unknown",
                           f"use one of {', '.join(UpgradeStatus)}")
    row = move_upgrade(uow, track, UpgradeStatus(status), candidate_id, reason)
    return None if row is None else {"upgrade_id": row.id, "status": row.status}
