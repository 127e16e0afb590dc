"""Leader election among controller replicas: only the holder of the lock acts.

PostgreSQL: a session-level advisory lock held on a dedicated connection (released by the
server if the process dies). SQLite: an exclusive file lock next to the database file.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from sqlalchemy import text

from registry.db import Database

LOCK_NAME = "xlt-controller"


class LeaderLock:
    def __init__(self, db: Database, home: Path) -> None:
        self.db = db
        self.home = home
        self._conn: Any = None
        self._file: FileLock | None = None
        self.key = zlib.crc32(LOCK_NAME.encode())

    def acquire(self) -> bool:
        """Non-blocking; True when this process is (or stays) the leader."""
        if self.db.is_sqlite:
            if self._file is None:
                self.home.mkdir(parents=True, exist_ok=True)
                # one lock for the whole process: the tick and the outbox drain run on
                # different scheduler threads and are the same replica
                self._file = FileLock(str(self.home / "controller.lock"), thread_local=False)
            try:
                self._file.acquire(timeout=0)
                return True
            except Timeout:
                return False
        if self._conn is not None:
            try:
                held = self._conn.execute(text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND objid = :k AND pid = pg_backend_pid() AND granted"),
                    {"k": self.key}).scalar()
                if held:
                    return True
            except Exception:  # the connection died: the server released the lock
                self._conn = None
        if self._conn is None:
            self._conn = self.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        got = self._conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar()
        return bool(got)

    def release(self) -> None:
        if self._file is not None and self._file.is_locked:
            self._file.release(force=True)
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            finally:
                self._conn.close()
                self._conn = None
