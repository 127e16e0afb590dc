"""Two controller replicas running at once on PostgreSQL never both act on a track: only the
holder of the leader lock (a session advisory lock) acts, the other stands by; when the
leader is SIGKILLed mid-canary, the standby takes over and finishes the loop.

The test process owns the simulated hour: it serves that hour's traffic, announces the
hour in a file, and moves on when the leader has ticked at that hour with nothing left to
do. Both replicas (child processes) tick every 0.1 s with their clocks at the end of the
announced hour. Every transition is an audit event carrying its replica's actor name.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from registry import queries
from tests.support import crash_driver as drv
from tests.support.loop_support import TASK, Drill, final_state, setup

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ACTORS = ("replica-A", "replica-B")
MAX_HOURS = 10  # the loop settles by hour 5 (several ticks per hour)
HOUR_TIMEOUT_S = 150  # the first hour includes starting the replicas and two trainings
REPLICA_LIMIT_S = 480  # replicas stop by themselves after this, whatever happens here


def _status(work: Path, actor: str) -> dict[str, Any] | None:
    path = work / f"{actor}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _logs(work: Path) -> str:
    return "\n".join(f"--- {a}\n{drv.log_tail(work / f'{a}.log')}" for a in ACTORS)


def _max_event_id(reg: Any) -> int:
    return max((e["id"] for e in reg.query(queries.history)), default=0)


def test_two_replicas_never_both_act(pg_url: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    setup(pg_url, home, tiny_model_dir)
    traffic = Drill(pg_url, home, policy=drv.drill_policy(), actor="traffic")
    reg = traffic.reg
    drv.write_atomic(work / "hour", "0")
    ctx = drv.context()
    procs = {a: drv.start(ctx, drv.run_replica, pg_url, str(home), a, str(work),
                          REPLICA_LIMIT_S) for a in ACTORS}
    killed: str | None = None
    standby: str | None = None
    before_kill = -1
    timeline: list[str] = []

    def wait_for(what: str, cond: Callable[[], bool], timeout: float) -> None:
        end = time.monotonic() + timeout
        while not cond():
            dead = [a for a, p in procs.items() if a != killed and not p.is_alive()]
            assert not dead, f"{dead} exited ({what})\n{_logs(work)}"
            assert time.monotonic() < end, f"timed out waiting: {what}\n{_logs(work)}"
            time.sleep(0.2)

    def hour_done(hour: int) -> bool:  # a live leader ticked at `hour` and changed nothing
        return any((s := _status(work, a)) and s["hour"] == hour and s["leader"]
                   and s["idle"] >= 1 for a in ACTORS if a != killed)

    try:
        settled = False
        for hour in range(MAX_HOURS):
            traffic.serve_hour(hour)  # only languages with a champion get traffic
            drv.write_atomic(work / "hour", str(hour))
            wait_for(f"a leader done with hour {hour}", lambda h=hour: hour_done(h),
                     HOUR_TIMEOUT_S)
            rows = {r["language"]: r for r in reg.status(TASK)}
            timeline.append(f"hour {hour}: " + ", ".join(
                f"{lang} {r['phase']} champion v{r['champion']} canary v{r['canary']}"
                for lang, r in rows.items()))
            print(timeline[-1], flush=True)
            if killed is None and rows["hi"]["phase"] == "CANARY":
                statuses = {a: _status(work, a) for a in ACTORS}
                leaders = [a for a, s in statuses.items() if s and s["led_ticks"]]
                assert len(leaders) == 1, statuses
                killed = leaders[0]
                standby = next(a for a in ACTORS if a != killed)
                s = statuses[standby]
                assert s is not None and procs[standby].is_alive()
                # the standby really ran alongside, ticking at this hour, and never led
                assert s["hour"] == hour and s["ticks"] >= 10 and s["led_ticks"] == 0, s
                before_kill = _max_event_id(reg)
                os.kill(procs[killed].pid, signal.SIGKILL)
                procs[killed].join(10)
                assert procs[killed].exitcode == -signal.SIGKILL
                print(f"hour {hour}: SIGKILLed leader {killed} (pid {procs[killed].pid}); "
                      f"last event before the kill: {before_kill}", flush=True)
                wait_for(f"{standby} takes over", lambda h=hour: hour_done(h), 60)
            settled = killed is not None and all(
                r["phase"] == "STEADY" and r["canary"] is None
                and "guard" not in (r["phase_data"] or {}) for r in rows.values()) \
                and rows["hi"]["champion"] == 2
            if settled:
                break
        assert settled, "\n".join(timeline) + "\n" + _logs(work)
    finally:
        (work / "stop").touch()
        for p in procs.values():
            p.join(15)
            if p.is_alive():
                p.kill()
                p.join(5)

    assert killed is not None and standby is not None, "\n".join(timeline)
    events = [e for e in reg.query(queries.history) if (e["actor"] or "").startswith("replica-")]
    led = [e["id"] for e in events if e["actor"] == killed]
    took_over = [e["id"] for e in events if e["actor"] == standby]
    # while both ran, every transition came from one replica; the standby acted on nothing
    assert {e["actor"] for e in events if e["id"] <= before_kill} == {killed}
    assert led and took_over, [(e["id"], e["actor"], e["action"]) for e in events]
    assert min(took_over) > before_kill and max(led) < min(took_over), \
        [(e["id"], e["actor"], e["action"]) for e in events]
    state = final_state(reg)
    assert state["status"] == {"hi": (2, None, "STEADY"), "sw": (1, None, "STEADY")}
    assert drv.invariant_problems(reg) == []
    promotes = [e for e in events if e["action"] == "promote"]
    assert [(e["language"], e["actor"]) for e in promotes] == [
        ("hi", killed), ("sw", killed), ("hi", standby)], promotes  # hi v2 by the survivor
    print(f"{len(led)} transitions by {killed} before the kill, {len(took_over)} by {standby} "
          f"after it; final {state['status']}", flush=True)
