"""A killed controller mid-upgrade ends in the same state as an uninterrupted run: the
SIGKILL drill of tests/runtime/test_controller_crash.py on the base-upgrade scenario
(tests.support.loop_support: first champions on tiny@1, then at UPGRADE_HOUR every track moves to
tiny@2 through training, gates, a mixed canary and promotion). The controller is killed
right after each committed transition from the upgrade request to the end, restarted, and
the final state (bases, champions, adapters, upgrades, promotions) compared."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from registry.db import dispose_engines
from tests.support import crash_driver as drv
from tests.support.loop_support import UPGRADE_HOUR, final_state

LAST_HOUR = 9  # both tracks upgraded (hour 7) and their guard windows over (hour 9)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path,
              tiny_model_dir_v2: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("upgrade-crash-reference")
    run, snapshots = root / "run", root / "snapshots"
    run.mkdir()
    code = drv.run_child(drv.context(), drv.run_hours, str(run), 0, LAST_HOUR, 10**9,
                         str(tiny_model_dir), str(snapshots), str(tiny_model_dir_v2), True,
                         timeout=drv.CHILD_TIMEOUT_S)
    logs = "\n".join(drv.log_tail(p) for p in run.glob("child-*.log"))
    assert code == 0, logs
    commits = {int(h): n for h, n in json.loads((run / "commits.json").read_text()).items()}
    reg = drv.open_run_registry(run)
    state = final_state(reg)
    assert drv.invariant_problems(reg) == []
    assert not drv.unsettled(reg), logs
    assert state["bases"] == {"hi": "tiny@2", "sw": "tiny@2"}, logs
    assert state["upgrades"] == {"hi": ("done", 2), "sw": ("done", 2)}, logs
    assert state["status"] == {"hi": (2, None, "STEADY"), "sw": (2, None, "STEADY")}, logs
    dispose_engines()
    return {"commits": commits, "snapshots": snapshots, "state": state}


@pytest.mark.slow
def test_sigkill_mid_upgrade_then_restart(reference: dict[str, Any], tmp_path: Path) -> None:
    ctx = drv.context()
    commits, expected = reference["commits"], reference["state"]
    first, last = commits[UPGRADE_HOUR - 1] + 1, commits[LAST_HOUR]
    assert last - first >= 10, commits  # the upgrade really has steps to kill
    failures, rows = [], []
    for n in range(first, last + 1):
        hour = next(h for h in range(UPGRADE_HOUR, LAST_HOUR + 1) if commits[h] >= n)
        run = tmp_path / f"n{n:02d}"
        shutil.copytree(reference["snapshots"] / f"after-{hour - 1}", run)
        relative = n - commits[hour - 1]
        code = drv.run_child(ctx, drv.run_hours, str(run), hour, LAST_HOUR, relative,
                             None, None, None, True, timeout=drv.CHILD_TIMEOUT_S)
        logs = "\n".join(drv.log_tail(p) for p in sorted(run.glob("child-*.log")))
        assert code == -signal.SIGKILL, f"N={n}: the child exited {code}, not by SIGKILL\n{logs}"
        reg = drv.open_run_registry(run)
        killed_after = drv.last_transition(reg)
        code = drv.run_child(ctx, drv.run_hours, str(run), hour, LAST_HOUR, None,
                             None, None, None, True, timeout=drv.CHILD_TIMEOUT_S)
        logs = "\n".join(drv.log_tail(p) for p in sorted(run.glob("child-*.log")))
        assert code == 0, f"N={n}: the restarted child exited {code}\n{logs}"
        state = final_state(reg)
        problems = drv.invariant_problems(reg) + drv.unsettled(reg)
        same = state == expected
        rows.append(f"N={n:2d} hour {hour} killed after [{killed_after}] -> final state "
                    f"{'equal' if same else 'DIFFERENT'}"
                    + (f"; problems: {problems}" if problems else ""))
        print(rows[-1], flush=True)
        if not same or problems:
            failures.append(f"{rows[-1]}\n  got {state}\n  expected {expected}\n{logs}")
        dispose_engines()
    print(f"{len(rows)} kill points, {len(failures)} failed", flush=True)
    assert not failures, "\n\n".join(failures)
