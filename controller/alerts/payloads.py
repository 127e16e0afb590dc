"""What a webhook receives for one alert event: a generic JSON object, or Slack's
incoming-webhook body. Both carry the event id, which is also the idempotency key."""

from __future__ import annotations

from typing import Any

KIND_TITLES = {
    "rollback": "rolled back",
    "canary_aborted": "canary aborted",
    "canary_paused": "canary paused",
    "gates_failed": "candidate rejected by gates",
    "training_failed": "training failed",
    "mirror_stuck": "MLflow mirror stuck",
}


def idempotency_key(event_id: int) -> str:
    return f"xlt-alert-{event_id}"


def alert_kind(event: dict[str, Any]) -> str:
    return str((event.get("after") or {}).get("kind") or "alert")


def json_body(event: dict[str, Any]) -> dict[str, Any]:
    return {"id": idempotency_key(event["id"]), "event_id": event["id"],
            "kind": alert_kind(event), "task": event.get("task"),
            "language": event.get("language"), "at": event.get("at"),
            "actor": event.get("actor"), "reason": event.get("reason"),
            "source": "xlt"}


def slack_body(event: dict[str, Any]) -> dict[str, Any]:
    kind = alert_kind(event)
    where = (f"{event['task']}/{event['language']}" if event.get("task")
             else "controller")
    title = KIND_TITLES.get(kind, kind)
    text = f":rotating_light: *xlt {where}: {title}*\n{event.get('reason') or ''}"
    return {"text": text,
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}},
                       {"type": "context", "elements": [{
                           "type": "mrkdwn",
                           "text": f"event {event['id']} at {event.get('at')}"}]}]}


def body(event: dict[str, Any], fmt: str) -> dict[str, Any]:
    return slack_body(event) if fmt == "slack" else json_body(event)
