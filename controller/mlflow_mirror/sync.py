"""`xlt mlflow sync`: drain the outbox, then reconcile MLflow with the registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller.mlflow_mirror.connection import fast_fail, is_unavailable, short_reason
from controller.mlflow_mirror.consumer import DrainReport, drain
from controller.mlflow_mirror.errors import MlflowUnavailable
from controller.mlflow_mirror.handlers import Mirror
from controller.mlflow_mirror.reconcile import ReconcileReport, reconcile
from registry.service import Registry


@dataclass
class SyncReport:
    tracking_uri: str
    drain: DrainReport
    reconcile: ReconcileReport | None

    def as_dict(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri, "drain": self.drain.as_dict(),
                "reconcile": self.reconcile.as_dict() if self.reconcile else None}


def sync(registry: Registry, tracking_uri: str | None = None, *, repair: bool = True,
         base_delay_s: float = 1.0) -> SyncReport:
    """Drain, reconcile, and drain again the repair events that reconcile recorded.
    Raises MlflowUnavailable when MLflow cannot be reached (the outbox keeps everything)."""
    mirror = Mirror.open(registry, tracking_uri)
    uri = mirror.target.tracking_uri
    first = drain(registry, mirror, base_delay_s=base_delay_s)
    if first.unavailable:
        raise _unavailable(uri, first.errors[-1]["reason"], first.backlog)
    try:
        with fast_fail():
            result = reconcile(mirror, repair=repair)
    except Exception as exc:
        if is_unavailable(exc):
            raise _unavailable(uri, short_reason(exc), registry.outbox_backlog()) from exc
        raise
    if result.events:
        again = drain(registry, mirror, base_delay_s=base_delay_s)
        first.delivered += again.delivered
        first.ignored += again.ignored
        first.replayed += again.replayed
        first.failed += again.failed
        first.errors += again.errors
        first.backlog = again.backlog
    return SyncReport(uri, first, result)


def _unavailable(uri: str, reason: str, backlog: dict[str, Any]) -> MlflowUnavailable:
    return MlflowUnavailable(
        f"MLflow at {uri} is unreachable ({reason}); {backlog.get('pending', 0)} outbox rows "
        "wait for it", "they are kept and retried with backoff; run `xlt mlflow sync` again "
        "when it is back")
