"""The reconciler's steps for training attempts: controller.loop.attempts decides what the
next attempt is (or that there is none); these functions read what it needs and write it
down in the track's transaction."""

from __future__ import annotations

from dataclasses import dataclass, replace

from controller.loop import attempts
from controller.loop.context import StepContext
from controller.loop.state import Phase, TrackState
from registry import queries
from registry.commands import servability
from registry.uow import UnitOfWork


@dataclass(frozen=True)
class Retry:
    """A planned attempt whose time has come: STEADY starts its training."""
    reason: str
    report_id: int | None


def attempt_due(ctx: StepContext, t: TrackState, now: float) -> Retry | str | None:
    """STEADY's first look: a base change resets the plan; a due retry starts; a track
    without a champion waits for its retry, or for a base upgrade once exhausted."""
    if attempts.base_changed(t.status.attempts, t.base):
        return base_changed(ctx, t)
    plan = attempts.current(t.status.attempts, t.base or "", t.champion)
    if plan is None:
        return None
    if plan.retry_at is not None and now >= plan.retry_at:
        return Retry(f"attempt {len(plan.attempts) + 1}", plan.report_id)
    if t.champion is None and plan.retry_at is not None:
        return f"attempt {len(plan.attempts) + 1} at {plan.retry_at:.0f}"
    if t.champion is None and plan.exhausted:
        return f"not servable on {t.base}: waiting for a base upgrade"
    return None


def attempt_context(ctx: StepContext, t: TrackState, report_id: int | None
                    ) -> tuple[attempts.AttemptPlan, attempts.Options, set[str]]:
    plan = (attempts.current(t.status.attempts, t.base or "", t.champion)
            or attempts.AttemptPlan(t.base or "", t.champion, report_id))
    registered = ctx.reg.query(queries.track_languages, t.task)
    opts = attempts.options(ctx.policy, t.task, t.language, registered, ctx.reg)
    seen = ctx.reg.query(attempts.trained_fingerprints, t.task, t.language)
    return plan, opts, seen


def after_failure(ctx: StepContext, t: TrackState, version: int | None, outcome: str,
                  failed: list[str], figures: dict[str, float]) -> attempts.AttemptPlan | None:
    """The plan with this failure recorded (next attempt scheduled, or exhausted); None
    for a candidate the controller did not plan (a person's `xlt retrain`)."""
    plan = attempts.current(t.status.attempts, t.base or "", t.champion)
    if plan is None or plan.last is None or plan.last.outcome != "training":
        return None
    recorded = attempts.failed(plan, version, outcome, failed, figures, ctx.clock.now(),
                               ctx.policy, True)
    if not recorded.exhausted:
        _, opts, seen = attempt_context(ctx, t, plan.report_id)
        if attempts.next_inputs(recorded, ctx.policy, opts, seen) is None:
            recorded = replace(recorded, retry_at=None, exhausted=True)
    return recorded


def rejected(ctx: StepContext, uow: UnitOfWork, t: TrackState, plan: attempts.AttemptPlan,
             reason: str, version: int) -> str:
    if plan.exhausted:
        return exhausted(ctx, uow, t, plan, reason)
    ctx.to_steady(uow, t, f"{reason}; attempt {len(plan.attempts) + 1} at "
                  f"{plan.retry_at:.0f}", cooldown=False, expected=None, attempts=plan)
    return f"v{version} rejected ({reason}): next attempt planned"


def exhausted(ctx: StepContext, uow: UnitOfWork, t: TrackState, plan: attempts.AttemptPlan,
              why: str) -> str:
    """Write down an exhausted plan: one alert; a track without a champion is marked not
    servable on its base (routing serves its fallback)."""
    alert = attempts.exhausted_alert(plan, t.task, t.language, t.champion is not None)
    if t.champion is None:
        best = plan.best
        servability.mark_not_servable(
            uow, t.task, t.language, alert,
            {"attempts": attempts.summary(plan),
             "best_figures": best.figures if best else {}})
    ctx.to_steady(uow, t, f"attempts exhausted: {why}", cooldown=True, expected=None,
                  alert=alert, attempts=plan)
    return f"attempts exhausted: {alert}"


def base_changed(ctx: StepContext, t: TrackState) -> str:
    """The track moved to another base: earlier attempts no longer bind it; a track marked
    not servable on the old base is tried again on the new one."""
    with ctx.guarded(t) as uow:
        servability.clear_not_servable(uow, t.task, t.language,
                                       f"base is now {t.base}: attempts start afresh")
        ctx.phase(uow, t, Phase.STEADY, t.status.steady(attempts=None, cooldown_until=None),
                  f"base changed to {t.base}", None)
    return f"base changed to {t.base}: attempts start afresh"
