"""The reconciler's RETRAINING steps: trainings are launched and polled, never awaited
(controller.loop.job_steps), so a tick's length does not depend on how many tracks train.

Per track in RETRAINING (its phase data names the job): while the job is queued or running
nothing happens; a finished one moves the track to GATING, with the candidate's gate job
queued in the same transaction, or to a retry, or back to STEADY once the attempts are
spent."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from controller.loop import attempt_steps, attempts, job_steps
from controller.loop.context import StepContext
from controller.loop.gate_steps import queue_gate
from controller.loop.state import Phase, TrackState, training_params
from controller.loop.upgrade_steps import upgrade_failed, upgrade_trained
from controller.policy import TrackPolicy
from registry.commands import records
from registry.jobs import JobStatus
from registry.uow import UnitOfWork

log = logging.getLogger("xlt.controller")


def start_training(ctx: StepContext, t: TrackState, now: float, reason: str,
                   report_id: int | None, signals: list[str],
                   extra: dict[str, Any] | None = None,
                   report: Callable[[UnitOfWork], int] | None = None) -> str:
    """STEADY -> RETRAINING: the next attempt's inputs as a queued training job. `report`
    records the drift report that asks for it, in the same transaction (its id is the
    job's drift_report_id)."""
    plan, opts, seen = attempt_steps.attempt_context(ctx, t, report_id)
    drift = report_id is not None or report is not None
    first = attempts.first_inputs(ctx.policy, t.base or "", t.language, t.champion,
                                  opts.teacher, opts.variants, drift, extra)
    chosen = attempts.next_inputs(plan, ctx.policy, opts, seen, first)
    if chosen is None or len(plan.attempts) >= ctx.policy.attempts.max_attempts:
        # every input set within reach was trained before: never train it again
        plan = attempts.failed(plan, None, "rejected", [], {}, now, ctx.policy, False)
        with ctx.guarded(t) as uow:
            if report is not None:
                report(uow)
            return attempt_steps.exhausted(ctx, uow, t, plan, f"nothing new to train ({reason})")
    inputs, change = chosen
    with ctx.guarded(t) as uow:
        if report is not None:
            report_id = report(uow)
            if plan.report_id is None and not plan.attempts:  # a plan this drift starts
                plan = replace(plan, report_id=report_id)
        params = {**training_params(ctx.policy, t, report_id, extra), **inputs.params()}
        job = records.create_job(uow, "train", params, ctx.policy.executor, t.task,
                                 t.language)
        plan = attempts.begin(plan, inputs, change, job.id)
        ctx.phase(uow, t, Phase.RETRAINING,
                  t.status.steady(job_id=job.id, attempt=1, last_check_at=now,
                                  drift_report_id=report_id, attempts=plan),
                  f"{reason}: attempt {len(plan.attempts)} ({change})", t.revision)
    return f"{reason} (job {job.id}, attempt {len(plan.attempts)}: {change})"


# -- RETRAINING ------------------------------------------------------------------------
def retraining(ctx: StepContext, t: TrackState, tp: TrackPolicy | None) -> str:
    job_id = t.status.job_id
    if job_id is None:
        raise ValueError("a RETRAINING track's phase data names no job")
    job = job_steps.follow(ctx, job_steps.waited_job(ctx, job_id))
    if isinstance(job, str):
        return job
    if job.status == JobStatus.SUCCEEDED:
        return _trained(ctx, t, int((job.result or {})["version"]))
    return _train_failed(ctx, t, job.params, job.error or "unknown error")


def _trained(ctx: StepContext, t: TrackState, version: int) -> str:
    with ctx.guarded(t) as uow:
        status = queue_gate(ctx, uow, t, version, t.status.but(candidate=version))
        ctx.phase(uow, t, Phase.GATING, status,
                  f"trained v{version}: gate job {status.gate_job_id} queued", t.revision)
        upgrade_trained(uow, t, version)
    return f"candidate v{version} to gates (gate job {status.gate_job_id})"


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


