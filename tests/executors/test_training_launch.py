"""The tick never waits on a training (tiny model, real training and registry): jobs are
launched up to the policy's slots and polled; the rest wait in a fair queue; a worker that
never claims its job trains nothing; the subprocess executor is polled the same way."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.executors import InlineExecutor, SubprocessExecutor, job_queue
from controller.loop.clock import ManualClock
from controller.ops.model_cache import ModelCache
from controller.policy import parse_policy
from controller.runtime.bootstrap import build_operations, build_reconciler
from registry import queries
from registry.jobs import JobStatus, JobView
from registry.schema import Job
from tests.support.loop_support import OPEN_GATES_TOML, START, TASK, open_registry, setup

POLICY = """
base = "tiny@1"
[[tracks]]
task = "emoji-group"
language = "hi"
[[tracks]]
task = "emoji-group"
language = "sw"
[[tracks]]
task = "emoji-group"
language = "yo"
""" + OPEN_GATES_TOML + """[training]
epochs = 1
device = "cpu"
max_concurrent = 2
"""


def _job(i: int, language: str, minutes: int, status: str = "queued",
         device: str | None = None) -> JobView:
    return JobView(i, "train", TASK, language, JobStatus(status), {}, "inline", 0, None,
                   device, datetime(2027, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes),
                   None, None)


def test_fair_queue_oldest_first_and_round_robin() -> None:
    queued = [_job(1, "hi", 5), _job(2, "sw", 1), _job(3, "yo", 3), _job(4, "sw", 2)]
    order = [j.id for j in job_queue.fair_order(queued)]
    assert order == [2, 3, 1, 4]  # sw (oldest), yo, hi, then sw's second job
    launches = job_queue.plan(queued, [_job(9, "fr", 0, "running")], job_queue.Slots(2))
    assert [launch.job.id for launch in launches] == [2]  # one slot left of two
    assert job_queue.plan(queued, [], job_queue.Slots(1))[0].job.id == 2


def test_per_gpu_limit_places_jobs_on_the_least_loaded_gpu() -> None:
    queued = [_job(i, lang, i) for i, lang in enumerate(["hi", "sw", "yo", "am"], 1)]
    running = [_job(9, "fr", 0, "running", "cuda:0")]
    launches = job_queue.plan(queued, running, job_queue.Slots(10, per_gpu=2, gpus=2))
    assert [(launch.job.id, launch.device) for launch in launches] == [
        (1, "cuda:1"), (2, "cuda:0"), (3, "cuda:1")]  # 2 per GPU, then every GPU is full


def _jobs(reg: Any) -> dict[str, JobView]:
    with reg.reading() as s:
        return {j.language: JobView.of(j)
                for j in s.query(Job).where(Job.kind == "train").order_by(Job.id)}


@pytest.mark.slow
def test_tick_launches_and_returns_while_training_runs(sqlite_url: str, tmp_path: Path,
                                                       tiny_model_dir: Path) -> None:
    home = tmp_path / "home"
    setup(sqlite_url, home, tiny_model_dir)
    reg = open_registry(sqlite_url, home)
    policy = parse_policy(POLICY)
    clock = ManualClock(START)
    ops = build_operations(reg, policy, models=ModelCache(reg, "cpu"), clock=clock)
    gate = threading.Event()  # holds every training until the tick has returned

    def work(kind: str, params: dict[str, Any]) -> dict[str, Any]:
        if kind == "train":
            assert gate.wait(120)
        return ops.run_job(kind, params)

    executor = InlineExecutor(reg, work)
    rec = build_reconciler(reg, policy, ops=ops, clock=clock, executor=executor)
    lines = rec.tick()
    jobs = _jobs(reg)
    # three first champions to train, two slots: two launched, the third queued
    assert sorted(j.status for j in jobs.values()) == ["queued", "running", "running"], lines
    assert jobs["yo"].status == "queued"  # created last: waits
    assert all(j.handle and j.handle.startswith("thread:") for j in jobs.values()
               if j.status == "running")
    assert "1 training job(s) wait for a slot (2 running)" in lines
    again = rec.tick()  # polls: still running, nothing launched, nothing waited on
    assert any("running (thread:" in line for line in again), again
    assert {r["phase"] for r in reg.status(TASK)} == {"RETRAINING"}

    gate.set()
    executor.wait(300)
    lines = rec.tick()  # hi and sw to GATING; yo launched in the freed slot
    phases = {r["language"]: r["phase"] for r in reg.status(TASK)}
    assert phases == {"hi": "GATING", "sw": "GATING", "yo": "RETRAINING"}, lines
    assert _jobs(reg)["yo"].status == "running"
    executor.wait(300)
    rec.tick()
    assert {r["language"]: r["phase"] for r in reg.status(TASK)}["yo"] == "GATING"
    assert [j.attempts for j in _jobs(reg).values()] == [1, 1, 1]  # each launched once


@pytest.mark.slow
def test_subprocess_executor_is_polled_and_lost_workers_relaunched(
        sqlite_url: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    home = tmp_path / "home"
    setup(sqlite_url, home, tiny_model_dir)
    reg = open_registry(sqlite_url, home)
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(POLICY.replace('language = "sw"', 'language = "hi-Latn"')
                           .replace('[[tracks]]\ntask = "emoji-group"\nlanguage = "yo"\n', "")
                           .replace("max_concurrent = 2", "max_concurrent = 1"))
    policy = parse_policy(policy_file.read_text())
    clock = ManualClock(START)
    ops = build_operations(reg, policy, models=ModelCache(reg, "cpu"), clock=clock)
    rec = build_reconciler(reg, policy, ops=ops, clock=clock,
                           executor=SubprocessExecutor(reg, str(policy_file)))
    rec.tick()
    hi = _jobs(reg)["hi"]
    assert hi.status == "running" and hi.handle and hi.handle.startswith("pid:")
    # the controller "restarts": a new one's executor knows nothing of the worker but its pid
    rec = build_reconciler(reg, policy, ops=ops, clock=clock,
                           executor=SubprocessExecutor(reg, str(policy_file)))
    assert "running (pid:" in " ".join(rec.tick())
    deadline = time.monotonic() + 300
    while _jobs(reg)["hi"].status == "running" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _jobs(reg)["hi"].status == "succeeded", (home / "jobs" / f"{hi.id}.log").read_text()
    lines = rec.tick()  # hi to GATING; hi-Latn launched in the freed slot
    latn = _jobs(reg)["hi-Latn"]
    assert {r["language"]: r["phase"] for r in reg.status(TASK)}["hi"] == "GATING", lines
    assert latn.status == "running"
    # its worker dies before training: the next tick finds the pid gone and launches again
    import os
    import signal

    os.kill(int(latn.handle.rsplit(":", 1)[1]), signal.SIGKILL)  # type: ignore[union-attr]
    rec.executor.wait(30)  # reaps it
    lines = rec.tick()
    assert any("lost, queued again" in line for line in lines), lines
    relaunched = _jobs(reg)["hi-Latn"]
    assert relaunched.status == "running" and relaunched.attempts == 2
    assert relaunched.handle != latn.handle
    rec.executor.wait(300)
    rec.tick()
    assert {r["language"]: r["phase"] for r in reg.status(TASK)}["hi-Latn"] == "GATING"


@pytest.mark.slow
def test_hung_training_times_out_is_relaunched_and_its_late_outcome_dropped(
        sqlite_url: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    """A worker that hangs while its process lives (so its handle looks alive) is given up
    after `[training] timeout_s` and launched again; when the hung thread finally ends, its
    outcome no longer matches the job's handle and is refused: one adapter, one outcome."""
    home = tmp_path / "home"
    setup(sqlite_url, home, tiny_model_dir)
    reg = open_registry(sqlite_url, home)
    policy = parse_policy(
        POLICY.replace('[[tracks]]\ntask = "emoji-group"\nlanguage = "sw"\n', "")
        .replace('[[tracks]]\ntask = "emoji-group"\nlanguage = "yo"\n', "")
        .replace("max_concurrent = 2", "max_concurrent = 1\ntimeout_s = 1.0"))
    clock = ManualClock(START)
    ops = build_operations(reg, policy, models=ModelCache(reg, "cpu"), clock=clock)
    hung, released = threading.Event(), threading.Event()
    calls: list[str] = []

    def work(kind: str, params: dict[str, Any]) -> dict[str, Any]:
        if kind == "train":
            calls.append(params["language"])
        if kind == "train" and len(calls) == 1:  # the first launch hangs until released
            hung.set()
            assert released.wait(120)
            raise RuntimeError("the hung worker woke up")
        return ops.run_job(kind, params)

    executor = InlineExecutor(reg, work)
    rec = build_reconciler(reg, policy, ops=ops, clock=clock, executor=executor)
    rec.tick()
    assert hung.wait(60)
    first = _jobs(reg)["hi"]
    assert first.status == "running" and first.attempts == 1
    time.sleep(1.5)
    lines = rec.tick()  # over the timeout: queued again and relaunched in the same tick
    assert any("timed out after" in line and "queued again" in line for line in lines), lines
    second = _jobs(reg)["hi"]
    assert second.status == "running" and second.attempts == 2
    assert second.handle != first.handle
    released.set()  # the hung thread ends and reports a failure under its old handle
    executor.wait(300)
    for thread in threading.enumerate():  # the replaced (hung) thread too
        if thread.name.startswith("xlt-train-"):
            thread.join(60)
    assert _jobs(reg)["hi"].status == "succeeded"  # the relaunch's outcome
    rec.tick()
    assert reg.status(TASK)[0]["phase"] == "GATING"
    assert len(reg.query(queries.list_adapters, TASK, "hi")) == 1
    events = [e["action"] for e in reg.query(queries.history, TASK)
              if e["action"].startswith("job_")]
    assert events.count("job_failed") == 0, events  # the late failure was refused
