"""Kill the controller with SIGKILL right after each committed transition of the loop in
turn (with trainings, gate jobs and drift jobs in flight among them), start it again,
and check every run ends in the same state as an uninterrupted run, with no duplicate
promotion and no orphaned canary (DESIGN.md, principle 2). The kill points are dealt into
CHUNKS tests, so each has its own timeout.

A reference run (SQLite, one child process) goes through hours 0..LAST_HOUR: first
champions for hi and sw, then hi drifts -> retrain -> gates -> canary 50% -> 100% ->
promote -> guard window over; it snapshots the registry after each hour and counts the
committed transitions. For each N from the first commit of hour FIRST_KILL_HOUR to the last
one, a child starts from the snapshot before the hour that holds commit N, with
XLT_FAILPOINT_KILL_AFTER_COMMITS set so that it dies right after commit N; a second child,
without the failpoint, redoes the interrupted hour at the same clock and runs to the end.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from registry.db import dispose_engines
from tests.support import crash_driver as drv
from tests.support.loop_support import final_state

FIRST_KILL_HOUR = 2  # the first champions' promotion, then the whole drift loop
# the guard window after hi v2 is over at hour 10 (a drift result lands a tick after its
# check): the loop has settled
LAST_HOUR = 10


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("crash-reference")
    run, snapshots = root / "run", root / "snapshots"
    run.mkdir()
    code = drv.run_child(drv.context(), drv.run_hours, str(run), 0, LAST_HOUR, 10**9,
                         str(tiny_model_dir), str(snapshots), timeout=drv.CHILD_TIMEOUT_S)
    logs = "\n".join(drv.log_tail(p) for p in run.glob("child-*.log"))
    assert code == 0, logs
    commits = {int(h): n for h, n in json.loads((run / "commits.json").read_text()).items()}
    reg = drv.open_run_registry(run)
    state = final_state(reg)
    assert drv.invariant_problems(reg) == []
    assert not drv.unsettled(reg), logs
    assert state["status"] == {"hi": (2, None, "STEADY"), "sw": (1, None, "STEADY")}, logs
    assert len(state["promotes"]) == 3  # hi v1, sw v1, hi v2
    dispose_engines()
    return {"commits": commits, "snapshots": snapshots, "state": state}


CHUNKS = 4  # the kill points, dealt round-robin into this many tests (each has its timeout)


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_sigkill_after_each_transition_then_restart(reference: dict[str, Any],
                                                    tmp_path: Path, chunk: int) -> None:
    ctx = drv.context()
    commits, expected = reference["commits"], reference["state"]
    first, last = commits[FIRST_KILL_HOUR - 1] + 1, commits[LAST_HOUR]
    assert last - first >= 10, commits  # the loop really has steps to kill
    failures, rows = [], []
    for n in range(first + chunk, last + 1, CHUNKS):
        hour = next(h for h in range(FIRST_KILL_HOUR, LAST_HOUR + 1) if commits[h] >= n)
        run = tmp_path / f"n{n:02d}"
        shutil.copytree(reference["snapshots"] / f"after-{hour - 1}", run)
        relative = n - commits[hour - 1]

        code = drv.run_child(ctx, drv.run_hours, str(run), hour, LAST_HOUR, relative,
                             timeout=drv.CHILD_TIMEOUT_S)
        logs = "\n".join(drv.log_tail(p) for p in sorted(run.glob("child-*.log")))
        assert code == -signal.SIGKILL, f"N={n}: the child exited {code}, not by SIGKILL\n{logs}"
        killed_in = int((run / "home" / drv.NEXT_HOUR).read_text())
        reg = drv.open_run_registry(run)
        killed_after = drv.last_transition(reg)

        code = drv.run_child(ctx, drv.run_hours, str(run), hour, LAST_HOUR, None,
                             timeout=drv.CHILD_TIMEOUT_S)
        logs = "\n".join(drv.log_tail(p) for p in sorted(run.glob("child-*.log")))
        assert code == 0, f"N={n}: the restarted child exited {code}\n{logs}"
        state = final_state(reg)
        problems = drv.invariant_problems(reg) + drv.unsettled(reg)
        if killed_in != hour:
            problems.append(f"expected the kill in hour {hour}, it came in hour {killed_in}")
        if len(state["promotes"]) != len(expected["promotes"]):
            problems.append(f"{len(state['promotes'])} promotions, the reference has "
                            f"{len(expected['promotes'])}")
        same = state == expected
        rows.append(f"N={n:2d} hour {killed_in} killed after [{killed_after}] -> "
                    f"final state {'equal' if same else 'DIFFERENT'}"
                    + (f"; problems: {problems}" if problems else ""))
        print(rows[-1], flush=True)
        if not same or problems:
            failures.append(f"{rows[-1]}\n  got {state}\n  expected {expected}\n{logs}")
        dispose_engines()
    print(f"{len(rows)} kill points, {len(failures)} failed", flush=True)
    assert not failures, "\n\n".join(failures)
