"""The alert dispatcher, run by the leading controller every `alerts.interval_s`:

1. catch up: delivery rows for recent alert events that lack one for a receiver;
2. mirror stuck: one `alert` event when the oldest undelivered outbox row is older than
   `alerts.mirror_stuck_after_s` (one per stuck episode, keyed by that row's id);
3. deliver: claim due rows (a lease), POST each to its webhook with the event id as the
   `Idempotency-Key` header, mark delivered on a 2xx, else back off and retry later.

Nothing here holds a transaction while it talks to the network.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from controller.alerts.payloads import body, idempotency_key
from controller.policy import AlertsPolicy, WebhookPolicy
from registry.commands import alerts
from registry.schema import Event, OutboxMessage, utcnow
from registry.service import Registry

log = logging.getLogger("xlt.alerts")


@dataclass
class DispatchReport:
    added: int = 0
    delivered: int = 0
    failed: int = 0
    mirror_stuck: bool = False
    errors: list[str] = field(default_factory=list)


def post(hook: WebhookPolicy, event: dict[str, Any]) -> None:
    """One POST; raises on anything but a 2xx (urllib raises HTTPError for >= 400)."""
    data = json.dumps(body(event, hook.format)).encode()
    request = urllib.request.Request(hook.url, data=data, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "xlt-alerts",
        "Idempotency-Key": idempotency_key(event["id"]),
        "X-Xlt-Event-Id": str(event["id"]), **hook.headers})
    with urllib.request.urlopen(request, timeout=hook.timeout_s) as response:
        if not 200 <= response.status < 300:
            raise OSError(f"HTTP {response.status}")


def check_mirror_stuck(registry: Registry, policy: AlertsPolicy) -> bool:
    """Writes one alert per stuck episode; True when it wrote one now."""
    with registry.reading() as s:
        oldest = s.scalars(select(OutboxMessage).where(OutboxMessage.delivered_at.is_(None))
                           .order_by(OutboxMessage.id).limit(1)).first()
        if oldest is None:
            return False
        created = oldest.created_at.replace(tzinfo=utcnow().tzinfo)
        age = (utcnow() - created).total_seconds()
        if age < policy.mirror_stuck_after_s:
            return False
        oldest_id, pending = oldest.id, oldest.attempts
        seen = s.scalars(select(Event).where(Event.action == "alert", Event.task.is_(None),
                                             Event.id > oldest.event_id)).all()
        if any((e.after or {}).get("outbox_id") == oldest_id for e in seen):
            return False
    with registry.unit_of_work() as uow:
        uow.event("alert", reason=(
            f"mirror stuck: outbox row {oldest_id} undelivered for {age:.0f} s "
            f"(> {policy.mirror_stuck_after_s:g} s, {pending} attempts); is MLflow up? "
            "see `xlt mlflow sync`"),
            after={"kind": "mirror_stuck", "outbox_id": oldest_id, "age_s": round(age)})
    return True


def dispatch(registry: Registry, policy: AlertsPolicy, owner: str) -> DispatchReport:
    report = DispatchReport()
    hooks = {w.name: w for w in policy.webhooks}
    report.mirror_stuck = check_mirror_stuck(registry, policy)
    if not hooks:
        return report
    with registry.unit_of_work() as uow:
        report.added = alerts.catch_up(uow, list(hooks),
                                       utcnow() - timedelta(seconds=policy.catch_up_s))
    with registry.unit_of_work() as uow:
        claimed = alerts.claim(uow, owner, policy.lease_s, receivers=list(hooks))
    for item in claimed:
        hook = hooks[item["receiver"]]
        try:
            post(hook, item["event"])
        except (OSError, urllib.error.URLError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            with registry.unit_of_work() as uow:
                delay = alerts.mark_failed(uow, item["delivery_id"], owner, error,
                                           policy.retry_base_s)
            report.failed += 1
            report.errors.append(f"{hook.name}: {error}")
            log.warning("alert %s to %s failed (%s); retry in %s s", item["event"]["id"],
                        hook.name, error, delay)
            continue
        with registry.unit_of_work() as uow:
            alerts.mark_delivered(uow, item["delivery_id"], owner)
        report.delivered += 1
    return report
