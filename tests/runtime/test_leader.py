"""Leader election: threads of one controller process share the lock; another process
cannot take it until it is released (file lock on SQLite, advisory lock on PostgreSQL)."""

from __future__ import annotations

import multiprocessing as mp
import threading
from pathlib import Path

import pytest

from controller.runtime.leader import LeaderLock
from registry.db import Database


def _other_process_gets_it(url: str, home: str) -> bool:
    lock = LeaderLock(Database(url), Path(home))
    try:
        return lock.acquire()
    finally:
        lock.release()


def _try_in_child(url: str, home: Path) -> bool:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_other_process_gets_it, (url, str(home)))


def test_one_leader_per_database(db_url: str, tmp_path: Path) -> None:
    lock = LeaderLock(Database(db_url), tmp_path)
    assert lock.acquire()
    seen: list[bool] = []
    worker = threading.Thread(target=lambda: seen.append(lock.acquire()))
    worker.start()
    worker.join(10)
    assert seen == [True]  # the outbox drain thread is the same replica as the tick
    assert _try_in_child(db_url, tmp_path) is False
    lock.release()
    assert _try_in_child(db_url, tmp_path) is True


def _advisory_holders(url: str, key: int) -> list[int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(text(
                # advisory locks are per database: another database on the same server
                # (a concurrent test run) may hold the same key
                "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE l.locktype = 'advisory' AND l.objid = :k AND l.granted "
                "AND d.datname = current_database()"), {"k": key})]
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_threads_share_one_lock_connection_through_a_reconnect(pg_url: str,
                                                               tmp_path: Path) -> None:
    """The bug this guards against: the tick and drain threads both reconnected after a
    dropped connection, one took the lock, the other replaced the connection, and the
    lock-holding session was orphaned, so the process stood by forever."""
    from sqlalchemy import create_engine, text

    lines: list[str] = []
    lock = LeaderLock(Database(pg_url), tmp_path, report=lines.append)
    assert lock.acquire()
    first = _advisory_holders(pg_url, lock.key)
    assert len(first) == 1
    for _ in range(5):
        admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_locks "
                              "WHERE locktype = 'advisory' AND objid = :k"), {"k": lock.key})
        admin.dispose()
        barrier = threading.Barrier(8)
        results: list[bool] = []

        def ask(barrier: threading.Barrier = barrier, results: list[bool] = results) -> None:
            barrier.wait(10)
            results.append(lock.acquire())

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert results == [True] * 8  # every thread sees this process lead again
        holders = _advisory_holders(pg_url, lock.key)
        assert len(holders) == 1 and holders != first  # one session holds it: a new one
        first = holders
    # no other process can take it meanwhile, and once released, another can
    assert _try_in_child(pg_url, tmp_path) is False
    lock.release()
    assert _try_in_child(pg_url, tmp_path) is True
    assert sum("lost the leader lock" in ln for ln in lines) == 5, lines
    assert not any("database unavailable" in ln for ln in lines), lines
