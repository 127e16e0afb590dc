"""STEADY's drift check as a job: when a check falls due the tick queues one drift job for
the track (never a second while one is queued or running: the phase data names it), with
the window fixed then ([now - check_interval_s, now), at most drift_window_events) and the
track's thresholds; the worker embeds the window and runs the Evidently tests
(controller.ops.model_jobs.run_drift). When the job is done the tick records the drift
report and acts on its verdict in one guarded transaction: stable (or cooling down, or an
attempt plan already answering) -> the check time moves on; drift -> a retraining whose
job names the report. A drift job that fails counts as a check with no verdict (alert)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from controller.loop import attempts, job_steps
from controller.loop.context import StepContext
from controller.loop.state import Phase, TrackState
from controller.loop.training_steps import start_training
from registry.commands import records
from registry.jobs import JobKind, JobStatus
from registry.uow import UnitOfWork


def queue_check(ctx: StepContext, t: TrackState, now: float) -> str:
    with ctx.guarded(t) as uow:
        job_id = _create(ctx, uow, t, now)
        ctx.phase(uow, t, Phase.STEADY, t.status.but(drift_job_id=job_id),
                  f"drift job {job_id} queued", t.revision)
    return f"drift job {job_id} queued"


def _create(ctx: StepContext, uow: UnitOfWork, t: TrackState, now: float) -> int:
    params = {"task": t.task, "language": t.language,
              "drift": ctx.policy.drift_for(t.task, t.language).model_dump(),
              "start": now - ctx.policy.check_interval_s, "end": now,
              "limit": ctx.policy.drift_window_events}
    return int(records.create_job(uow, JobKind.DRIFT, params, ctx.policy.executor, t.task,
                                  t.language).id)


def follow_check(ctx: StepContext, t: TrackState, job_id: int, now: float) -> str:
    job = job_steps.follow(ctx, job_steps.waited_job(ctx, job_id))
    if isinstance(job, str):
        return job
    checked_at = float(job.params.get("end") or now)
    if job.status == JobStatus.FAILED:
        why = f"drift check failed: {job.error or 'unknown error'}"
        with ctx.guarded(t) as uow:
            ctx.phase(uow, t, Phase.STEADY,
                      t.status.but(drift_job_id=None, last_check_at=checked_at), why,
                      t.revision)
            uow.event("alert", task=t.task, language=t.language,
                      reason=f"{t.task}/{t.language}: {why}",
                      after={"kind": "drift_check_failed"})
        return why
    result = job.result or {}
    verdict = str(result.get("verdict"))

    def report(uow: UnitOfWork) -> int:
        return _record(uow, t, result["report"])

    cooling = now < (t.status.cooldown_until or 0)
    # a pending retry answers the drift; an exhausted plan waits for a new champion/base
    settled = attempts.settled(t.status.attempts, t.base or "", t.champion)
    if verdict != "drift" or cooling or settled:
        why = f"drift check: {verdict}" + (" (in cooldown)" if cooling else "")
        why += f" (attempts {settled})" if settled and not cooling else ""
        with ctx.guarded(t) as uow:
            report(uow)
            # the next window is over already (the result came an interval late): its
            # check is queued now, so checks keep the policy's cadence
            nxt = (_create(ctx, uow, t, now)
                   if now - checked_at >= ctx.policy.check_interval_s else None)
            ctx.phase(uow, t, Phase.STEADY,
                      t.status.but(drift_job_id=nxt, last_check_at=checked_at if nxt is None
                                   else now), why, t.revision)
        return why + (f"; drift job {nxt} queued" if nxt is not None else "")
    signals = list(result.get("drifted_signals") or [])
    return start_training(ctx, t, checked_at,
                          f"drift ({', '.join(signals) or 'signals'}): retrain", None,
                          signals, report=report)


def _record(uow: UnitOfWork, t: TrackState, fields: dict[str, Any]) -> int:
    def when(ts: Any) -> datetime | None:
        return datetime.fromtimestamp(float(ts), UTC) if ts is not None else None

    row = records.record_drift_report(
        uow, t.task, t.language, verdict=fields["verdict"], signals=fields["signals"],
        reference=fields["reference"], report_paths=fields.get("report_paths"),
        window_start=when(fields.get("window_start")),
        window_end=when(fields.get("window_end")))
    return int(row.id)
