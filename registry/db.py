"""Engines and sessions for both backends.

SQLite: writers open with BEGIN IMMEDIATE so that the write lock is taken before the track is
read (the SQLite stand-in for SELECT ... FOR UPDATE); readers use a plain deferred BEGIN so
they never queue behind a writer. PostgreSQL: row locks with SELECT ... FOR UPDATE.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from registry.settings import normalise_database_url

_lock = threading.Lock()
_engines: dict[tuple[str, bool], Engine] = {}


def _sqlite_engine(url: str, immediate: bool) -> Engine:
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, emit BEGIN, so that we choose its kind.
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        if ":memory:" not in url and url != "sqlite://":
            cur.execute("PRAGMA journal_mode=WAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def get_engine(url: str, *, writer: bool = True) -> Engine:
    """One engine per (URL, role) per process; engines are not shared across fork."""
    url = normalise_database_url(url)
    key = (url, writer if url.startswith("sqlite") else True)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            if url.startswith("sqlite"):
                engine = _sqlite_engine(url, immediate=writer)
            else:
                engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
            _engines[key] = engine
        return engine


def dispose_engines() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@dataclass
class Database:
    """The pair of session factories for one database URL."""

    url: str

    def __post_init__(self) -> None:
        self.url = normalise_database_url(self.url)
        self._writer = sessionmaker(get_engine(self.url, writer=True), expire_on_commit=False)
        self._reader = sessionmaker(get_engine(self.url, writer=False), expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @property
    def engine(self) -> Engine:
        return get_engine(self.url, writer=True)

    @property
    def read_engine(self) -> Engine:
        return get_engine(self.url, writer=False)

    def writer(self) -> Session:
        return self._writer()

    def reader(self) -> Session:
        return self._reader()


def db_unavailable(exc: BaseException) -> bool:
    """The database went away (connection refused/reset, server shutting down, session
    terminated), as opposed to a bug: reported once per outage, without a traceback."""
    from sqlalchemy.exc import DBAPIError

    from registry.errors import DatabaseNotReady

    if isinstance(exc, DatabaseNotReady):
        return True
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated) or type(exc.orig).__name__ in (
            "OperationalError", "InterfaceError", "AdminShutdown", "CannotConnectNow")
    return False
