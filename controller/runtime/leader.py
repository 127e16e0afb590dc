"""Leader election among controller replicas: only the holder of the lock acts.

PostgreSQL: a session-level advisory lock held on one dedicated connection (the server
releases it when that session ends: process death, pg_terminate_backend, a restart).
SQLite: an exclusive file lock next to the database file.

One owner per lock connection: a LeaderLock is the only user of its connection, and every
call (the tick thread, the outbox drain thread, the heartbeat) goes through one mutex, so
no thread can replace the connection another thread just took the lock on. The connection
comes from its own engine without a pool: a dead one is closed, never handed back.

A leader that lost its lock must stop acting before another replica starts: `ensure()`
is checked before each step, and `fence(session)` inside each registry transaction checks
that the backend holding our lock still holds it. (If the lock goes between that check and
the commit, the other replica's SELECT ... FOR UPDATE of the track waits for our commit and
then sees a new revision, so its step is refused as stale: the revision is the last fence.)

A holder that hangs with its session alive (SIGSTOP, a stuck process) would keep the lock
for as long as it hangs: the lock's session still answers the server. So the lock is also a
lease. The holder asks the server whether it holds the lock every heartbeat, which renews
its session's `query_start`; a standby that finds the holder silent for longer than
`lease_s` ends the holder's session (pg_terminate_backend, in this database only) and takes
the lock. The hung holder, when it wakes, fails its next fence and stops acting; a
transaction of its already past the fence is refused by the track's revision.

Outages are reported once: one line when the lock or the database is lost, one when the
lock is held again, with how long it took; nothing per failed attempt.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from registry.db import Database, db_unavailable

LOCK_NAME = "xlt-controller"
CONNECT_TIMEOUT_S = 3  # a down server must not stall the heartbeat for long
log = logging.getLogger("xlt.controller")

_HELD = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = :k "
         "AND pid = {pid} AND granted")
# the session holding the lock in this database, and how long since it last asked anything
_HOLDER = ("SELECT l.pid, EXTRACT(EPOCH FROM now() - a.query_start) FROM pg_locks l "
           "JOIN pg_database d ON d.oid = l.database JOIN pg_stat_activity a ON a.pid = l.pid "
           "WHERE l.locktype = 'advisory' AND l.objid = :k AND l.granted "
           "AND d.datname = current_database()")
LEASE_S = 120.0  # the default; a policy sets its own (leader_lease_s)


class LostLeadership(Exception):  # noqa: N818 (a signal to stop, not a user error)
    """This replica does not hold the leader lock (any more): it must not act."""


class LeaderLock:
    def __init__(self, db: Database, home: Path,
                 report: Callable[[str], None] | None = None,
                 lease_s: float = LEASE_S) -> None:
        self.db = db
        self.lease_s = lease_s
        self.home = home
        self.key = zlib.crc32(LOCK_NAME.encode())
        self.report = report or log.warning
        self._mutex = threading.RLock()
        self._engine: Any = None
        self._conn: Any = None
        self._pid: int | None = None  # server pid of the session holding our lock
        self._file: FileLock | None = None
        self.leading = False
        self._down_since: float | None = None  # outage or lost lock, for the "back" line
        self._standby_said = False
        self.changes = 0  # times leadership was gained; a caller can notice a new term

    # -- asking --------------------------------------------------------------------------
    def acquire(self) -> bool:
        """Non-blocking; True when this process is (or stays) the leader. Reconnects and
        re-takes the lock when its connection died."""
        with self._mutex:
            if self.db.is_sqlite:
                return self._acquire_file()
            if self.leading and self._still_held():
                self._back("still leading")  # a job's database error passed
                return True
            return self._take()

    def ensure(self) -> None:
        """Raise LostLeadership unless this replica holds the lock right now."""
        if not self.acquire() or not self.leading:
            raise LostLeadership("this controller replica does not hold the leader lock")

    def fence(self, session: Session) -> None:
        """Inside a registry transaction: refuse to go on unless our lock is still held."""
        with self._mutex:
            if self.db.is_sqlite:
                held = self._file is not None and self._file.is_locked
            else:
                pid = self._pid
                held = self.leading and pid is not None and bool(session.execute(
                    text(_HELD.format(pid=int(pid))), {"k": self.key}).scalar())
            if not held:
                self._lose("the leader lock is no longer held")
                raise LostLeadership("the leader lock was lost; this replica stops acting")

    def note_database_error(self, exc: BaseException) -> None:
        """A job failed on the database: report the outage once (not per job), and make
        the next acquire() verify the lock connection."""
        with self._mutex:
            self._outage(exc)

    # -- PostgreSQL ----------------------------------------------------------------------
    def _lock_engine(self) -> Any:
        if self._engine is None:
            self._engine = create_engine(
                self.db.url, poolclass=NullPool, isolation_level="AUTOCOMMIT",
                connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
        return self._engine

    def _still_held(self) -> bool:
        try:
            held = self._conn.execute(text(_HELD.format(pid="pg_backend_pid()")),
                                      {"k": self.key}).scalar()
        except Exception as exc:  # the session died, and the server released our lock
            self._lose(f"lost the leader lock: its database connection failed "
                       f"({_reason(exc)})")
            return False
        if not held:
            self._lose("lost the leader lock: the server no longer shows it held")
            return False
        return True

    def _take(self) -> bool:
        # a standby's kept connection may have been terminated while the server is up:
        # then one fresh connection answers, and no outage is reported
        for fresh in ((False, True) if self._conn is not None else (True,)):
            try:
                if fresh:
                    self._conn = self._lock_engine().connect()
                got = bool(self._conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                              {"k": self.key}).scalar())
                pid = int(self._conn.execute(text("SELECT pg_backend_pid()")).scalar())
                break
            except Exception as exc:
                self._close()
                if fresh:
                    self._outage(exc)
                    return False
        if not got and self._end_hung_holder():
            # the ended session lets go of its locks as it exits: a moment, not at once
            for _ in range(50):
                got = bool(self._conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                              {"k": self.key}).scalar())
                if got:
                    break
                time.sleep(0.05)
        if not got:
            if not self._standby_said:
                self.report("standby: another controller replica holds the leader lock")
                self._standby_said = True
            self._back("standing by")
            return False
        self._pid, self.leading, self._standby_said = pid, True, False
        self.changes += 1
        after = "" if self._down_since is None else (
            f" again, {time.monotonic() - self._down_since:.1f} s after losing the lock")
        self._down_since = None
        self.report(f"leader: leading{after} (lock session pid {pid})")
        return True

    def _end_hung_holder(self) -> bool:
        """End the holder's session when it has been silent past the lease (hung, not
        dead: a dead session frees the lock by itself). True when one was ended."""
        try:
            row = self._conn.execute(text(_HOLDER), {"k": self.key}).first()
            if row is None or row[1] is None or float(row[1]) <= self.lease_s:
                return False
            ended = bool(self._conn.execute(text("SELECT pg_terminate_backend(:p)"),
                                            {"p": int(row[0])}).scalar())
        except Exception as exc:  # the server went away meanwhile: the next heartbeat
            log.debug("leader: checking the holder's lease failed: %s", exc)
            return False
        if ended:
            self.report(f"leader: the holder (lock session pid {row[0]}) asked nothing for "
                        f"{float(row[1]):.0f} s, past the {self.lease_s:g} s lease: its "
                        "session was ended")
        return ended

    def _lose(self, why: str) -> None:
        was = self.leading
        self.leading, self._pid = False, None
        self._close()
        if was and self._down_since is None:  # an outage already reported says it all
            self.report(f"leader: {why}; acting stopped, re-taking it when the database "
                        "answers")
            self._down_since = time.monotonic()

    def _outage(self, exc: BaseException) -> None:
        if self._down_since is None:
            self.report(f"leader: database unavailable ({_reason(exc)}); nothing acts "
                        "until it answers again")
            self._down_since = time.monotonic()
        if self.leading and self._conn is not None and not self.db.is_sqlite:
            self._still_held()  # drops leadership now if the lock went with the database

    def _back(self, what: str) -> None:
        if self._down_since is not None:
            self.report(f"leader: database answering again after "
                        f"{time.monotonic() - self._down_since:.1f} s; {what}")
            self._down_since = None

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # never reuse a connection whose session may be gone; closing a dead socket
            # may fail, and there is nothing more to do then
            with contextlib.suppress(Exception):
                conn.invalidate()
                conn.close()

    # -- SQLite --------------------------------------------------------------------------
    def _acquire_file(self) -> bool:
        if self._file is None:
            self.home.mkdir(parents=True, exist_ok=True)
            # one lock for the whole process: the tick and the outbox drain run on
            # different scheduler threads and are the same replica
            self._file = FileLock(str(self.home / "controller.lock"), thread_local=False)
        if self._file.is_locked:
            self.leading = True
            return True
        try:
            self._file.acquire(timeout=0)
        except Timeout:
            return False
        self.leading = True
        self.changes += 1
        return True

    def release(self) -> None:
        with self._mutex:
            self.leading = False
            if self._file is not None and self._file.is_locked:
                self._file.release(force=True)
            if self._conn is not None:
                # a dead session released it already
                with contextlib.suppress(Exception):
                    self._conn.execute(text("SELECT pg_advisory_unlock_all()"))
                self._close()
            self._pid = None


def is_database_error(exc: BaseException) -> bool:
    """A lost lock counts as the database going away; else as `registry.db` says."""
    return isinstance(exc, LostLeadership) or db_unavailable(exc)


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return (lines[0] if lines else type(orig).__name__)[:200]
