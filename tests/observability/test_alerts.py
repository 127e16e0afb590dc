"""Alerts reach people: every `alert` event is delivered to each policy webhook through
the alert_deliveries outbox, survives a receiver outage and a controller restart, and
arrives exactly once. Real HTTP receivers on 127.0.0.1, real SQLite and PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import select

from controller.alerts.dispatcher import check_mirror_stuck, dispatch, post
from controller.policy import parse_policy
from controller.runtime.bootstrap import build_controller, build_operations
from registry import queries
from registry.commands import alerts
from registry.errors import InvalidInput
from registry.schema import AlertDelivery, Event
from tests.support.obs_support import (
    TASK,
    Receiver,
    open_registry,
    regressing_track,
    start_controller,
    stop,
    wait_for,
)


def alert_policy(receiver: Receiver, **alerts_extra: float) -> str:
    settings = {"interval_s": 0.5, "retry_base_s": 0.5, **alerts_extra}
    extra = "\n".join(f"{k} = {v}" for k, v in settings.items())
    return f"""
base = "tiny@1"
tick_interval_s = 1
check_interval_s = 360000
guard_max_accuracy_drop = 0.05
[[tracks]]
task = "{TASK}"
language = "sw"
[canary]
min_feedback_events = 5
[alerts]
{extra}
[[alerts.webhooks]]
name = "oncall"
url = "{receiver.url}/hook"
[[alerts.webhooks]]
name = "chat"
url = "{receiver.url}/slack"
format = "slack"
"""


def deliveries(reg) -> list[tuple[str, str, int]]:
    with reg.reading() as s:
        return [(d.receiver, d.status, d.attempts)
                for d in s.scalars(select(AlertDelivery).order_by(AlertDelivery.id))]


@pytest.mark.slow
def test_rollback_alert_arrives_once_across_outage_and_restart(
        sqlite_url: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    home = tmp_path / "home"
    reg = regressing_track(sqlite_url, home, tiny_model_dir)
    receiver = Receiver().start()
    receiver.stop()  # the receiver is down while the rollback fires
    policy = tmp_path / "policy.toml"
    policy.write_text(alert_policy(receiver), encoding="utf-8")
    log = home / "controller.log"

    proc = start_controller(home, sqlite_url, policy, log=log)
    try:
        # the rollback and its alert commit together, with one delivery row per receiver;
        # the receiver is down, so delivery fails and backs off
        wait_for("failed deliveries", lambda: (d := deliveries(reg)) and all(
            a >= 1 for _, _, a in d), proc=proc, log=log)
    finally:
        assert stop(proc) == 0, log.read_text()[-2000:]
    status = reg.status(TASK)[0]
    assert (status["champion"], status["phase"]) == (1, "STEADY")
    assert {(r, s) for r, s, _ in deliveries(reg)} == {("oncall", "pending"),
                                                        ("chat", "pending")}
    assert receiver.received == []

    receiver.start()  # back up; a new controller process takes over
    proc = start_controller(home, sqlite_url, policy, log=log)
    try:
        wait_for("deliveries", lambda: {s for _, s, _ in deliveries(reg)} == {"delivered"},
                 proc=proc, log=log)
        time.sleep(3)  # several more dispatch rounds: nothing is sent again
    finally:
        assert stop(proc) == 0
        receiver.stop()
    alert = next(e for e in reg.query(queries.history, TASK, "sw") if e["action"] == "alert")
    by_path = {}
    for got in receiver.received:
        by_path.setdefault(got["path"], []).append(got)
    assert sorted(by_path) == ["/hook", "/slack"]
    assert [len(v) for v in by_path.values()] == [1, 1], receiver.received  # exactly once
    hook, slack = by_path["/hook"][0], by_path["/slack"][0]
    assert hook["headers"]["Idempotency-Key"] == f"xlt-alert-{alert['id']}"
    assert hook["body"]["kind"] == "rollback" and hook["body"]["language"] == "sw"
    assert "regression in guard window" in hook["body"]["reason"]
    assert "emoji-group/sw: rolled back" in slack["body"]["text"]
    assert slack["headers"]["Idempotency-Key"] == hook["headers"]["Idempotency-Key"]


def test_delivery_rows_commit_with_the_alert_and_retry_until_acknowledged(
        db_url: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    receiver = Receiver()
    reg = regressing_track(db_url, tmp_path / "home", tiny_model_dir)
    policy = parse_policy(alert_policy(receiver, retry_base_s=0.2), "test policy")
    reg = open_registry(db_url, tmp_path / "home", "controller")
    ctl = build_controller(reg, policy, ops=build_operations(reg, policy))
    ctl.run_once()  # rollback + alert + delivery rows; the receiver is down
    assert sorted(deliveries(reg)) == [("chat", "pending", 1), ("oncall", "pending", 1)]
    with reg.reading() as s:
        (event,) = s.scalars(select(Event).where(Event.action == "alert")).all()
        assert (event.after or {}).get("kind") == "rollback"
    receiver.start()
    try:
        assert dispatch(reg, policy.alerts, "me").delivered == 0  # still backing off
        time.sleep(0.3)
        assert dispatch(reg, policy.alerts, "me").delivered == 2
        assert dispatch(reg, policy.alerts, "me").delivered == 0
    finally:
        receiver.stop()
    assert sorted(deliveries(reg)) == [("chat", "delivered", 2), ("oncall", "delivered", 2)]
    assert len(receiver.received) == 2


def test_the_fenced_tick_commits_delivery_rows_with_the_alert_before_any_dispatch(
        db_url: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    """Under `xlt controller run` every write is fenced by the leader lock; the alert's
    delivery rows must commit in its own transaction there too, not come later from the
    dispatcher's catch-up (which looks back only `catch_up_s`)."""
    receiver = Receiver()
    regressing_track(db_url, tmp_path / "home", tiny_model_dir)
    policy = parse_policy(alert_policy(receiver), "test policy")
    reg = open_registry(db_url, tmp_path / "home", "someone")  # no receivers of its own
    ctl = build_controller(reg, policy, ops=build_operations(reg, policy))
    try:
        lines = ctl.tick()  # the fenced reconciler alone: no drain, no dispatch
    finally:
        ctl.leader.release()
    assert any("rolled back" in line for line in lines), lines
    with reg.reading() as s:
        (event,) = s.scalars(select(Event).where(Event.action == "alert")).all()
        rows = s.scalars(select(AlertDelivery).where(AlertDelivery.event_id == event.id)).all()
    assert sorted(r.receiver for r in rows) == ["chat", "oncall"]
    assert reg.alert_receivers == ()  # the caller's registry was not rewired


def test_a_crash_between_send_and_mark_resends_with_the_same_key(
        db_url: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    receiver = Receiver().start()
    try:
        reg = regressing_track(db_url, tmp_path / "home", tiny_model_dir)
        policy = parse_policy(alert_policy(receiver, lease_s=0.3), "test policy")
        reg.alert_receivers = policy.alerts.receivers
        with reg.unit_of_work() as uow:
            uow.event("alert", task=TASK, language="sw", reason="x", after={"kind": "test"})
        with reg.unit_of_work() as uow:
            claimed = alerts.claim(uow, "dead-dispatcher", lease_s=0.3)
        assert len(claimed) == 2
        hooks = {w.name: w for w in policy.alerts.webhooks}
        for item in claimed:  # sent, then the process dies before marking
            post(hooks[item["receiver"]], item["event"])
        assert dispatch(reg, policy.alerts, "me").delivered == 0  # leased to the dead one
        time.sleep(0.4)
        assert dispatch(reg, policy.alerts, "me").delivered == 2
        with reg.unit_of_work() as uow:  # the dead dispatcher cannot mark what it lost
            assert not alerts.mark_delivered(uow, claimed[0]["delivery_id"], "dead-dispatcher")
    finally:
        receiver.stop()
    keys = [r["headers"]["Idempotency-Key"] for r in receiver.received]
    assert len(keys) == 4 and len(set(keys)) == 1  # a receiver dedupes on the key


def test_alerts_written_without_receivers_are_caught_up(registry, tiny_model_dir) -> None:
    receiver = Receiver()
    policy = parse_policy(alert_policy(receiver), "test policy")
    registry.init()
    with registry.unit_of_work() as uow:  # e.g. written by a process without the policy
        uow.event("alert", task=TASK, language="sw", reason="x", after={"kind": "test"})
    assert deliveries(registry) == []
    receiver.start()
    try:
        report = dispatch(registry, policy.alerts, "me")
    finally:
        receiver.stop()
    assert (report.added, report.delivered) == (2, 2)


def test_mirror_stuck_alerts_once_per_episode(registry) -> None:
    registry.init()
    policy = parse_policy("[alerts]\nmirror_stuck_after_s = 0.05\n").alerts
    registry.note("note", task=TASK, language="sw", after={"x": 1})  # an outbox row
    assert not check_mirror_stuck(registry, policy)  # not old enough yet
    time.sleep(0.1)
    assert check_mirror_stuck(registry, policy)
    assert not check_mirror_stuck(registry, policy)  # same stuck row: no second alert
    (alert,) = [e for e in registry.query(queries.history) if e["action"] == "alert"]
    assert alert["reason"].startswith("mirror stuck: outbox row")
    assert alert["after"]["kind"] == "mirror_stuck"


@pytest.mark.parametrize("snippet, message", [
    ('[[alerts.webhooks]]\nname = "a"\nurl = "ftp://x"', "alerts.webhooks.0.url"),
    ('[[alerts.webhooks]]\nname = "a"\nurl = "http://x"\nformat = "teams"',
     "alerts.webhooks.0.format"),
    ('[[alerts.webhooks]]\nname = "a"\nurl = "http://x"\n'
     '[[alerts.webhooks]]\nname = "a"\nurl = "http://y"', "used twice"),
    ("[metrics]\nport = 70000", "metrics.port"),
])
def test_bad_alert_and_metrics_policy_is_refused_clearly(snippet: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        parse_policy(snippet, "p.toml")
    assert "\n" not in str(info.value)
