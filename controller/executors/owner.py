"""Who runs a job: `host:pid`, and whether that process is still alive (a dead worker's
job is taken over on the next tick; another machine's worker is trusted until timeout)."""

from __future__ import annotations

import os
import socket


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def pid_alive(owner: str | None) -> bool:
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return True  # another machine's worker: trust it until its job times out
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    return True
