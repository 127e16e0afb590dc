"""Unit of work: one database transaction per registry command.

Every state change follows the same shape: open a writer transaction, lock the track row,
check preconditions (including the caller's expected revision), change domain objects,
append one event and one outbox row, commit. Any exception rolls everything back.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from registry.audit import enqueue, record_event
from registry.db import Database
from registry.errors import DatabaseNotReady, NotFound, StaleRevision
from registry.schema import Event, Track

Fence = Callable[[Session], None]


class UnitOfWork:
    """Built only by `Registry.unit_of_work`, so that every transaction carries the alert
    receivers (and, for a leader, its fence): none can drop them by being built elsewhere."""

    def __init__(self, db: Database, actor: str, alert_receivers: tuple[str, ...] = (),
                 fence: Fence | None = None) -> None:
        self.db = db
        self.actor = actor
        # webhook receivers (names) that every `alert` event written here is delivered to
        self.alert_receivers = alert_receivers
        # checked first thing in the transaction (the leader lock: LeaderLock.fence)
        self.fence = fence
        self.session: Session
        self.events: list[Event] = []

    def __enter__(self) -> UnitOfWork:
        self.session = self.db.writer()
        try:
            self.session.begin()
        except OperationalError as exc:
            self.session.close()
            raise DatabaseNotReady(f"cannot open the registry database: {exc.orig}",
                                   "check --db / XLT_DATABASE_URL and run `xlt init`") from exc
        if self.fence is not None:
            try:
                self.fence(self.session)
            except BaseException:
                self.session.rollback()
                self.session.close()
                raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc_type is None:
                self.session.commit()
            else:
                self.session.rollback()
        finally:
            self.session.close()

    def lock_track(self, task: str, language: str, expected_revision: int | None = None) -> Track:
        """The track row, locked until commit; refuses if the caller's view is stale."""
        track = self.session.scalars(
            select(Track).where(Track.task == task, Track.language == language).with_for_update()
        ).one_or_none()
        if track is None:
            raise NotFound(f"no track for task {task!r} language {language!r}",
                           "register an adapter for it first (`xlt adapter register`)")
        check_revision(track, expected_revision)
        return track

    def event(self, action: str, *, track: Track | None = None, adapter_id: int | None = None,
              task: str | None = None, language: str | None = None,
              before: dict[str, Any] | None = None, after: dict[str, Any] | None = None,
              reason: str | None = None, payload: dict[str, Any] | None = None) -> Event:
        ev = record_event(self.session, actor=self.actor, action=action, track=track,
                          adapter_id=adapter_id, task=task, language=language, before=before,
                          after=after, reason=reason, payload=payload)
        self.events.append(ev)
        if action == "alert" and self.alert_receivers:
            enqueue(self.session, ev.id, self.alert_receivers)
        return ev


def check_revision(track: Track, expected_revision: int | None) -> None:
    if expected_revision is not None and track.revision != expected_revision:
        raise StaleRevision(
            f"track {track.task}/{track.language} is at revision {track.revision}, "
            f"you expected {expected_revision}",
            "someone changed it meanwhile; read `xlt status` again and retry",
        )
