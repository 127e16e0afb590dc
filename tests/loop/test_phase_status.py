"""A track's typed phase state: what the steps stored as a dict reads back as typed fields,
writes back as the same JSON, keeps keys it does not know, and returning to STEADY keeps
only what STEADY keeps."""

from __future__ import annotations

import json

import pytest

from controller.analysis.canary import ArmStats
from controller.loop import attempts
from controller.loop.phase_status import Guard, PhaseStatus
from controller.runtime.bootstrap import build_reconciler
from registry.errors import InvalidInput

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
                                          "baseline_accuracy": 0.6,
                                          "baseline_estimator": None}}
    back = PhaseStatus.from_dict(json.loads(json.dumps(steady.to_dict())))
    assert back.guard == guard and back.attempts == plan
    assert back.but(guard=None).to_dict() == {"last_check_at": 10.0, "cooldown_until": 50.0,
                                              "attempts": plan.to_dict()}


def test_a_guard_set_by_hand_may_name_only_its_times() -> None:
    status = PhaseStatus.from_dict({"guard": {"since": 1.0, "until": 2.0}})
    assert status.guard == Guard(until=2.0, since=1.0)
    assert status.to_dict() == {"guard": {"until": 2.0, "since": 1.0, "version": None,
                                          "baseline_accuracy": None,
                                          "baseline_estimator": None}}
    # a label-free baseline names its map, and the guard reads it back
    named = PhaseStatus.from_dict({"guard": {"since": 1.0, "until": 2.0, "version": 3,
                                             "baseline_accuracy": 0.7,
                                             "baseline_estimator": "features"}})
    assert named.guard is not None and named.guard.baseline_estimator == "features"
    assert PhaseStatus.from_dict(named.to_dict()) == named


@pytest.mark.parametrize("raw", [{"guard": {"until": 1.0}}, {"guard": "soon"},
                                 {"champion_stats": {"events": 1}}, {"attempts": [1, 2]}])
def test_malformed_phase_data_is_a_domain_error_or_empty_when_peeking(raw: dict) -> None:
    with pytest.raises(InvalidInput, match="malformed phase data"):
        PhaseStatus.from_dict(raw)
    assert PhaseStatus.from_dict(raw, strict=False) == PhaseStatus()


def test_a_phase_without_a_candidate_says_so() -> None:
    with pytest.raises(ValueError, match="names no candidate"):
        PhaseStatus.from_dict({"job_id": 1}).on_trial()
    assert PhaseStatus.from_dict(None) == PhaseStatus()


def test_a_track_with_malformed_phase_data_is_refused_alone(registry, tiny_model_dir) -> None:
    from sqlalchemy import select

    from controller.loop.clock import ManualClock
    from controller.policy import Policy
    from registry.schema import Track

    now = 1_800_000_000.0
    registry.init()
    registry.register_encoder("tiny", "1", tiny_model_dir)
    for lang in ("sw", "yo"):
        registry.ensure_track("emoji-group", lang, "tiny@1")
    with registry.unit_of_work() as uow:  # steady, checked; yo's guard is broken by hand
        for track in uow.session.scalars(select(Track)):
            track.phase_data = {"last_check_at": now, "cooldown_until": now * 2,
                                **({"guard": {"until": "?"}} if track.language == "yo"
                                   else {})}
    policy = Policy.model_validate({"base": "tiny@1", "check_interval_s": 10**9,
                                    "tracks": [{"task": "emoji-group", "language": lang}
                                               for lang in ("sw", "yo")]})
    clock = ManualClock(now + 1)
    lines = build_reconciler(registry, policy, clock=clock).tick()
    assert "emoji-group/sw: steady" in lines
    refused = [line for line in lines if line.startswith("emoji-group/yo: refused:")]
    assert refused and "malformed phase data" in refused[0], lines
