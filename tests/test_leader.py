"""Leader election: threads of one controller process share the lock; another process
cannot take it until it is released (file lock on SQLite, advisory lock on PostgreSQL)."""

from __future__ import annotations

import multiprocessing as mp
import threading
from pathlib import Path

from controller.leader import LeaderLock
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
