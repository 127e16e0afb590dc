"""The registry's tables (SQLAlchemy 2.x ORM). Migrations in migrations/ mirror this exactly;
`xlt db check` (alembic check) proves it.

JSON columns use the generic JSON type, which is JSON on SQLite and json on PostgreSQL;
timestamps are stored timezone-aware in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class BaseEncoder(Base):
    __tablename__ = "base_encoders"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(100))
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    # what the fingerprint was computed from, kept so `encoder show` can explain a mismatch
    fingerprint_inputs: Mapped[dict[str, Any]] = mapped_column(JSON)
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class Task(Base):
    """What an adapter predicts: a name and its fixed, ordered label set (a head's output
    index i is labels[i]); fixed once a dataset or adapter refers to the task."""

    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    labels: Mapped[list[Any]] = mapped_column(JSON)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("name", "language", "split", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    language: Mapped[str] = mapped_column(String(35))
    split: Mapped[str] = mapped_column(String(50))
    version: Mapped[str] = mapped_column(String(100))
    sha256: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int] = mapped_column(Integer)
    uri: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text)
    licence: Mapped[str] = mapped_column(String(200))
    consent: Mapped[str] = mapped_column(Text)
    collected_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))
    # the task's data (registered by `xlt dataset register`): labelled, parallel or
    # unlabelled rows, stored normalised (gzip JSONL) in the artifact store; NULL on the
    # rows registered before tasks existed (migration 0007 names their task)
    task: Mapped[str | None] = mapped_column(String(100), index=True)
    kind: Mapped[str | None] = mapped_column(String(20))
    # source file sha256 and format, column mapping, pivot language, label counts
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.language}/{self.split}@{self.version}"


class Adapter(Base):
    __tablename__ = "adapters"
    __table_args__ = (UniqueConstraint("task", "language", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task: Mapped[str] = mapped_column(String(100))
    language: Mapped[str] = mapped_column(String(35))
    version: Mapped[int] = mapped_column(Integer)
    base_encoder_id: Mapped[int] = mapped_column(ForeignKey("base_encoders.id"))
    base_fingerprint: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(50))
    # rank, alpha, target modules, head shape, peft/transformers versions: the contract's rest
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    teacher_language: Mapped[str | None] = mapped_column(String(35))
    dataset_ids: Mapped[list[Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    hyperparams: Mapped[dict[str, Any]] = mapped_column(JSON)
    parent_adapter_id: Mapped[int | None] = mapped_column(ForeignKey("adapters.id"))
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))

    @property
    def ref(self) -> str:
        return f"{self.task}/{self.language}@v{self.version}"


class Track(Base):
    """The deployment of one (task, language). `revision` grows by one on every change."""

    __tablename__ = "tracks"
    __table_args__ = (UniqueConstraint("task", "language"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task: Mapped[str] = mapped_column(String(100))
    language: Mapped[str] = mapped_column(String(35))
    base_encoder_id: Mapped[int] = mapped_column(ForeignKey("base_encoders.id"))
    champion_id: Mapped[int | None] = mapped_column(ForeignKey("adapters.id"))
    canary_id: Mapped[int | None] = mapped_column(ForeignKey("adapters.id"))
    canary_weight: Mapped[float] = mapped_column(Float, default=0.0)
    previous_champion_id: Mapped[int | None] = mapped_column(ForeignKey("adapters.id"))
    revision: Mapped[int] = mapped_column(Integer, default=0)
    # the controller's phase for this track (STEADY, RETRAINING, GATING, CANARY, PAUSED) and
    # what it needs to resume after a crash (job id, canary step, cooldown-until)
    phase: Mapped[str] = mapped_column(String(20), default="STEADY")
    phase_data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # "not servable on <base>": the base ref (name@version) on which every attempt to train
    # this track failed its gates; routing serves the fallback while it equals the track's
    # base (a base upgrade lifts it by itself; registry.commands.servability clears it)
    unservable_on: Mapped[str | None] = mapped_column(String(301))


class Event(Base):
    """Append-only audit log; a trigger refuses UPDATE and DELETE on both backends."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_task_language_id", "task", "language", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(50))
    task: Mapped[str | None] = mapped_column(String(100))
    language: Mapped[str | None] = mapped_column(String(35))
    track_id: Mapped[int | None] = mapped_column(ForeignKey("tracks.id"))
    adapter_id: Mapped[int | None] = mapped_column(ForeignKey("adapters.id"))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    reason: Mapped[str | None] = mapped_column(Text)


class OutboxMessage(Base):
    """One row per event for the MLflow mirror; drained in id order per track, with retries."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_pending", "delivered_at", "id"),
                      Index("ix_outbox_key", "ordering_key", "id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id"))
    topic: Mapped[str] = mapped_column(String(50))
    ordering_key: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # a drain's lease on the row while it delivers it (registry.commands.outbox.claim)
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Job(Base):
    """A unit of long work (train, evaluate, drift check) and where and how it ran."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_kind", "status", "kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(50))
    task: Mapped[str | None] = mapped_column(String(100))
    language: Mapped[str | None] = mapped_column(String(35))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    executor: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    # where the running attempt runs (registry.jobs): a thread, a pid or a Ray task, so a
    # restarted controller polls it instead of launching another; and on which device
    handle: Mapped[str | None] = mapped_column(String(300))
    device: Mapped[str | None] = mapped_column(String(50))


class InferenceEvent(Base):
    """Production traffic: what was served and how confident it was. `text` may be withheld
    by policy; descriptors and the embedding are always kept for drift checks."""

    __tablename__ = "inference_events"
    __table_args__ = (Index("ix_inference_events_task_language_at", "task", "language", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task: Mapped[str] = mapped_column(String(100))
    language: Mapped[str] = mapped_column(String(35))
    adapter_version: Mapped[int | None] = mapped_column(Integer)
    routing_key: Mapped[str | None] = mapped_column(String(200))
    text: Mapped[str | None] = mapped_column(Text)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    descriptors: Mapped[dict[str, Any]] = mapped_column(JSON)
    prediction: Mapped[str] = mapped_column(String(100))
    confidence: Mapped[float] = mapped_column(Float)
    feedback_label: Mapped[str | None] = mapped_column(String(100))
    latency_ms: Mapped[float | None] = mapped_column(Float)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DriftReport(Base):
    __tablename__ = "drift_reports"
    __table_args__ = (Index("ix_drift_reports_task_language_id", "task", "language", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task: Mapped[str] = mapped_column(String(100))
    language: Mapped[str] = mapped_column(String(35))
    checked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    window_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    window_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reference: Mapped[dict[str, Any]] = mapped_column(JSON)
    signals: Mapped[dict[str, Any]] = mapped_column(JSON)
    verdict: Mapped[str] = mapped_column(String(20))
    report_paths: Mapped[dict[str, Any]] = mapped_column(JSON)


class GateResult(Base):
    __tablename__ = "gate_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"), index=True)
    evaluated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    gates: Mapped[list[Any]] = mapped_column(JSON)
    passed: Mapped[bool] = mapped_column()


class CanaryAnalysis(Base):
    __tablename__ = "canary_analyses"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    track_id: Mapped[int] = mapped_column(ForeignKey("tracks.id"), index=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"))
    step: Mapped[int] = mapped_column(Integer)
    weight: Mapped[float] = mapped_column(Float)
    analysed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    verdict: Mapped[str] = mapped_column(String(20))


class ReferenceCache(Base):
    """Reference statistics and embeddings per (task, language, dataset version), so a drift
    check does not recompute them. The blob is an artifact sha256 in the artifact store."""

    __tablename__ = "reference_cache"
    __table_args__ = (UniqueConstraint("task", "language", "reference_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task: Mapped[str] = mapped_column(String(100))
    language: Mapped[str] = mapped_column(String(35))
    reference_key: Mapped[str] = mapped_column(String(200))
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    stats: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AlertDelivery(Base):
    """One `alert` event's delivery to one webhook receiver: written in the same transaction
    as the event (or caught up from it), claimed by one dispatcher, marked after a 2xx."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (UniqueConstraint("event_id", "receiver"),
                      Index("ix_alert_deliveries_status_next", "status", "next_attempt_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id"))
    receiver: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending|delivered
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # a claim is a lease: a dispatcher that dies mid-send loses it when it expires
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

class BaseUpgrade(Base):
    """One track's move to another base encoder, requested by a person or the policy and
    carried through the loop by the controller. At most one is active per track (the
    command checks it under the track's lock); done/failed/rolled_back rows stay as history."""

    __tablename__ = "base_upgrades"
    __table_args__ = (Index("ix_base_upgrades_track_id_id", "track_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    track_id: Mapped[int] = mapped_column(ForeignKey("tracks.id"))
    from_encoder_id: Mapped[int] = mapped_column(ForeignKey("base_encoders.id"))
    to_encoder_id: Mapped[int] = mapped_column(ForeignKey("base_encoders.id"))
    # pending, training, gating, canary, done, failed, rolled_back (registry.upgrades)
    status: Mapped[str] = mapped_column(String(20))
    candidate_id: Mapped[int | None] = mapped_column(ForeignKey("adapters.id"))
    reason: Mapped[str | None] = mapped_column(Text)
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    requested_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
