"""What the reconciler asks of the rest of the controller. The reconciler decides; these
do the work: in workers, the jobs (training, gate evaluation, drift checks: `run_job`); in
the tick, reads of live traffic and label-free scoring. The real wiring is
controller.ops.live.LiveOperations; the interface keeps the state machine readable."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from controller.analysis.label_free import Scoring
from controller.policy import DriftPolicy, Policy


@dataclass(frozen=True)
class DriftOutcome:
    verdict: str  # drift | stable | insufficient_data
    report_id: int | None
    drifted_signals: list[str] = field(default_factory=list)


class Operations(Scoring, Protocol):
    """Every capability the loop calls: these, and label-free scoring (Scoring)."""

    def check_drift(self, task: str, language: str, policy: DriftPolicy) -> DriftOutcome:
        """Run the drift check of one track and record its report in the registry."""

    def run_job(self, kind: str, params: dict[str, Any]) -> dict[str, Any]:
        """What a worker runs for a job (train, gate, drift); returns its result (JSON)."""

    def train(self, task: str, language: str, params: dict[str, Any]) -> dict[str, Any]:
        """Train and register a candidate; returns at least {"version": int}."""

    def evaluate(self, task: str, language: str, version: int) -> dict[str, Any]:
        """Evaluation dict on the held-out split: accuracy, macro_f1, ece,
        english_accuracy, correct (per item, in a fixed item order)."""

    def fairness(self, task: str, language: str, version: int,
                 policy: Policy) -> dict[str, tuple[float, float]]:
        """(accuracy after the change, floor) for each controlled language it affects."""

    def live_events(self, task: str, language: str, since: float,
                    until: float) -> list[dict[str, Any]]:
        """Inference events of the track in [since, until): adapter_version, prediction,
        confidence, feedback_label."""
