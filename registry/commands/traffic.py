"""Traffic written by a live server: predictions logged with their ids (so clients can send
feedback for them later), and feedback labels attached to earlier predictions.

Traffic is data, not a state change of a track: no audit event or outbox row per row."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select, update

from registry.commands.records import INFERENCE_FIELDS, check_traffic_names
from registry.errors import InvalidInput, NotFound
from registry.names import task_name
from registry.schema import InferenceEvent, utcnow
from registry.uow import UnitOfWork

MAX_LABEL = 100  # inference_events.feedback_label is VARCHAR(100)


def log_predictions(uow: UnitOfWork, rows: list[dict[str, Any]]) -> list[int]:
    """Insert traffic rows (validated like log_inference_events) and return their ids, in
    input order: the prediction ids a server hands back for feedback."""
    if not rows:
        return []
    clean = []
    for r in rows:
        unknown = set(r) - INFERENCE_FIELDS
        if unknown:
            raise InvalidInput(f"unknown inference event fields {sorted(unknown)}",
                               f"allowed: {sorted(INFERENCE_FIELDS)}")
        clean.append({"at": utcnow(), "descriptors": {}, **r})
    check_traffic_names(clean)
    ids = uow.session.scalars(insert(InferenceEvent).returning(InferenceEvent.id,
                                                                 sort_by_parameter_order=True),
                              clean).all()
    return [int(i) for i in ids]


def record_feedback(uow: UnitOfWork, task: str, labels: dict[int, str]) -> int:
    """Set the feedback label of earlier predictions of `task`; all or nothing: an unknown
    id, or one of another task, refuses the whole batch."""
    task_name(task)
    if not labels:
        return 0
    for pid, label in labels.items():
        if not isinstance(label, str) or not label.strip() or len(label) > MAX_LABEL:
            raise InvalidInput(f"feedback label for prediction {pid} must be 1-{MAX_LABEL} "
                               "characters", "send the true label's name")
    found = set(uow.session.scalars(select(InferenceEvent.id).where(
        InferenceEvent.id.in_(list(labels)), InferenceEvent.task == task)))
    missing = sorted(set(labels) - found)
    if missing:
        raise NotFound(f"no prediction of task {task} with id {missing[:5]}",
                       "send the prediction_id returned by /v1/predict")
    for pid, label in labels.items():
        uow.session.execute(update(InferenceEvent).where(InferenceEvent.id == pid)
                            .values(feedback_label=label))
    return len(labels)
