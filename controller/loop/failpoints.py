"""Fault injection for crash drills: with XLT_FAILPOINT_KILL_AFTER_COMMITS=N in the
environment, the controller SIGKILLs itself right after its Nth committed transition.
Unset (always, outside drills) it costs one dictionary lookup per transition."""

from __future__ import annotations

import os
import signal

_ENV = "XLT_FAILPOINT_KILL_AFTER_COMMITS"
_commits = 0


def after_commit() -> None:
    global _commits
    limit = os.environ.get(_ENV)
    if not limit:
        return
    _commits += 1
    if _commits >= int(limit):
        os.kill(os.getpid(), signal.SIGKILL)
