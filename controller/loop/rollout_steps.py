"""The reconciler's steps from a candidate that passed its gates (controller.loop.gate_steps)
to a champion: CANARY
(after each interval, analyse live traffic with labels or the label-free estimate; pass ->
next step or promote with a guard window, fail -> abort past the failure limit,
inconclusive -> PAUSED past its limit) and PAUSED (waits for a person)."""

from __future__ import annotations

from controller.analysis.canary import CanaryVerdict, analyse
from controller.analysis.label_free import gather
from controller.loop import attempt_steps
from controller.loop.context import StepContext
from controller.loop.phase_status import Guard, PhaseStatus
from controller.loop.state import Phase, TrackState
from controller.policy import TrackPolicy
from registry.commands import deployment, records
from registry.uow import UnitOfWork


# -- CANARY ------------------------------------------------------------------------
def canary(ctx: StepContext, t: TrackState, tp: TrackPolicy) -> str:
    st = t.status
    version, step = st.on_trial(), st.step or 0
    if t.canary != version:
        # a person aborted or promoted it meanwhile: follow the registry
        with ctx.guarded(t) as uow:
            ctx.to_steady(uow, t, "canary ended outside the controller", cooldown=False,
                          expected=t.revision)
        return "canary ended by hand: STEADY"
    now = ctx.clock.now()
    if now - (st.last_analysis_at or 0) < ctx.policy.canary.interval_s:
        return f"canary step {step + 1} at {t.canary_weight:g}%: waiting"
    events = ctx.ops.live_events(t.task, t.language, st.step_started_at or 0, now)
    allowed = ctx.policy.evidence_for(t.task, t.language)
    verdict = analyse([e for e in events if e.get("adapter_version") == version],
                      [e for e in events if e.get("adapter_version") == t.champion],
                      ctx.policy.canary, st.champion_stats, allowed,
                      gather(ctx.ops, t.task, t.language, version, t.champion, events,
                             ctx.policy.canary, allowed))
    st = st.but(last_analysis_at=now)
    if verdict.champion.labelled >= ctx.policy.canary.min_feedback_events:
        st = st.but(champion_stats=verdict.champion)  # the 100% step compares to it
    failures = (st.failures or 0) + (verdict.verdict == "fail")
    aborting = verdict.verdict == "fail" and failures > ctx.policy.canary.failure_limit
    plan = (attempt_steps.after_failure(ctx, t, version, "aborted", ["canary"], {})
            if aborting and not t.on_upgrade else None)
    with ctx.guarded(t) as uow:
        records.record_canary_analysis(uow, t.task, t.language, step + 1, t.canary_weight,
                                       verdict.metrics(), verdict.verdict)
        if verdict.verdict == "pass":
            return _canary_passed(ctx, uow, t, version, step, st, verdict, now)
        if verdict.verdict == "fail":
            st = st.but(failures=failures)
            if aborting:
                deployment.abort_canary(uow, t.task, t.language, t.revision, verdict.reason)
                note = (f"; upgrade to {t.upgrade.to_base} failed" if t.on_upgrade
                        else "")
                ctx.to_steady(uow, t, "canary aborted", cooldown=True, expected=None,
                              alert=f"canary v{version} aborted: {verdict.reason}{note}",
                              alert_kind="canary_aborted",
                              **({"attempts": plan} if plan else {}))
                return f"canary aborted: {verdict.reason}"
            ctx.phase(uow, t, Phase.CANARY, st.but(step_started_at=now),
                        f"canary analysis failed ({failures})", t.revision)
            return f"canary analysis failed: {verdict.reason}"
        st = st.but(inconclusive=(st.inconclusive or 0) + 1)
        if (st.inconclusive or 0) > ctx.policy.canary.inconclusive_limit:
            ctx.phase(uow, t, Phase.PAUSED, st, f"paused: {verdict.reason}", t.revision)
            uow.event("alert", task=t.task, language=t.language,
                      reason=f"canary v{version} paused: {verdict.reason}; "
                             "run `xlt canary resume` or `xlt canary abort`",
                      after={"kind": "canary_paused"})
            return "canary paused (inconclusive)"
        ctx.phase(uow, t, Phase.CANARY, st, f"inconclusive: {verdict.reason}", t.revision)
        return f"canary inconclusive: {verdict.reason}"

def _canary_passed(ctx: StepContext, uow: UnitOfWork, t: TrackState, version: int, step: int,
                   st: PhaseStatus, verdict: CanaryVerdict, now: float) -> str:
    steps = ctx.policy.canary.steps
    if step + 1 < len(steps):
        weight = steps[step + 1]
        deployment.set_canary_weight(uow, t.task, t.language, weight, t.revision,
                                     f"step {step + 1} passed")
        ctx.phase(uow, t, Phase.CANARY, st.but(step=step + 1, step_started_at=now,
                                           inconclusive=0), f"canary at {weight:g}%", None)
        return f"canary step {step + 1} passed: weight {weight:g}%"
    deployment.promote(uow, t.task, t.language, version, t.revision,
                       f"canary passed all {len(steps)} steps")
    baseline = next((a for a in (verdict.champion.accuracy, verdict.champion_estimate)
                     if a is not None), 0.0)
    estimator = (verdict.label_free or {}).get("estimator") if (
        verdict.champion.accuracy is None) else None
    guard = Guard(until=now + ctx.policy.guard_window_s, since=now, version=version,
                  baseline_accuracy=float(baseline), baseline_estimator=estimator)
    ctx.to_steady(uow, t, "promoted", cooldown=True, expected=None, guard=guard)
    return f"v{version} promoted after {len(steps)} canary steps"

# -- PAUSED ------------------------------------------------------------------------
def paused(ctx: StepContext, t: TrackState, tp: TrackPolicy) -> str:
    if t.canary is None:
        with ctx.guarded(t) as uow:
            ctx.to_steady(uow, t, "canary ended while paused", cooldown=False,
                          expected=t.revision)
        return "canary ended by hand: STEADY"
    return "paused: waiting for `xlt canary resume` or `xlt canary abort`"
