"""The reconciler: per track, read state, take one idempotent step, write it down.

Phases (tracks.phase) and what each tick does:

  STEADY      guard window after a promotion: roll back on regression; else, when a check
              is due, queue a drift check job, and when it is done apply its report: on
              drift past the cooldown, start retraining (steady_steps, drift_steps)
  RETRAINING  watch the training job (never wait on it: controller.loop.training_steps);
              success -> GATING, failure -> retry or STEADY
  GATING      follow the candidate's gate job (queued on entry, gate_steps); when done,
              record its report; pass -> CANARY step 1 (or promote when there is no
              champion), fail -> reject -> STEADY
  CANARY      after each interval, analyse live traffic; pass -> next step or promote,
              fail -> abort past the failure limit, inconclusive -> PAUSED past its limit
  PAUSED      waits for `xlt canary resume` or `xlt canary abort`
  (CANARY and PAUSED live in controller.loop.rollout_steps.)

The tick loads no model: trainings, gate evaluations and drift checks are jobs on the
policy's executor (controller.loop.job_steps: one lifecycle for every kind), and after
every track's step the launch pass starts queued ones up to each kind's slots.

Every transition is one registry transaction guarded by the revision read at the start of
the step, so two replicas (or a restarted one) can never both apply it: the loser gets
StaleRevision and does nothing. All state lives in the database; killing the process at
any point loses at most the work of the step in flight, which the next tick redoes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from controller.executors.base import Executor
from controller.loop import gate_steps, job_steps, rollout_steps, training_steps, upgrade_steps
from controller.loop.clock import Clock
from controller.loop.context import StepContext
from controller.loop.operations import Operations
from controller.loop.phase_status import PhaseStatus
from controller.loop.state import Phase, TrackState, training_params
from controller.loop.steady_steps import steady
from controller.policy import Policy, TrackPolicy
from registry.commands import deployment, records
from registry.errors import InvalidTransition, StaleRevision, XltError
from registry.service import Registry
from registry.uow import Fence

log = logging.getLogger("xlt.controller")

Handler = Callable[[StepContext, TrackState, TrackPolicy], str]
HANDLERS: dict[str, Handler] = {
    Phase.STEADY: steady,
    Phase.RETRAINING: training_steps.retraining,
    Phase.GATING: gate_steps.gating,
    Phase.CANARY: rollout_steps.canary,
    Phase.PAUSED: rollout_steps.paused,
}


class Reconciler:
    def __init__(self, registry: Registry, policy: Policy, ops: Operations, clock: Clock,
                 executor: Executor, actor: str = "controller",
                 fence: Fence | None = None) -> None:
        self.ctx = StepContext(registry, policy, ops, clock, executor, actor, fence)

    @property
    def executor(self) -> Executor:
        return self.ctx.executor

    @property
    def actor(self) -> str:
        return self.ctx.actor

    @actor.setter
    def actor(self, actor: str) -> None:
        self.ctx.actor = actor

    # -- the loop ----------------------------------------------------------------------
    def tick(self) -> list[str]:
        """One pass over every controlled track; returns what each did (for the log)."""
        ctx = self.ctx
        # reads that scale with the work: every track's state in one query, the upgrades in
        # flight, the jobs that RETRAINING tracks wait on; a steady track costs no more
        rows = {(r["task"], r["language"]): r for r in ctx.reg.status()}
        done = upgrade_steps.file_policy_upgrades(ctx, rows)
        upgrades = upgrade_steps.active_upgrades(ctx)
        job_steps.prefetch_jobs(ctx, rows.values())
        for tp in ctx.policy.tracks:
            row = rows.get((tp.task, tp.language))
            if row is None and ctx.policy.base:
                ctx.reg.actor = ctx.actor
                ctx.reg.ensure_track(tp.task, tp.language, ctx.policy.base)
                row = ctx.reg.status(tp.task, tp.language)[0]
            if row is None:
                done.append(f"{tp.task}/{tp.language}: no track in the registry (skipped)")
                continue
            try:
                outcome = self.step(
                    TrackState.from_status(row, upgrades.get((tp.task, tp.language))), tp)
            except StaleRevision:
                outcome = "another writer changed the track; next tick"
            except XltError as exc:
                outcome = f"refused: {exc}"
                log.warning("%s/%s: %s", tp.task, tp.language, exc)
            done.append(f"{tp.task}/{tp.language}: {outcome}")
        return done + self.dispatch_jobs()

    def step(self, t: TrackState, tp: TrackPolicy) -> str:
        handler = HANDLERS.get(t.phase)
        if handler is None:
            return f"unknown phase {t.phase}: left alone"
        return handler(self.ctx, t, tp)

    def dispatch_jobs(self) -> list[str]:
        """The launch pass: queued jobs of every kind, up to each kind's slots."""
        return job_steps.dispatch(self.ctx)


def request_retrain(registry: Registry, policy: Policy, task: str, language: str,
                    reason: str, extra: dict[str, object] | None = None,
                    actor: str = "controller") -> int:
    """Start a retraining job now (a person's `xlt retrain`, or the demo); the next ticks
    carry it through gates and canary like a drift-triggered one. Only from STEADY."""
    rows = registry.status(task, language)
    if not rows:
        raise InvalidTransition(f"no track {task}/{language}", "see `xlt status`")
    t = TrackState.from_status(rows[0])
    if t.phase != Phase.STEADY:
        raise InvalidTransition(f"track {task}/{language} is in {t.phase}",
                                "wait until it is STEADY")
    params = training_params(policy, t, None, extra)
    with registry.unit_of_work(actor=actor) as uow:
        uow.lock_track(task, language, t.revision)
        job = records.create_job(uow, "train", params, policy.executor, task, language)
        status = PhaseStatus(last_check_at=t.status.last_check_at, job_id=job.id, attempt=1)
        deployment.set_phase(uow, task, language, Phase.RETRAINING, status.to_dict(), None,
                             reason)
    return job.id
