"""Read-only views of the registry that the mirror needs. Each takes a Session so it runs
inside `Registry.query(...)` (one read transaction); nothing here writes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry.schema import (
    Adapter,
    BaseEncoder,
    CanaryAnalysis,
    Dataset,
    Event,
    GateResult,
    OutboxMessage,
    Track,
)

# what the version page tells about an adapter's life, in the order it happened
HISTORY_ACTIONS = ("register_adapter", "gated", "reject", "canary_start", "canary_weight",
                   "canary_abort", "promote", "rollback", "retire")


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _adapter_view(s: Session, a: Adapter, bases: dict[int, BaseEncoder]) -> dict[str, Any]:
    base = bases.get(a.base_encoder_id) or s.get(BaseEncoder, a.base_encoder_id)
    datasets = [d.ref for d in s.scalars(select(Dataset).where(
        Dataset.id.in_(list(a.dataset_ids or []))).order_by(Dataset.id))] if a.dataset_ids else []
    parent = s.get(Adapter, a.parent_adapter_id) if a.parent_adapter_id else None
    return {"id": a.id, "task": a.task, "language": a.language, "version": a.version,
            "status": a.status, "base": base.ref if base else None,
            "base_fingerprint": a.base_fingerprint, "kind": a.kind, "config": a.config,
            "teacher_language": a.teacher_language, "datasets": datasets,
            "metrics": a.metrics or {}, "hyperparams": a.hyperparams or {},
            "parent_version": parent.version if parent else None,
            "artifact_sha256": a.artifact_sha256, "created_at": _iso(a.created_at),
            "created_by": a.created_by, **_adapter_history(s, a.id)}


def _adapter_history(s: Session, adapter_id: int) -> dict[str, Any]:
    """Status changes with their reasons, the newest gate report, every canary step."""
    events = [{"at": _iso(e.at), "actor": e.actor, "action": e.action, "reason": e.reason}
              for e in s.scalars(select(Event).where(Event.adapter_id == adapter_id)
                                 .order_by(Event.id))
              if e.action in HISTORY_ACTIONS or (e.after or {}).get("status")]
    gate = s.scalars(select(GateResult).where(GateResult.adapter_id == adapter_id)
                     .order_by(GateResult.id.desc())).first()
    steps = [{"step": c.step, "weight": c.weight, "at": _iso(c.analysed_at),
              "verdict": c.verdict, "metrics": c.metrics}
             for c in s.scalars(select(CanaryAnalysis).where(
                 CanaryAnalysis.adapter_id == adapter_id).order_by(CanaryAnalysis.id))]
    return {"history": events, "canary_steps": steps,
            "gates": None if gate is None else {"at": _iso(gate.evaluated_at),
                                                "passed": gate.passed, "gates": gate.gates}}


def adapter_view(s: Session, adapter_id: int) -> dict[str, Any] | None:
    a = s.get(Adapter, adapter_id)
    return _adapter_view(s, a, {}) if a is not None else None


def lineage(s: Session, task: str, language: str) -> list[dict[str, Any]]:
    """Every adapter version of one track, oldest first."""
    bases = {e.id: e for e in s.scalars(select(BaseEncoder))}
    rows = s.scalars(select(Adapter).where(Adapter.task == task, Adapter.language == language)
                     .order_by(Adapter.version))
    return [_adapter_view(s, a, bases) for a in rows]


def encoder_view(s: Session, encoder_id: int) -> dict[str, Any] | None:
    e = s.get(BaseEncoder, encoder_id)
    return _encoder_view(e) if e is not None else None


def _encoder_view(e: BaseEncoder) -> dict[str, Any]:
    return {"id": e.id, "name": e.name, "version": e.version, "ref": e.ref,
            "fingerprint": e.fingerprint, "fingerprint_inputs": e.fingerprint_inputs,
            "artifact_sha256": e.artifact_sha256, "source": e.source,
            "created_at": _iso(e.created_at), "created_by": e.created_by}


def encoder_by_ref(s: Session, ref: str) -> dict[str, Any] | None:
    name, _, version = ref.partition("@")
    e = s.scalars(select(BaseEncoder).where(BaseEncoder.name == name,
                                            BaseEncoder.version == version)).first()
    return _encoder_view(e) if e is not None else None


def encoders(s: Session) -> list[dict[str, Any]]:
    return [_encoder_view(e) for e in s.scalars(select(BaseEncoder).order_by(BaseEncoder.id))]


def tracks(s: Session) -> list[dict[str, Any]]:
    """Every track with the adapter ids behind its aliases and its newest event id."""
    bases = {e.id: e.ref for e in s.scalars(select(BaseEncoder))}
    last = dict(s.execute(select(Event.track_id, func.max(Event.id))
                          .where(Event.track_id.is_not(None)).group_by(Event.track_id)).all())
    return [{"task": t.task, "language": t.language, "base": bases.get(t.base_encoder_id),
             "champion_id": t.champion_id, "canary_id": t.canary_id,
             "previous_champion_id": t.previous_champion_id, "canary_weight": t.canary_weight,
             "phase": t.phase, "revision": t.revision, "last_event_id": last.get(t.id)}
            for t in s.scalars(select(Track).order_by(Track.task, Track.language))]


def pending_keys(s: Session) -> set[str]:
    """Ordering keys that still have undelivered outbox rows."""
    return set(s.scalars(select(OutboxMessage.ordering_key).distinct()
                         .where(OutboxMessage.delivered_at.is_(None))))
