"""Gates and drift checks are jobs (tiny model, real training, evaluation, Evidently and
registry, the subprocess executor): the tick queues them and returns, a kind's slots hold
the rest back, a controller that restarts adopts the workers still running (by pid) and
applies each result once, and a drift check in flight is never queued a second time."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from controller.executors import SubprocessExecutor
from controller.loop.clock import ManualClock
from controller.loop.reconciler import Reconciler
from controller.ops.model_cache import ModelCache
from controller.policy import Policy, parse_policy
from controller.runtime.bootstrap import build_operations, build_reconciler
from registry import queries
from registry.jobs import JobView
from registry.schema import Job
from registry.service import Registry
from tests.support.loop_support import OPEN_GATES_TOML, START, TASK, open_registry, setup

POLICY = """
base = "tiny@1"
executor = "subprocess"
check_interval_s = 3600
[[tracks]]
task = "emoji-group"
language = "hi"
[[tracks]]
task = "emoji-group"
language = "sw"
""" + OPEN_GATES_TOML + """[training]
epochs = 1
device = "cpu"
teacher = "en"
max_concurrent = 2
max_rows_per_epoch = 100
[jobs.gate]
max_concurrent = 1
[jobs.drift]
max_concurrent = 1
"""


def _jobs(reg: Registry, kind: str) -> list[JobView]:
    with reg.reading() as s:
        return [JobView.of(j) for j in s.query(Job).where(Job.kind == kind).order_by(Job.id)]


def _controller(reg: Registry, policy: Policy, policy_file: Path, clock: ManualClock
                ) -> Reconciler:
    """A controller process's parts; a new one knows nothing of the last one's workers."""
    ops = build_operations(reg, policy, models=ModelCache(reg, "cpu"), clock=clock)
    return build_reconciler(reg, policy, ops=ops, clock=clock,
                            executor=SubprocessExecutor(reg, str(policy_file)))


def _until(rec: Reconciler, done: Any, what: str, limit_s: float = 300) -> list[list[str]]:
    log: list[list[str]] = []
    deadline = time.monotonic() + limit_s
    while not done() and time.monotonic() < deadline:
        log.append(rec.tick())
        time.sleep(0.5)
    assert done(), f"{what}: {log[-4:]}"
    return log


@pytest.mark.slow
def test_gate_and_drift_jobs_are_slotted_adopted_and_applied_once(
        sqlite_url: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    home = tmp_path / "home"
    setup(sqlite_url, home, tiny_model_dir)
    reg = open_registry(sqlite_url, home)
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(POLICY)
    policy = parse_policy(POLICY)
    clock = ManualClock(START)
    rec = _controller(reg, policy, policy_file, clock)
    def trained() -> bool:
        phases = [r["phase"] for r in reg.status(TASK)]
        return len(phases) == 2 and "RETRAINING" not in phases

    _until(rec, trained, "both first champions trained")
    gates = _jobs(reg, "gate")  # queued with each move to GATING, the floors resolved
    assert len(gates) == 2 and all(j.params["gates"]["min_accuracy"] == 0.0 for j in gates)
    assert [set(j.params["fairness"]) for j in gates] == [{j.language} for j in gates]
    in_flight = [j for j in gates if not j.status.finished]
    assert in_flight, gates  # a gate job takes a worker's start-up at least

    # the controller restarts while gate jobs run or wait: the new one adopts the worker
    rec = _controller(reg, policy, policy_file, clock)
    _until(rec, lambda: all(r["champion"] for r in reg.status(TASK)), "both gated")
    gates = _jobs(reg, "gate")
    assert [j.status for j in gates] == ["succeeded", "succeeded"]
    assert [j.attempts for j in gates] == [1, 1]  # adopted, not launched again
    with reg.reading() as s:  # one gate slot: the two never ran at once
        spans = sorted((j.started_at, j.finished_at)
                       for j in s.query(Job).where(Job.kind == "gate"))
    assert spans[0][1] <= spans[1][0], spans
    for lang in ("hi", "sw"):
        history = reg.query(queries.history, TASK, lang)
        assert [e["action"] for e in history].count("gate") == 1  # applied once

    # an hour later both checks fall due: one drift slot, one job per track, never two
    clock._now = START + 3601
    lines = rec.tick()
    drift = _jobs(reg, "drift")
    assert len(drift) == 2 and sorted(j.status for j in drift) == ["queued", "running"], lines
    assert drift[0].params["end"] == clock.now()  # the window, fixed when queued
    rec = _controller(reg, policy, policy_file, clock)  # restarts again
    for _ in range(3):
        rec.tick()
    assert len(_jobs(reg, "drift")) == 2  # in flight: not queued again
    _until(rec, lambda: all(j.status == "succeeded" for j in _jobs(reg, "drift"))
           and all("drift_job_id" not in (r["phase_data"] or {}) for r in reg.status(TASK)),
           "both drift reports applied")
    for lang in ("hi", "sw"):
        checks = [e for e in reg.query(queries.history, TASK, lang)
                  if e["action"] == "drift_check"]
        assert len(checks) == 1, checks  # one report per job
        track = reg.status(TASK, lang)[0]
        assert track["phase"] == "STEADY"
        assert track["phase_data"]["last_check_at"] == START + 3601
    assert [j.attempts for j in _jobs(reg, "drift")] == [1, 1]
