"""The reconciler's RETRAINING steps and the launch pass: trainings are launched and
polled, never awaited, so a tick's length does not depend on how many tracks train.

Per track in RETRAINING (its phase data names the job): a queued job waits for a slot; a
running one is polled through the executor (running: nothing to do; lost: queued again,
or failed once its attempts are spent); a finished one moves the track to GATING or to a
retry. After every track's step the launch pass (`dispatch_training`) launches queued
jobs, fairly (controller.executors.job_queue), up to the policy's slots, and records each handle."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, select

from controller.executors import job_queue
from controller.executors.base import Poll, Progress
from controller.loop import attempt_steps, attempts, failpoints
from controller.loop.context import StepContext
from controller.loop.phase_status import PhaseStatus
from controller.loop.state import Phase, TrackState, training_params
from controller.loop.upgrade_steps import upgrade_failed, upgrade_trained
from controller.policy import TrackPolicy
from registry.commands import records
from registry.errors import XltError
from registry.jobs import JobStatus, JobView
from registry.schema import Job, Track

log = logging.getLogger("xlt.controller")


def start_training(ctx: StepContext, t: TrackState, now: float, reason: str,
                   report_id: int | None, signals: list[str],
                   extra: dict[str, Any] | None = None) -> str:
    """STEADY -> RETRAINING: the next attempt's inputs as a queued training job."""
    plan, opts, seen = attempt_steps.attempt_context(ctx, t, report_id)
    first = attempts.first_inputs(ctx.policy, t.base or "", t.language, t.champion,
                                  opts.teacher, opts.variants, report_id is not None, extra)
    chosen = attempts.next_inputs(plan, ctx.policy, opts, seen, first)
    if chosen is None or len(plan.attempts) >= ctx.policy.attempts.max_attempts:
        # every input set within reach was trained before: never train it again
        plan = attempts.failed(plan, None, "rejected", [], {}, now, ctx.policy, False)
        with ctx.guarded(t) as uow:
            return attempt_steps.exhausted(ctx, uow, t, plan, f"nothing new to train ({reason})")
    inputs, change = chosen
    params = {**training_params(ctx.policy, t, report_id, extra), **inputs.params()}
    with ctx.guarded(t) as uow:
        job = records.create_job(uow, "train", params, ctx.policy.executor, t.task,
                                 t.language)
        plan = attempts.begin(plan, inputs, change, job.id)
        ctx.phase(uow, t, Phase.RETRAINING,
                  t.status.steady(job_id=job.id, attempt=1, last_check_at=now,
                                  drift_report_id=report_id, attempts=plan),
                  f"{reason}: attempt {len(plan.attempts)} ({change})", t.revision)
    return f"{reason} (job {job.id}, attempt {len(plan.attempts)}: {change})"


def prefetch_jobs(ctx: StepContext, rows: Iterable[dict[str, Any]]) -> None:
    """The jobs RETRAINING tracks wait on, in one query for the whole tick."""
    ids = [job for r in rows if r["phase"] == Phase.RETRAINING
           and (job := PhaseStatus.from_dict(r["phase_data"], strict=False).job_id)
           is not None]
    ctx.prefetched = {}
    if ids:
        with ctx.reg.reading() as s:
            ctx.prefetched = {j.id: JobView.of(j)
                              for j in s.scalars(select(Job).where(Job.id.in_(ids)))}


def _job(ctx: StepContext, job_id: int) -> JobView:
    with ctx.reg.reading() as s:
        row = s.get(Job, job_id)
        assert row is not None, f"phase points at a missing job {job_id}"
        return JobView.of(row)


# -- RETRAINING ------------------------------------------------------------------------
def retraining(ctx: StepContext, t: TrackState, tp: TrackPolicy | None,
               job: JobView | None = None) -> str:
    job_id = t.status.job_id
    if job_id is None:
        raise ValueError("a RETRAINING track's phase data names no job")
    job = job or ctx.prefetched.pop(job_id, None) or _job(ctx, job_id)
    if job.status == JobStatus.SUCCEEDED:
        return _trained(ctx, t, int((job.result or {})["version"]))
    if job.status == JobStatus.FAILED:
        return _train_failed(ctx, t, job.params, job.error or "unknown error")
    if job.status == JobStatus.QUEUED:
        return f"training job {job.id} queued for a training slot"
    poll: Poll = ctx.executor.poll(job)
    if poll.progress == Progress.RUNNING:
        ran = job.running_for()
        if ran is not None and ran > ctx.policy.training.timeout_s:
            return _lost(ctx, job, f"timed out after {ran:.0f} s")
        return f"training job {job.id} running ({job.handle})"
    if poll.result is not None:  # an executor that hands the outcome back (Ray)
        return _record_trained(ctx, t, job, poll.result)
    if poll.error is not None:
        with ctx.uow() as uow:
            records.update_job(uow, job.id, "failed", error=poll.error)
        failpoints.after_commit()
        return f"training job {job.id} failed: {poll.error}"
    again = _job(ctx, job.id)  # the worker may have written its outcome meanwhile
    if again.status != JobStatus.RUNNING or again.handle != job.handle:
        return retraining(ctx, t, tp, again)
    return _lost(ctx, again)


def _lost(ctx: StepContext, job: JobView, why: str = "lost") -> str:
    """The worker is gone and never wrote an outcome (a killed controller or worker), or
    it overran the policy's timeout: run the job again (the job id travels with its
    adapter, so a rerun after the adapter was registered reuses it) until its attempts are
    spent."""
    if job.attempts < ctx.policy.training.max_attempts:
        with ctx.uow() as uow:
            records.update_job(uow, job.id, "queued",
                               error=f"worker {job.handle} {why}; launched again")
        failpoints.after_commit()
        return f"training job {job.id}: worker {job.handle} {why}, queued again"
    with ctx.uow() as uow:
        records.update_job(uow, job.id, "failed",
                           error=f"worker {why} on attempt {job.attempts} of {job.attempts}")
    failpoints.after_commit()
    return f"training job {job.id}: worker {why} on its last attempt: failed"


def _record_trained(ctx: StepContext, t: TrackState, job: JobView,
                    result: dict[str, Any]) -> str:
    version = int(result["version"])
    with ctx.guarded(t) as uow:
        records.update_job(uow, job.id, "succeeded", result=result)
        ctx.phase(uow, t, Phase.GATING, t.status.but(candidate=version),
                  f"trained v{version}", t.revision)
        upgrade_trained(uow, t, version)
    return f"trained candidate v{version}"


def _trained(ctx: StepContext, t: TrackState, version: int) -> str:
    with ctx.guarded(t) as uow:
        ctx.phase(uow, t, Phase.GATING, t.status.but(candidate=version),
                  f"trained v{version}", t.revision)
        upgrade_trained(uow, t, version)
    return f"candidate v{version} to gates"


def _train_failed(ctx: StepContext, t: TrackState, params: dict[str, Any], error: str) -> str:
    attempt = t.status.attempt or 1
    if attempt < ctx.policy.training.max_attempts:
        with ctx.guarded(t) as uow:
            job = records.create_job(uow, "train", params, ctx.policy.executor, t.task,
                                     t.language)
            ctx.phase(uow, t, Phase.RETRAINING,
                      t.status.but(job_id=job.id, attempt=attempt + 1),
                      f"retry after: {error}", t.revision)
        return f"retrying training (attempt {attempt + 1})"
    with ctx.guarded(t) as uow:
        note = upgrade_failed(uow, t, f"training failed: {error}")
        ctx.to_steady(uow, t, "training failed", cooldown=True, expected=t.revision,
                      alert=f"training failed after {attempt} attempts: {error}{note}",
                      alert_kind="training_failed")
    return "training failed: back to STEADY" + note


# -- the launch pass -------------------------------------------------------------------
def dispatch_training(ctx: StepContext) -> list[str]:
    """Launch queued trainings, fairly, up to the policy's slots; returns what it did."""
    with ctx.reg.reading() as s:
        rows = s.execute(
            select(Job, Track.phase, Track.phase_data)
            .join(Track, and_(Track.task == Job.task, Track.language == Job.language))
            .where(Job.kind == "train", Job.status.in_(("queued", "running")))).all()
        jobs = [(JobView.of(j), phase, PhaseStatus.from_dict(data, strict=False))
                for j, phase, data in rows]
    running = [j for j, _, _ in jobs if j.status == JobStatus.RUNNING]
    # only the job its track waits on (a job a person's abort left behind stays queued)
    queued = [j for j, phase, status in jobs if j.status == JobStatus.QUEUED
              and phase == Phase.RETRAINING and status.job_id == j.id]
    training = ctx.policy.training
    gpus = 0
    if training.num_gpus > 0:
        gpus = training.gpus if training.gpus is not None else ctx.executor.gpu_count()
    slots = job_queue.Slots(training.max_concurrent, training.per_gpu, gpus)
    lines = [_launch(ctx, launch) for launch in job_queue.plan(queued, running, slots)]
    waiting = len(queued) - len(lines)
    if waiting > 0:
        lines.append(f"{waiting} training job(s) wait for a slot "
                     f"({len(running) + len(lines)} running)")
    return lines


def _launch(ctx: StepContext, launch: job_queue.Launch) -> str:
    job = launch.job
    device = launch.device or job.params.get("device")
    try:
        handle = ctx.executor.launch(job, launch.device)
    except Exception as exc:  # e.g. a Ray cluster that cannot be reached: next tick
        log.warning("launching training job %s failed: %s", job.id, exc)
        return f"{job.task}/{job.language}: launching job {job.id} failed: {exc}"
    try:
        with ctx.uow() as uow:
            records.launch_job(uow, job.id, handle, device)
    except XltError as exc:  # launched elsewhere meanwhile; ours finds no claim, exits
        return f"{job.task}/{job.language}: job {job.id} not launched: {exc}"
    failpoints.after_commit()
    return (f"{job.task}/{job.language}: training job {job.id} launched "
            f"({ctx.executor.name}, {handle}{', ' + device if device else ''})")
