"""One read of the registry for the metrics: per track state, the latest drift report per
track, training jobs, outbox and alert backlogs, and counters folded from new events.

Reads grow with the number of tracks (one row each), not with history: drift reports are
read by their newest id per track, events by a cursor (only rows since the last read)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from controller.loop.phase_status import PhaseStatus
from controller.loop.state import Phase
from registry.commands import alerts
from registry.schema import Adapter, DriftReport, Event, Job, OutboxMessage, Track, utcnow
from registry.service import Registry

PHASES = tuple(Phase)
# training duration buckets (seconds): tiny test models take seconds, real ones minutes
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0,
                    float("inf"))
COUNTED_ACTIONS = ("gate", "canary_analysis", "rollback", "promote", "alert")


@dataclass
class TrackRow:
    task: str
    language: str
    phase: str
    champion: int | None
    canary: int | None
    canary_weight: float
    canary_step: int | None
    champion_accuracy: float | None


@dataclass
class Snapshot:
    tracks: list[TrackRow] = field(default_factory=list)
    # (task, language) -> {signal: (score or None, threshold, drifted)}
    drift: dict[tuple[str, str], dict[str, tuple[float | None, float, bool]]] = \
        field(default_factory=dict)
    drift_checked_at: dict[tuple[str, str], float] = field(default_factory=dict)
    jobs: Counter[tuple[str, str]] = field(default_factory=Counter)  # (task, status) -> n
    durations: dict[str, tuple[list[int], float, int]] = field(default_factory=dict)
    outbox_pending: int = 0
    outbox_oldest_age_s: float = 0.0
    alerts_pending: dict[str, tuple[int, float]] = field(default_factory=dict)


@dataclass
class EventCounters:
    """Monotonic counts folded from the audit log (append-only, so a count never drops);
    a restarted process re-reads from the start and reaches the same totals."""

    cursor: int = 0
    gates: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    gate_failures: Counter[tuple[str, str]] = field(default_factory=Counter)
    canary: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    rollbacks: Counter[tuple[str, str]] = field(default_factory=Counter)
    promotions: Counter[tuple[str, str]] = field(default_factory=Counter)
    alerts: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def fold(self, registry: Registry, batch: int = 5000) -> None:
        while True:
            with registry.reading() as s:
                rows = s.execute(select(Event.id, Event.action, Event.task, Event.language,
                                        Event.after)
                                 .where(Event.id > self.cursor,
                                        Event.action.in_(COUNTED_ACTIONS))
                                 .order_by(Event.id).limit(batch)).all()
            for event_id, action, task, language, after in rows:
                self._count(action, task or "", language or "", after or {})
                self.cursor = event_id
            if len(rows) < batch:
                return

    def _count(self, action: str, task: str, language: str, after: dict[str, Any]) -> None:
        if action == "gate":
            self.gates[(task, language, "passed" if after.get("passed") else "failed")] += 1
            for gate in after.get("gates") or []:
                if not gate.get("passed"):
                    self.gate_failures[(task, str(gate.get("name")))] += 1
        elif action == "canary_analysis":
            self.canary[(task, language, str(after.get("verdict")))] += 1
        elif action == "rollback":
            self.rollbacks[(task, language)] += 1
        elif action == "promote":
            self.promotions[(task, language)] += 1
        elif action == "alert":
            self.alerts[(task, language, str(after.get("kind") or "alert"))] += 1


def read_snapshot(registry: Registry) -> Snapshot:
    snap = Snapshot()
    now = utcnow()
    with registry.reading() as s:
        adapters = {a.id: (a.version, a.metrics) for a in s.execute(
            select(Adapter.id, Adapter.version, Adapter.metrics)
            .where(Adapter.status.in_(("champion", "canary"))))}
        for t in s.scalars(select(Track).order_by(Track.task, Track.language)):
            champ = adapters.get(t.champion_id) if t.champion_id else None
            canary = adapters.get(t.canary_id) if t.canary_id else None
            accuracy = (champ[1] or {}).get("accuracy") if champ else None
            step = (PhaseStatus.from_dict(t.phase_data, strict=False).step
                    if t.phase in (Phase.CANARY, Phase.PAUSED) else None)
            snap.tracks.append(TrackRow(
                t.task, t.language, t.phase, champ[0] if champ else None,
                canary[0] if canary else None, float(t.canary_weight or 0.0),
                int(step) + 1 if step is not None else None,
                float(accuracy) if isinstance(accuracy, int | float) else None))
        newest = (select(func.max(DriftReport.id))
                  .group_by(DriftReport.task, DriftReport.language).scalar_subquery())
        for r in s.scalars(select(DriftReport).where(DriftReport.id.in_(newest))):
            key = (r.task, r.language)
            snap.drift[key] = {
                name: (sig.get("score"), float(sig.get("threshold", 0.0)),
                       bool(sig.get("drifted")))
                for name, sig in (r.signals or {}).items() if isinstance(sig, dict)}
            snap.drift_checked_at[key] = r.checked_at.replace(tzinfo=now.tzinfo).timestamp()
        for task, status, n in s.execute(select(Job.task, Job.status, func.count())
                                         .where(Job.kind == "train")
                                         .group_by(Job.task, Job.status)):
            snap.jobs[(task or "", status)] = int(n)
        for task, started, finished in s.execute(
                select(Job.task, Job.started_at, Job.finished_at)
                .where(Job.kind == "train", Job.finished_at.is_not(None),
                       Job.started_at.is_not(None))):
            seconds = max(0.0, (finished - started).total_seconds())
            buckets, total, count = snap.durations.get(task or "", ([0] * len(
                DURATION_BUCKETS), 0.0, 0))
            for i, bound in enumerate(DURATION_BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1
            snap.durations[task or ""] = (buckets, total + seconds, count + 1)
        pending, oldest = s.execute(select(func.count(), func.min(OutboxMessage.created_at))
                                    .where(OutboxMessage.delivered_at.is_(None))).one()
        snap.outbox_pending = int(pending)
        if oldest is not None:
            snap.outbox_oldest_age_s = (now - oldest.replace(tzinfo=now.tzinfo)).total_seconds()
        for receiver, row in alerts.backlog(s).items():
            age = (now - row["oldest"].replace(tzinfo=now.tzinfo)).total_seconds()
            snap.alerts_pending[receiver] = (row["pending"], age)
    return snap
