"""The reconciler's steps for training attempts: controller.loop.attempts decides what the next
attempt is (or that there is none); these methods read what it needs and write it down in
the track's transaction. Mixed into controller.loop.reconciler.Reconciler."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from controller.loop import attempts
from registry import queries
from registry.commands import servability

if TYPE_CHECKING:
    from controller.loop.reconciler import TrackState


class AttemptSteps:
    # provided by the Reconciler
    reg: Any
    policy: Any
    clock: Any
    _guarded: Any
    _phase: Any
    _to_steady: Any
    _start_training: Any

    def _attempt_due(self, t: TrackState, now: float) -> str | None:
        """STEADY's first look: a base change resets the plan; a due retry starts; a track
        without a champion waits for its retry, or for a base upgrade once exhausted."""
        if attempts.base_changed(t.status.attempts, t.base):
            return self._base_changed(t)
        plan = attempts.current(t.status.attempts, t.base or "", t.champion)
        if plan is None:
            return None
        if plan.retry_at is not None and now >= plan.retry_at:
            return self._start_training(t, now, f"attempt {len(plan.attempts) + 1}",
                                        plan.report_id, [])
        if t.champion is None and plan.retry_at is not None:
            return f"attempt {len(plan.attempts) + 1} at {plan.retry_at:.0f}"
        if t.champion is None and plan.exhausted:
            return f"not servable on {t.base}: waiting for a base upgrade"
        return None

    def _attempt_context(self, t: TrackState, report_id: int | None
                         ) -> tuple[attempts.AttemptPlan, attempts.Options, set[str]]:
        plan = (attempts.current(t.status.attempts, t.base or "", t.champion)
                or attempts.AttemptPlan(t.base or "", t.champion, report_id))
        registered = self.reg.query(queries.track_languages, t.task)
        opts = attempts.options(self.policy, t.task, t.language, registered)
        seen = self.reg.query(attempts.trained_fingerprints, t.task, t.language)
        return plan, opts, seen

    def _after_failure(self, t: TrackState, version: int | None, outcome: str,
                       failed: list[str], figures: dict[str, float]
                       ) -> attempts.AttemptPlan | None:
        """The plan with this failure recorded (next attempt scheduled, or exhausted);
        None for a candidate the controller did not plan (a person's `xlt retrain`)."""
        plan = attempts.current(t.status.attempts, t.base or "", t.champion)
        if plan is None or plan.last is None or plan.last.outcome != "training":
            return None
        recorded = attempts.failed(plan, version, outcome, failed, figures, self.clock.now(),
                                   self.policy, True)
        if not recorded.exhausted:
            _, opts, seen = self._attempt_context(t, plan.report_id)
            if attempts.next_inputs(recorded, self.policy, opts, seen) is None:
                recorded = replace(recorded, retry_at=None, exhausted=True)
        return recorded

    def _rejected(self, t: TrackState, plan: attempts.AttemptPlan, uow: Any, reason: str,
                  version: int) -> str:
        if plan.exhausted:
            return self._exhausted(t, plan, uow, reason)
        self._to_steady(t, f"{reason}; attempt {len(plan.attempts) + 1} at "
                        f"{plan.retry_at:.0f}", cooldown=False, expected=None, uow=uow,
                        attempts=plan)
        return f"v{version} rejected ({reason}): next attempt planned"

    def _exhausted(self, t: TrackState, plan: attempts.AttemptPlan, uow: Any, why: str) -> str:
        """Write down an exhausted plan: one alert; a track without a champion is marked
        not servable on its base (routing serves its fallback)."""
        if uow is None:
            with self._guarded(t) as own:
                return self._exhausted(t, plan, own, why)
        alert = attempts.exhausted_alert(plan, t.task, t.language, t.champion is not None)
        if t.champion is None:
            best = plan.best
            servability.mark_not_servable(
                uow, t.task, t.language, alert,
                {"attempts": attempts.summary(plan),
                 "best_figures": best.figures if best else {}})
        self._to_steady(t, f"attempts exhausted: {why}", cooldown=True, expected=None,
                        uow=uow, alert=alert, attempts=plan)
        return f"attempts exhausted: {alert}"

    def _base_changed(self, t: TrackState) -> str:
        """The track moved to another base: earlier attempts no longer bind it; a track
        marked not servable on the old base is tried again on the new one."""
        with self._guarded(t) as uow:
            servability.clear_not_servable(uow, t.task, t.language,
                                           f"base is now {t.base}: attempts start afresh")
            self._phase(uow, t, "STEADY", t.status.steady(attempts=None, cooldown_until=None),
                        f"base changed to {t.base}", None)
        return f"base changed to {t.base}: attempts start afresh"
