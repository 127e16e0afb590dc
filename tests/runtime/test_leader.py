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


_HOLDER = """
import sys, time
from pathlib import Path
from controller.runtime.leader import LeaderLock, LostLeadership
from registry.db import Database
lock = LeaderLock(Database(sys.argv[1]), Path(sys.argv[2]), report=lambda line: None,
                  lease_s=2.0)
assert lock.acquire()
print("leading", flush=True)
while True:  # the heartbeat: asks the server every 0.1 s while it runs
    if not lock.acquire():
        print("lost", flush=True)
        break
    time.sleep(0.1)
db = Database(sys.argv[1])
with db.writer() as session:
    try:
        lock.fence(session)
        print("fence passed", flush=True)
    except LostLeadership:
        print("fenced out", flush=True)
"""


@pytest.mark.postgres
def test_a_hung_leader_loses_the_lock_past_its_lease(pg_url: str, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[2]
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, pg_url, str(tmp_path)],
                              cwd=root, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(root)})
    lines: list[str] = []
    standby = LeaderLock(Database(pg_url), tmp_path, report=lines.append, lease_s=2.0)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "leading"
        time.sleep(3.0)
        assert standby.acquire() is False  # a live holder keeps renewing: no takeover
        holder.send_signal(signal.SIGSTOP)  # hung: its session stays open and silent
        deadline = time.monotonic() + 20
        while not standby.acquire() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert standby.leading, lines
        assert any("past the 2 s lease: its session was ended" in line for line in lines)
        assert len(_advisory_holders(pg_url, standby.key)) == 1
        holder.send_signal(signal.SIGCONT)
        out, _ = holder.communicate(timeout=30)
        assert out.split() == ["lost", "fenced", "out"], out  # it woke and stopped acting
        assert standby.acquire()  # and never took the lock back
    finally:
        if holder.poll() is None:
            holder.send_signal(signal.SIGCONT)
            holder.kill()
        standby.release()
