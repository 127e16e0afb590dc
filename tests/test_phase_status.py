"""A track's typed phase state: what the steps stored as a dict reads back as typed fields,
writes back as the same JSON, keeps keys it does not know, and returning to STEADY keeps
only what STEADY keeps."""

from __future__ import annotations

import json

import pytest

from controller import attempts
from controller.canary_analysis import ArmStats
from controller.phase_status import Guard, PhaseStatus

CANARY_DATA = {"last_check_at": 10.0, "cooldown_until": 50.0, "candidate": 3, "step": 1,
               "step_started_at": 20.0, "last_analysis_at": 30.0, "failures": 0,
               "inconclusive": 2, "job_id": 7, "attempt": 1, "upgrade_id": 4,
               "champion_stats": {"events": 90, "labelled": 40, "correct": 30,
                                  "mean_confidence": 0.7}}


def test_stored_phase_data_reads_typed_and_writes_back_the_same() -> None:
    status = PhaseStatus.from_dict(json.loads(json.dumps(CANARY_DATA)))
    assert status.on_trial() == 3 and status.step == 1 and status.inconclusive == 2
    assert status.champion_stats == ArmStats(90, 40, 30, 0.7)
    assert status.to_dict() == CANARY_DATA
    # a newer replica's key survives this one's write
    newer = PhaseStatus.from_dict({**CANARY_DATA, "rollout_hint": "x"})
    assert newer.but(step=2).to_dict() == {**CANARY_DATA, "step": 2, "rollout_hint": "x"}


def test_steady_keeps_the_check_time_cooldown_and_plan_only() -> None:
    plan = attempts.AttemptPlan("tiny@1", None)
    guard = Guard(until=99.0, since=60.0, version=3, baseline_accuracy=0.6)
    status = PhaseStatus.from_dict(CANARY_DATA).but(attempts=plan)
    steady = status.steady(guard=guard)
    assert steady.to_dict() == {"last_check_at": 10.0, "cooldown_until": 50.0,
                                "attempts": plan.to_dict(),
                                "guard": {"until": 99.0, "since": 60.0, "version": 3,
                                          "baseline_accuracy": 0.6}}
    back = PhaseStatus.from_dict(json.loads(json.dumps(steady.to_dict())))
    assert back.guard == guard and back.attempts == plan
    assert back.but(guard=None).to_dict() == {"last_check_at": 10.0, "cooldown_until": 50.0,
                                              "attempts": plan.to_dict()}


def test_a_phase_without_a_candidate_says_so() -> None:
    with pytest.raises(ValueError, match="names no candidate"):
        PhaseStatus.from_dict({"job_id": 1}).on_trial()
    assert PhaseStatus.from_dict(None) == PhaseStatus()
