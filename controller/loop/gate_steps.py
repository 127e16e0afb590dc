"""GATING: a candidate's gates run as a gate job (controller.ops.model_jobs.run_gate) on the
policy's executor; the tick only queues it, follows it, and applies its report.

The job is queued in the transaction that moves the track to GATING, with everything it
needs resolved then: the floors as for the candidate's base (the upgrade's target, else the
track's base), the champion it is compared with, the languages whose fairness it affects.
When it has succeeded the report is applied in one guarded transaction: the gate result
recorded (the MLflow mirror logs the gate run from its event), then pass -> canary step 1
(or promote when there is no champion), fail -> reject, the next attempt or an alert. A
gate job that fails (its attempts spent) rejects the candidate with an alert."""

from __future__ import annotations

from typing import Any

from controller.loop import attempt_steps, attempts, job_steps
from controller.loop.context import StepContext
from controller.loop.phase_status import PhaseStatus
from controller.loop.state import Phase, TrackState
from controller.policy import Policy, TrackPolicy
from registry.commands import deployment, records
from registry.jobs import JobKind, JobStatus
from registry.languages import parent_languages
from registry.service import Registry
from registry.uow import UnitOfWork


def fairness_targets(registry: Registry, task: str, language: str,
                     policy: Policy) -> dict[str, float]:
    """The floor of the track's own language and of every controlled language served
    through it by fallback (a variant without a champion of its own). Registry reads."""
    champions = {r["language"] for r in registry.status(task) if r["champion"]}
    affected = [language] + [t.language for t in policy.tracks
                             if t.task == task and t.language not in champions
                             and language in parent_languages(t.language)]
    return {lang: policy.fairness_floor_for(task, lang) for lang in affected}


def gate_params(ctx: StepContext, t: TrackState, version: int) -> dict[str, Any]:
    # floors as for the candidate's base: the upgrade's target, else the track's base
    policy = ctx.policy.for_base(t.upgrade.to_base if t.on_upgrade else t.base)
    return {"task": t.task, "language": t.language, "version": version,
            "champion": t.champion, "gates": policy.gates.model_dump(),
            "fairness": fairness_targets(ctx.reg, t.task, t.language, policy)}


def queue_gate(ctx: StepContext, uow: UnitOfWork, t: TrackState, version: int,
               status: PhaseStatus) -> PhaseStatus:
    """Create the candidate's gate job in `uow`; returns `status` naming it."""
    job = records.create_job(uow, JobKind.GATE, gate_params(ctx, t, version),
                             ctx.policy.executor, t.task, t.language)
    return status.but(gate_job_id=job.id)


def gating(ctx: StepContext, t: TrackState, tp: TrackPolicy) -> str:
    version = t.status.on_trial()
    if t.status.gate_job_id is None:  # GATING written before gate jobs, or by hand
        with ctx.guarded(t) as uow:
            status = queue_gate(ctx, uow, t, version, t.status)
            ctx.phase(uow, t, Phase.GATING, status,
                      f"gate job {status.gate_job_id} queued for v{version}", t.revision)
        return f"gate job {status.gate_job_id} queued for v{version}"
    job = job_steps.follow(ctx, job_steps.waited_job(ctx, t.status.gate_job_id))
    if isinstance(job, str):
        return job
    if job.status == JobStatus.FAILED:
        return _apply(ctx, t, version, [], ["gate_evaluation"], {},
                      f"gate evaluation failed: {job.error or 'unknown error'}")
    result = job.result or {}
    return _apply(ctx, t, version, list(result.get("gates") or []),
                  list(result.get("failed") or []), dict(result.get("metrics") or {}))


def _apply(ctx: StepContext, t: TrackState, version: int, report: list[dict[str, Any]],
           failed: list[str], metrics: dict[str, Any], why: str | None = None) -> str:
    """The gate report, applied in one guarded transaction."""
    # an upgrade candidate that fails leaves the track on its base (no attempt ladder)
    plan = (attempt_steps.after_failure(ctx, t, version, "rejected", failed,
                                        attempts.figures_of(report))
            if failed and not t.on_upgrade else None)
    with ctx.guarded(t) as uow:
        if report:
            records.record_gate_result(uow, t.task, t.language, version, report, metrics)
        if failed:
            reason = why or f"gates failed: {', '.join(failed)}"
            deployment.reject(uow, t.task, t.language, version, reason)
            note = (f"; upgrade to {t.upgrade.to_base} failed, the track stays on its base"
                    if t.on_upgrade else "")
            if plan is not None:  # the next attempt differs; one alert once exhausted
                return attempt_steps.rejected(ctx, uow, t, plan, reason, version)
            ctx.to_steady(uow, t, reason, cooldown=True, expected=None,
                          alert=f"candidate v{version} rejected: {reason}{note}",
                          alert_kind="gates_failed")
            return f"v{version} rejected ({', '.join(failed)}){note}"
        deployment.mark_gated(uow, t.task, t.language, version, "all gates passed")
        if t.champion is None:
            deployment.promote(uow, t.task, t.language, version, t.revision,
                               "first champion: gates passed")
            ctx.to_steady(uow, t, "promoted", cooldown=False, expected=None)
            return f"v{version} promoted (first champion)"
        weight = ctx.policy.canary.steps[0]
        deployment.start_canary(uow, t.task, t.language, version, weight, t.revision,
                                "gates passed")
        now = ctx.clock.now()
        ctx.phase(uow, t, Phase.CANARY,
                  t.status.but(gate_job_id=None, step=0, step_started_at=now,
                               last_analysis_at=now, failures=0, inconclusive=0),
                  f"canary at {weight:g}%", None)
    return f"v{version} passed gates: canary at {weight:g}%"
