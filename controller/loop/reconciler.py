"""The reconciler: per track, read state, take one idempotent step, write it down.

Phases (tracks.phase) and what each tick does:

  STEADY      guard window after a promotion: roll back on regression; else, when a check
              is due, run the drift check and, on drift past the cooldown, start retraining
  RETRAINING  watch the training job (never wait on it: controller.loop.training_steps);
              success -> GATING, failure -> retry or STEADY
  GATING      evaluate candidate and champion, record the gate report; pass -> CANARY step 1
              (or promote when there is no champion), fail -> reject -> STEADY
  CANARY      after each interval, analyse live traffic; pass -> next step or promote,
              fail -> abort past the failure limit, inconclusive -> PAUSED past its limit
  PAUSED      waits for `xlt canary resume` or `xlt canary abort`
  (GATING, CANARY and PAUSED live in controller.loop.rollout_steps.)

Every transition is one registry transaction guarded by the revision read at the start of
the step, so two replicas (or a restarted one) can never both apply it: the loser gets
StaleRevision and does nothing. All state lives in the database; killing the process at
any point loses at most the work of the step in flight, which the next tick redoes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from controller.analysis.gates import guard_verdict
from controller.analysis.label_free import arm_estimate
from controller.executors.base import Executor
from controller.executors.local import InlineExecutor
from controller.loop import attempts, failpoints
from controller.loop.attempt_steps import AttemptSteps
from controller.loop.clock import Clock
from controller.loop.operations import Operations
from controller.loop.phase_status import Guard, PhaseStatus
from controller.loop.rollout_steps import CANARY, PAUSED, STEADY, RolloutSteps
from controller.loop.training_steps import TrainingSteps
from controller.loop.upgrade_steps import RESTARTABLE, UpgradeSteps
from controller.policy import Policy, TrackPolicy
from registry.commands import deployment, records
from registry.errors import StaleRevision, XltError
from registry.service import Registry
from registry.upgrades import UpgradeState

log = logging.getLogger("xlt.controller")

RETRAINING, GATING = "RETRAINING", "GATING"


@dataclass(frozen=True)
class TrackState:
    task: str
    language: str
    phase: str
    status: PhaseStatus
    revision: int
    champion: int | None
    canary: int | None
    canary_weight: float
    upgrade: UpgradeState | None = None  # the track's active base upgrade, if any
    base: str | None = None

    @classmethod
    def from_status(cls, row: dict[str, Any], upgrade: UpgradeState | None = None
                    ) -> TrackState:
        return cls(row["task"], row["language"], row["phase"],
                   PhaseStatus.from_dict(row["phase_data"]),
                   row["revision"], row["champion"], row["canary"], row["canary_weight"],
                   upgrade, row.get("base"))


class Reconciler(UpgradeSteps, AttemptSteps, TrainingSteps, RolloutSteps):
    def __init__(self, registry: Registry, policy: Policy, ops: Operations, clock: Clock,
                 actor: str = "controller", executor: Executor | None = None) -> None:
        self.reg = registry
        self.executor = executor or InlineExecutor(registry, ops.train)
        self.policy = policy
        self.ops = ops
        self.clock = clock
        self.actor = actor

    # -- the loop ----------------------------------------------------------------------
    def tick(self) -> list[str]:
        """One pass over every controlled track; returns what each did (for the log)."""
        # reads that scale with the work: every track's state in one query, the upgrades in
        # flight, the jobs that RETRAINING tracks wait on; a steady track costs no more
        rows = {(r["task"], r["language"]): r for r in self.reg.status()}
        done = self.file_policy_upgrades(rows)
        upgrades = self.active_upgrades()
        self.prefetch_jobs(rows.values())
        for tp in self.policy.tracks:
            row = rows.get((tp.task, tp.language))
            if row is None and self.policy.base:
                self.reg.actor = self.actor
                self.reg.ensure_track(tp.task, tp.language, self.policy.base)
                row = self.reg.status(tp.task, tp.language)[0]
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
        return done + self.dispatch_training()

    def step(self, t: TrackState, tp: TrackPolicy) -> str:
        handler = {STEADY: self._steady, RETRAINING: self._retraining, GATING: self._gating,
                   CANARY: self._canary, PAUSED: self._paused}.get(t.phase)
        if handler is None:
            return f"unknown phase {t.phase}: left alone"
        return handler(t, tp)

    # -- writing -----------------------------------------------------------------------
    def _uow(self) -> Any:  # one registry transaction, attributed to the controller
        self.reg.actor = self.actor
        return self.reg.unit_of_work()

    @contextmanager
    def _guarded(self, t: TrackState) -> Iterator[Any]:
        """A transaction that first locks the track and checks it is still at the revision
        this step read: the fence that keeps two replicas from both acting."""
        with self._uow() as uow:
            uow.lock_track(t.task, t.language, t.revision)
            yield uow
        failpoints.after_commit()

    def _phase(self, uow: Any, t: TrackState, phase: str, status: PhaseStatus,
               reason: str, expected: int | None) -> None:
        deployment.set_phase(uow, t.task, t.language, phase, status.to_dict(), expected,
                             reason)

    def _to_steady(self, t: TrackState, reason: str, *, cooldown: bool, expected: int | None,
                   uow: Any = None, alert: str | None = None, alert_kind: str = "alert",
                   **changes: Any) -> None:
        """Back to STEADY (keeping what `PhaseStatus.steady` keeps, plus `changes`), with
        an optional cooldown and alert, in `uow` or a transaction of its own."""
        status = t.status.steady(**changes)
        if cooldown:
            status = status.but(cooldown_until=self.clock.now() + self.policy.cooldown_s)
        if uow is None:
            with self._guarded(t) as own:
                self._to_steady(t, reason, cooldown=cooldown, expected=expected, uow=own,
                                alert=alert, alert_kind=alert_kind, **changes)
            return
        self._phase(uow, t, STEADY, status, reason, expected)
        if alert:  # the kind lets webhooks and dashboards tell alerts apart
            uow.event("alert", task=t.task, language=t.language, reason=alert,
                      after={"kind": alert_kind})

    # -- STEADY ------------------------------------------------------------------------
    def _steady(self, t: TrackState, tp: TrackPolicy) -> str:
        now = self.clock.now()
        guard = t.status.guard
        if guard:
            return self._guard(t, guard, now)
        if t.upgrade is not None and t.upgrade.status in RESTARTABLE:
            return self.start_upgrade_training(t, now)
        if (pending := self._attempt_due(t, now)) is not None:  # a retry, or not servable
            return pending
        if t.champion is None and now >= (t.status.cooldown_until or 0):
            return self._start_training(t, now, "no champion yet: train the first one", None,
                                        [])
        if now - (t.status.last_check_at or 0) < self.policy.check_interval_s:
            return "steady"
        outcome = self.ops.check_drift(t.task, t.language,
                                       self.policy.drift_for(t.task, t.language))
        cooling = now < (t.status.cooldown_until or 0)
        # a pending retry answers the drift; an exhausted plan waits for a new champion/base
        settled = attempts.settled(t.status.attempts, t.base or "", t.champion)
        if outcome.verdict != "drift" or cooling or settled:
            why = f"drift check: {outcome.verdict}" + (" (in cooldown)" if cooling else "")
            why += f" (attempts {settled})" if settled and not cooling else ""
            with self._guarded(t) as uow:
                self._phase(uow, t, STEADY, t.status.but(last_check_at=now), why, t.revision)
            return why
        return self._start_training(
            t, now, f"drift ({', '.join(outcome.drifted_signals) or 'signals'}): retrain",
            outcome.report_id, outcome.drifted_signals)

    def _start_training(self, t: TrackState, now: float, reason: str,
                        report_id: int | None, signals: list[str],
                        extra: dict[str, Any] | None = None) -> str:
        plan, opts, seen = self._attempt_context(t, report_id)
        first = attempts.first_inputs(self.policy, t.base or "", t.language, t.champion,
                                      opts.teacher, opts.variants, report_id is not None, extra)
        chosen = attempts.next_inputs(plan, self.policy, opts, seen, first)
        if chosen is None or len(plan.attempts) >= self.policy.attempts.max_attempts:
            # every input set within reach was trained before: never train it again
            plan = attempts.failed(plan, None, "rejected", [], {}, now, self.policy, False)
            return self._exhausted(t, plan, None, f"nothing new to train ({reason})")
        inputs, change = chosen
        params = {**training_params(self.policy, t, report_id, extra), **inputs.params()}
        with self._guarded(t) as uow:
            job = records.create_job(uow, "train", params, self.policy.executor, t.task,
                                     t.language)
            plan = attempts.begin(plan, inputs, change, job.id)
            self._phase(uow, t, RETRAINING,
                        t.status.steady(job_id=job.id, attempt=1, last_check_at=now,
                                        drift_report_id=report_id, attempts=plan),
                        f"{reason}: attempt {len(plan.attempts)} ({change})", t.revision)
        return f"{reason} (job {job.id}, attempt {len(plan.attempts)}: {change})"

    def _guard(self, t: TrackState, guard: Guard, now: float) -> str:
        if now > guard.until:
            with self._guarded(t) as uow:
                self._phase(uow, t, STEADY, t.status.but(guard=None), "guard window over",
                            t.revision)
            return "guard window over"
        rows = [r for r in self.ops.live_events(t.task, t.language, guard.since, now)
                if r.get("adapter_version") == t.champion]
        allowed = self.policy.evidence_for(t.task, t.language)
        baseline = guard.baseline_accuracy if guard.baseline_accuracy is not None else 0.0
        judged = guard_verdict(rows, baseline,
                               self.policy.guard_max_accuracy_drop, self.policy.canary, allowed,
                               arm_estimate(self.ops, t.task, t.language, t.champion, rows,
                                            self.policy.canary, allowed,
                                            guard.baseline_estimator))
        if judged.state != "regression":
            return judged.reason
        reason = judged.reason
        with self._guarded(t) as uow:
            deployment.rollback(uow, t.task, t.language, None, t.revision, reason)
            self._to_steady(t, "rolled back", cooldown=True, expected=None, uow=uow,
                            alert=reason, alert_kind="rollback")
        return "rolled back: " + reason


def training_params(policy: Policy, t: TrackState, report_id: int | None,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"task": t.task, "language": t.language, "epochs": policy.training.epochs,
            "teacher": policy.training.teacher, "seed": policy.training.seed,
            "device": policy.training.device, "continue_from": t.champion,
            "top_blocks": policy.training.top_blocks,
            "calibration_folds": policy.calibration_folds_for(t.task, t.language),
            "lexical": policy.training.lexical,
            "lexical_refit": policy.training.lexical_refit,
            "drift_report_id": report_id, **(extra or {})}


def request_retrain(registry: Registry, policy: Policy, task: str, language: str,
                    reason: str, extra: dict[str, Any] | None = None,
                    actor: str = "controller") -> int:
    """Start a retraining job now (a person's `xlt retrain`, or the demo); the next ticks
    carry it through gates and canary like a drift-triggered one. Only from STEADY."""
    from registry.errors import InvalidTransition

    rows = registry.status(task, language)
    if not rows:
        raise InvalidTransition(f"no track {task}/{language}", "see `xlt status`")
    t = TrackState.from_status(rows[0])
    if t.phase != STEADY:
        raise InvalidTransition(f"track {task}/{language} is in {t.phase}",
                                "wait until it is STEADY")
    params = training_params(policy, t, None, extra)
    registry.actor = actor
    with registry.unit_of_work() as uow:
        uow.lock_track(task, language, t.revision)
        job = records.create_job(uow, "train", params, policy.executor, task, language)
        status = PhaseStatus(last_check_at=t.status.last_check_at, job_id=job.id, attempt=1)
        deployment.set_phase(uow, task, language, RETRAINING, status.to_dict(), None, reason)
    return job.id

