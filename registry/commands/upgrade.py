"""Base upgrades: a person (or the policy) asks to move tracks to base B; the controller
carries each track through the loop on B. These functions keep the per-track upgrade row
(registry.upgrades) in step with the track, inside the caller's unit of work.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.commands.lookups import encoder_by_ref
from registry.errors import IncompatibleAdapter, InvalidTransition, NotFound
from registry.languages import canonical_language
from registry.names import task_name
from registry.schema import Adapter, BaseEncoder, BaseUpgrade, Track, utcnow
from registry.uow import UnitOfWork
from registry.upgrades import ACTIVE, NEXT, UpgradeState, UpgradeStatus

ACTIVE_VALUES = tuple(str(s) for s in ACTIVE)


def active_upgrade(session: Session, track: Track) -> BaseUpgrade | None:
    return session.scalars(select(BaseUpgrade).where(
        BaseUpgrade.track_id == track.id, BaseUpgrade.status.in_(ACTIVE_VALUES))
        .order_by(BaseUpgrade.id.desc()).limit(1)).first()


def latest_upgrade(session: Session, track: Track,
                   to_encoder_id: int | None = None) -> BaseUpgrade | None:
    q = select(BaseUpgrade).where(BaseUpgrade.track_id == track.id)
    if to_encoder_id is not None:
        q = q.where(BaseUpgrade.to_encoder_id == to_encoder_id)
    return session.scalars(q.order_by(BaseUpgrade.id.desc()).limit(1)).first()


def upgrade_state(session: Session, row: BaseUpgrade) -> UpgradeState:
    track = session.get(Track, row.track_id)
    source = session.get(BaseEncoder, row.from_encoder_id)
    target = session.get(BaseEncoder, row.to_encoder_id)
    assert track is not None and source is not None and target is not None
    candidate = session.get(Adapter, row.candidate_id) if row.candidate_id else None
    return UpgradeState(id=row.id, task=track.task, language=track.language,
                        from_base=source.ref, to_base=target.ref,
                        to_fingerprint=target.fingerprint, status=UpgradeStatus(row.status),
                        candidate=candidate.version if candidate else None, reason=row.reason,
                        requested_at=row.requested_at, requested_by=row.requested_by,
                        updated_at=row.updated_at)


def request_upgrade(uow: UnitOfWork, base: str, task: str,
                    languages: Sequence[str] | None = None,
                    reason: str | None = None) -> dict[str, str]:
    """Ask for tracks of `task` (all of them, or `languages`) to move to base `base`.

    All-or-nothing: the base must be registered and every named track must exist before
    anything is written. Returns, per language, what happened: requested, already on the
    base, or already requested. A track with an active upgrade to another base is refused."""
    s = uow.session
    task_name(task)
    target = encoder_by_ref(s, base)
    if languages:
        wanted = [canonical_language(x) for x in languages]
    else:
        wanted = list(s.scalars(select(Track.language).where(Track.task == task)
                                .order_by(Track.language)))
        if not wanted:
            raise NotFound(f"task {task!r} has no tracks", "see `xlt status`")
    tracks = []
    for lang in dict.fromkeys(wanted):
        tracks.append(uow.lock_track(task, lang))  # NotFound names a missing track
    outcome: dict[str, str] = {}
    for track in tracks:
        if track.base_encoder_id == target.id:
            outcome[track.language] = f"already on {target.ref}"
            continue
        current = active_upgrade(s, track)
        if current is not None:
            other = s.get(BaseEncoder, current.to_encoder_id)
            assert other is not None
            if current.to_encoder_id == target.id:
                outcome[track.language] = f"already requested ({current.status})"
                continue
            raise InvalidTransition(
                f"track {task}/{track.language} is already upgrading to {other.ref} "
                f"({current.status})", "wait for it to finish, or let it fail first")
        source = s.get(BaseEncoder, track.base_encoder_id)
        assert source is not None
        row = BaseUpgrade(track_id=track.id, from_encoder_id=source.id,
                          to_encoder_id=target.id, status=str(UpgradeStatus.PENDING),
                          reason=reason, requested_by=uow.actor)
        s.add(row)
        s.flush()
        uow.event("upgrade_request", track=track,
                  before={"base": source.ref},
                  after={"upgrade_id": row.id, "from_base": source.ref, "to_base": target.ref,
                         "to_fingerprint": target.fingerprint,
                         "status": str(UpgradeStatus.PENDING)}, reason=reason)
        outcome[track.language] = "requested"
    return outcome


def move_upgrade(uow: UnitOfWork, track: Track, status: UpgradeStatus,
                 candidate_id: int | None = None, reason: str | None = None,
                 emit: bool = True) -> BaseUpgrade | None:
    """Move the track's active upgrade (if any) to `status`; None when it has none.
    emit=False: the caller's own event records it (promote, reject, abort)."""
    s = uow.session
    row = (latest_upgrade(s, track) if status == UpgradeStatus.ROLLED_BACK
           else active_upgrade(s, track))
    if row is None:
        return None
    if UpgradeStatus(row.status) not in NEXT[status]:
        if status == UpgradeStatus.ROLLED_BACK:
            return None  # the newest upgrade is not done: no base move to undo
        raise InvalidTransition(f"upgrade {row.id} of {track.task}/{track.language} is "
                                f"{row.status}, it cannot become {status}",
                                "see `xlt encoder impact`")
    before = row.status
    row.status = str(status)
    if candidate_id is not None:
        row.candidate_id = candidate_id
    if reason is not None:
        row.reason = reason
    row.updated_at = utcnow()
    if emit:
        uow.event("upgrade_status", track=track, adapter_id=row.candidate_id,
                  before={"status": before}, after={"upgrade_id": row.id, "status": row.status},
                  reason=reason)
    return row


def serving_base(uow: UnitOfWork, track: Track, adapter: Adapter, action: str) -> BaseEncoder:
    """The base the track would serve `adapter` on, or IncompatibleAdapter: the track's
    own base when the fingerprints agree, else the target of the track's active upgrade
    when the adapter was trained on it. The contract at canary start and at promote."""
    s = uow.session
    base = s.get(BaseEncoder, track.base_encoder_id)
    assert base is not None
    if adapter.base_fingerprint == base.fingerprint:
        return base
    upgrade = active_upgrade(s, track)
    target = s.get(BaseEncoder, upgrade.to_encoder_id) if upgrade is not None else None
    if target is not None and adapter.base_fingerprint == target.fingerprint:
        return target
    moving = f", upgrading to {target.ref} (fingerprint {target.fingerprint[:12]})" if target \
        else ""
    raise IncompatibleAdapter(
        f"cannot {action} {adapter.ref}: it was trained on base fingerprint "
        f"{adapter.base_fingerprint[:12]} but the track serves {base.ref} (fingerprint "
        f"{base.fingerprint[:12]}){moving}",
        "retrain it on the track's base, or request an upgrade with `xlt encoder upgrade`")
