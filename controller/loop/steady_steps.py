"""STEADY: the guard window after a promotion (roll back on regression); else a due retry,
a first champion to train, or, when a check is due, a drift check job, and when it is done
its verdict (controller.loop.drift_steps): on drift past the cooldown, a retraining."""

from __future__ import annotations

from controller.analysis.gates import guard_verdict
from controller.analysis.label_free import arm_estimate
from controller.loop import attempt_steps, drift_steps
from controller.loop.context import StepContext
from controller.loop.phase_status import Guard
from controller.loop.state import Phase, TrackState
from controller.loop.training_steps import start_training
from controller.loop.upgrade_steps import RESTARTABLE, start_upgrade_training
from controller.policy import TrackPolicy
from registry.commands import deployment


def steady(ctx: StepContext, t: TrackState, tp: TrackPolicy) -> str:
    now = ctx.clock.now()
    guard = t.status.guard
    if guard:
        return _guard(ctx, t, guard, now)
    if t.upgrade is not None and t.upgrade.status in RESTARTABLE:
        return start_upgrade_training(ctx, t, now)
    pending = attempt_steps.attempt_due(ctx, t, now)  # a retry, or not servable
    if isinstance(pending, attempt_steps.Retry):
        return start_training(ctx, t, now, pending.reason, pending.report_id, [])
    if pending is not None:
        return pending
    if t.champion is None and now >= (t.status.cooldown_until or 0):
        return start_training(ctx, t, now, "no champion yet: train the first one", None, [])
    if t.status.drift_job_id is not None:  # a check in flight: follow it, never a second
        return drift_steps.follow_check(ctx, t, t.status.drift_job_id, now)
    if now - (t.status.last_check_at or 0) < ctx.policy.check_interval_s:
        return "steady"
    return drift_steps.queue_check(ctx, t, now)


def _guard(ctx: StepContext, t: TrackState, guard: Guard, now: float) -> str:
    if now > guard.until:
        with ctx.guarded(t) as uow:
            ctx.phase(uow, t, Phase.STEADY, t.status.but(guard=None), "guard window over",
                      t.revision)
        return "guard window over"
    rows = [r for r in ctx.ops.live_events(t.task, t.language, guard.since, now)
            if r.get("adapter_version") == t.champion]
    allowed = ctx.policy.evidence_for(t.task, t.language)
    baseline = guard.baseline_accuracy if guard.baseline_accuracy is not None else 0.0
    judged = guard_verdict(rows, baseline, ctx.policy.guard_max_accuracy_drop,
                           ctx.policy.canary, allowed,
                           arm_estimate(ctx.ops, t.task, t.language, t.champion, rows,
                                        ctx.policy.canary, allowed, guard.baseline_estimator))
    if judged.state != "regression":
        return judged.reason
    reason = judged.reason
    with ctx.guarded(t) as uow:
        deployment.rollback(uow, t.task, t.language, None, t.revision, reason)
        ctx.to_steady(uow, t, "rolled back", cooldown=True, expected=None, alert=reason,
                      alert_kind="rollback")
    return "rolled back: " + reason
