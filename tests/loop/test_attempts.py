"""Rejections that change the next attempt (tiny model, real training and registry): a
language whose candidates cannot pass the floors gets at most the policy's number of
attempts, each on different recorded inputs, then one alert and "not servable on <base>";
resolve serves its fallback (the parent tag's champion)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.loop import attempts
from controller.loop.clock import ManualClock
from controller.loop.phase_status import PhaseStatus
from controller.ops.model_cache import ModelCache
from controller.policy import parse_policy
from controller.runtime.bootstrap import build_controller, build_operations
from controller.training.pipeline import train_adapter
from registry import queries
from registry.errors import InvalidTransition
from tests.support.loop_support import HOUR, START, TASK, open_registry, setup

POLICY = """
base = "tiny@1"
[[tracks]]
task = "emoji-group"
language = "sr-Latn"
[gates]
min_accuracy = 0.99   # out of reach for the tiny random model: every attempt fails
bootstrap_samples = 100
[training]
epochs = 1
device = "cpu"
[attempts]
max_attempts = 3
backoff_s = 3600
backoff_factor = 2
"""


@pytest.mark.slow
def test_failing_language_is_tried_differently_then_marked(sqlite_url: str, tmp_path: Path,
                                                           tiny_model_dir: Path) -> None:
    home = tmp_path / "home"
    setup(sqlite_url, home, tiny_model_dir)
    reg = open_registry(sqlite_url, home, "person")
    # the parent language has a champion (a person trained and promoted it)
    reg.ensure_track(TASK, "sr", "tiny@1")
    parent = train_adapter(reg, TASK, "sr", epochs=1, device="cpu", limit_pairs=200)
    reg.promote(TASK, "sr", parent["version"], reason="parent champion")

    policy = parse_policy(POLICY)
    clock = ManualClock(START)
    ops = build_operations(reg, policy, models=ModelCache(reg, "cpu"), clock=clock)
    controller = build_controller(reg, policy, ops=ops, clock=clock)
    log = []
    for hour in range(16):
        clock._now = START + hour * HOUR
        log.append(controller.tick() + controller.settle_training())

    jobs = [e["after"]["params"] for e in reg.query(queries.history, TASK, "sr-Latn")
            if e["action"] == "job_created" and e["after"]["kind"] == "train"]
    assert len(jobs) == 3, log  # the policy's number of attempts, no more
    fingerprints = [p["inputs_fingerprint"] for p in jobs]
    assert len(set(fingerprints)) == 3, jobs
    recorded = [(p["teacher"], tuple(p["data_languages"]), p["epochs"], p["target_labels"])
                for p in jobs]
    assert len(set(recorded)) == 3, recorded  # each attempt differs in what it trains on
    assert recorded[0] == ("en", ("sr-Latn",), 1, False)
    assert recorded[1][3] is True  # the ladder's first change: the language's own labels

    # the candidates' adapters record the same inputs (lineage)
    adapters = reg.query(queries.list_adapters, TASK, "sr-Latn")
    assert [a["status"] for a in adapters] == ["rejected"] * 3
    assert sorted(a["hyperparams"]["inputs_fingerprint"] for a in adapters) == sorted(
        fingerprints)

    history = reg.query(queries.history, TASK, "sr-Latn")
    alerts = [e for e in history if e["action"] == "alert"]
    assert len(alerts) == 1, [a["reason"] for a in alerts]
    assert "accuracy_floor" in alerts[0]["reason"]
    assert "not servable on tiny@1" in alerts[0]["reason"]
    assert "best attempt" in alerts[0]["reason"]
    marked = [e for e in history if e["action"] == "not_servable"]
    assert len(marked) == 1 and marked[0]["after"]["unservable_on"] == "tiny@1"
    assert len(marked[0]["after"]["attempts"]) == 3

    # backoff: attempt 2 one hour after the first rejection, attempt 3 two hours after
    created = [e["at"] for e in history if e["action"] == "job_created"
               and e["after"]["kind"] == "train"]
    assert len(created) == 3
    row = next(r for r in reg.status(TASK) if r["language"] == "sr-Latn")
    assert row["not_servable_on"] == "tiny@1" and row["champion"] is None
    plan = PhaseStatus.from_dict(row["phase_data"]).attempts
    assert plan is not None and plan.exhausted
    assert [a.outcome for a in plan.attempts] == ["rejected"] * 3
    assert all("accuracy_floor" in a.failed_gates for a in plan.attempts)

    # served by its fallback: the parent tag's champion
    res = reg.resolve(TASK, "sr-Latn", "user-1")
    assert (res.served_language, res.version, res.via) == ("sr", parent["version"], "parent")
    # and the controller leaves it alone: no fourth attempt, no second alert
    clock._now = START + 40 * HOUR
    assert "not servable on tiny@1" in " ".join(controller.tick())
    assert len([e for e in reg.query(queries.history, TASK, "sr-Latn")
                if e["action"] == "alert" or (e["action"] == "job_created"
                                              and e["after"]["kind"] == "train")]) == 4

    # an outbox row went with the mark (the MLflow mirror sees it)
    from sqlalchemy import select

    from registry.schema import OutboxMessage

    with reg.reading() as s:
        topics = s.scalars(select(OutboxMessage.topic)).all()
    assert topics.count("not_servable") == 1
    # a track with a champion is servable: marking it is refused, nothing changes
    with pytest.raises(InvalidTransition):
        reg.mark_not_servable(TASK, "sr", "by mistake")
    assert next(r for r in reg.status(TASK) if r["language"] == "sr")["not_servable_on"] is None


def test_mark_and_clear(registry, tiny_model_dir: Path) -> None:
    registry.register_encoder("tiny", "1", tiny_model_dir)
    registry.ensure_track(TASK, "yo", "tiny@1")
    registry.mark_not_servable(TASK, "yo", "attempts exhausted", {"best_figures": {}})
    row = next(r for r in registry.status(TASK) if r["language"] == "yo")
    assert row["not_servable_on"] == "tiny@1"
    assert registry.resolve(TASK, "yo", "k").role == "base"
    registry.clear_not_servable(TASK, "yo", "retry by hand")
    row = next(r for r in registry.status(TASK) if r["language"] == "yo")
    assert row["not_servable_on"] is None
    assert registry.clear_not_servable(TASK, "yo", "again") is None  # nothing to clear
    actions = [e["action"] for e in registry.query(queries.history, TASK, "yo")]
    assert actions.count("not_servable") == 1 and actions.count("servable_again") == 1


def test_plan_never_repeats_inputs_and_follows_the_base() -> None:
    policy = parse_policy(POLICY)
    opts = attempts.Options("en", ("ru", "de"), ("sr-Latn",), True)
    first = attempts.first_inputs(policy, "tiny@1", "sr", None, "en", opts.variants, False)
    plan = attempts.AttemptPlan("tiny@1", None)
    seen: set[str] = set()
    tried = []
    for n in range(5):
        chosen = attempts.next_inputs(plan, policy, opts, seen, first)
        if chosen is None:
            break
        inputs, change = chosen
        plan = attempts.begin(plan, inputs, change, job_id=n + 1)
        plan = attempts.failed(plan, n + 1, "rejected", ["accuracy_floor"],
                               {"accuracy_floor": 0.1 * (n + 1)}, 0.0, policy, True)
        tried.append(inputs.fingerprint())
    assert len(tried) == len(set(tried)) == 5
    # an input set trained before (any earlier job of the track) is never proposed again
    again = attempts.next_inputs(attempts.AttemptPlan("tiny@1", None), policy, opts,
                                 {first.fingerprint()}, first)
    assert again is not None and again[0].fingerprint() != first.fingerprint()
    # the plan as the track's phase data stores it (JSON) and reads it back
    stored = PhaseStatus.from_dict(json.loads(json.dumps(PhaseStatus(attempts=plan).to_dict())))
    assert stored.attempts == plan
    assert attempts.current(stored.attempts, "tiny@1", None) == plan
    assert attempts.current(stored.attempts, "tiny@1", 3) is None  # a new champion: a new plan
    assert (attempts.base_changed(stored.attempts, "tiny@2")
            and not attempts.base_changed(stored.attempts, "tiny@1"))
