"""The drift reference of a champion trained for drifted traffic: the window of events of
the drift report its retrain answered. Stored like any reference (artifact + cache row),
versioned per track (1, 2, ... in build order), and named in every drift report (the
report's `reference` records its key, kind, version and window)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from controller.drift.reference import Reference, reference_from_events, reference_key
from controller.drift.store import drift_report_window, reference_count
from controller.traffic.log import read_window


def traffic_reference(ops: Any, task: str, language: str, base_fingerprint: str,
                      champion: int, report_id: int) -> Reference | None:
    """`ops`: controller.ops.live.LiveOperations (registry, models, policy, reference store).
    None when the window is gone or too small to be a reference (the caller then uses the
    dataset reference)."""
    window = ops.reg.query(drift_report_window, report_id)
    if window is None:
        return None
    _, _, start, end = window
    source = f"traffic/{task}/{language}/drift-report-{report_id}"
    key = reference_key(source, base_fingerprint, f"v{champion}")

    def build() -> Reference | None:
        # the report's end is its newest event's time; read_window's end is exclusive
        events = read_window(ops.reg, task, language, start=start,
                             end=end + timedelta(milliseconds=1),
                             limit=ops.policy.drift_window_events)
        minimum = ops.policy.drift_for(task, language).min_reference
        if len(events) < minimum or events["embedding"].isna().any():
            return None
        predictions = confidences = None
        if events["text"].notna().all():  # text kept: the new champion's own predictions
            predictions, confidences = ops.models.predict(task, language, champion,
                                                          events["text"].tolist())
        version = ops.reg.query(reference_count, task, language) + 1
        return reference_from_events(task, language, key, events, predictions=predictions,
                                     confidences=confidences, source=source, version=version)

    hit = ops.references.get(task, language, key)
    if hit is not None:
        return hit
    built = build()
    if built is not None:
        ops.references.put(built)
    return built
