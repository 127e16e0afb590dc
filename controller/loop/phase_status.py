"""The typed state of a track's phase (tracks.phase_data), in the spirit of Argo Rollouts'
status struct: every field a reconciler step reads or writes is named here with its type,
so the steps read `t.status.candidate` rather than `t.data["candidate"]`, and a misspelt
field fails at once instead of reading a default.

Stored as JSON with unset fields left out, so the stored shape is what the steps wrote
before this type existed. Keys this controller does not know (written by a newer replica
during a rolling upgrade) are kept in `unknown` and written back untouched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from controller.analysis.canary import ArmStats
from controller.loop.attempts import AttemptPlan
from registry.errors import InvalidInput


@dataclass(frozen=True)
class Guard:
    """The window after a promotion in which a regression rolls the champion back. A
    window set by hand may name only its times: no baseline, nothing to roll back for."""
    until: float
    since: float
    version: int | None = None
    baseline_accuracy: float | None = None
    # the map that gave a label-free baseline ("features" | "confidence"; None: labels):
    # the guard's estimate uses the same one, so the two differ by the model, not the map
    baseline_estimator: str | None = None


@dataclass(frozen=True)
class PhaseStatus:
    # carried through every phase: when drift was last checked, no retrain before
    # cooldown_until, and the attempt plan of the current (base, champion)
    last_check_at: float | None = None
    cooldown_until: float | None = None
    attempts: AttemptPlan | None = None
    # STEADY just after a promotion
    guard: Guard | None = None
    # RETRAINING: the job, how many times it was launched, why it was started
    job_id: int | None = None
    attempt: int | None = None
    drift_report_id: int | None = None
    upgrade_id: int | None = None
    # GATING, CANARY, PAUSED: the candidate on trial
    candidate: int | None = None
    # GATING: the gate job evaluating the candidate (controller.loop.gate_steps)
    gate_job_id: int | None = None
    # STEADY: the drift check job in flight (controller.loop.drift_steps); one at a time
    drift_job_id: int | None = None
    # CANARY, PAUSED: the step (index into the policy's steps) and its window
    step: int | None = None
    step_started_at: float | None = None
    last_analysis_at: float | None = None
    failures: int | None = None
    inconclusive: int | None = None
    champion_stats: ArmStats | None = None  # what the 100% step compares with
    unknown: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None, strict: bool = True) -> PhaseStatus:
        """The typed state of stored phase data. Malformed data (a hand edit, a bug) is an
        InvalidInput naming the track's fields, which the reconciler reports for that track
        alone; `strict=False` (bulk reads that only peek at one field) reads it as empty."""
        try:
            data = dict(raw or {})
            values: dict[str, Any] = {k: data.pop(k) for k in list(data) if k in _FIELDS}
            if values.get("attempts"):
                values["attempts"] = AttemptPlan.from_dict(values["attempts"])
            if values.get("guard"):
                values["guard"] = Guard(**values["guard"])
            if values.get("champion_stats"):
                values["champion_stats"] = ArmStats(**values["champion_stats"])
            return cls(**{k: v for k, v in values.items() if v is not None}, unknown=data)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            if not strict:
                return cls()
            raise InvalidInput(f"malformed phase data {raw!r}: {exc}",
                               "the controller leaves the track alone until it is repaired "
                               "(tracks.phase_data)") from exc

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.unknown)
        for name in _FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, AttemptPlan):
                value = value.to_dict()
            elif isinstance(value, Guard | ArmStats):
                value = asdict(value)
            out[name] = value
        return out

    def on_trial(self) -> int:
        """The candidate of a GATING, CANARY or PAUSED track."""
        if self.candidate is None:
            raise ValueError("the track's phase data names no candidate")
        return self.candidate

    def steady(self, **changes: Any) -> PhaseStatus:
        """What a track keeps when it returns to STEADY (check time, cooldown, attempt
        plan), with `changes`."""
        kept = PhaseStatus(last_check_at=self.last_check_at,
                           cooldown_until=self.cooldown_until, attempts=self.attempts)
        return replace(kept, **changes)

    def but(self, **changes: Any) -> PhaseStatus:
        return replace(self, **changes)


# the stored fields, in declaration order (every tick reads every track's phase data)
_FIELDS = tuple(f.name for f in fields(PhaseStatus) if f.name != "unknown")
