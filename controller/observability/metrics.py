"""The controller's Prometheus metrics (prometheus_client), all prefixed `xlt_`.

A custom collector turns the latest registry snapshot (state.read_snapshot) into metric
families at scrape time, so a scrape always sees one consistent picture, and a track that
disappears disappears from the output too. The snapshot is refreshed after every tick
(`ControllerMetrics.after_tick`) and, when older than `max_age_s`, on a scrape (so a
process without ticks, such as `xlt serve`, still reports current state).

Labels are only task, language, phase, signal, gate, verdict, kind, state and receiver:
with 1,000 tracks the largest family (xlt_track_phase) has 5,000 series. Versions are
values, never labels; event and job ids never appear.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from controller.observability.state import (
    DURATION_BUCKETS,
    PHASES,
    EventCounters,
    Snapshot,
    read_snapshot,
)
from registry.service import Registry

TL = ["task", "language"]


class RegistryCollector(Collector):
    def __init__(self, registry: Registry, max_age_s: float = 5.0) -> None:
        self.registry = registry
        self.max_age_s = max_age_s
        self.snapshot: Snapshot | None = None
        self.counters = EventCounters()
        self.read_at = 0.0
        self.errors = 0
        self._lock = threading.Lock()

    def refresh(self) -> None:
        with self._lock:
            snapshot = read_snapshot(self.registry)
            self.counters.fold(self.registry)
            self.snapshot, self.read_at = snapshot, time.monotonic()

    def collect(self) -> Iterator[Metric]:
        if self.snapshot is None or time.monotonic() - self.read_at > self.max_age_s:
            try:
                self.refresh()
            except Exception:  # a database hiccup must not break the scrape; count it
                self.errors += 1
        up = GaugeMetricFamily("xlt_registry_up",
                               "1 when the last registry read for the metrics succeeded")
        up.add_metric([], 1.0 if self.snapshot is not None else 0.0)
        yield up
        errors = CounterMetricFamily("xlt_registry_read_errors",
                                     "Failed registry reads for the metrics")
        errors.add_metric([], float(self.errors))
        yield errors
        if self.snapshot is not None:
            yield from track_families(self.snapshot)
            yield from drift_families(self.snapshot)
            yield from job_families(self.snapshot)
            yield from backlog_families(self.snapshot)
            yield from counter_families(self.counters)


def track_families(snap: Snapshot) -> Iterator[Metric]:
    phase = GaugeMetricFamily("xlt_track_phase", "1 for the phase the track is in, else 0",
                              labels=[*TL, "phase"])
    champion = GaugeMetricFamily("xlt_track_champion_version",
                                 "Version of the champion adapter (0: none)", labels=TL)
    canary = GaugeMetricFamily("xlt_track_canary_version",
                               "Version of the canary adapter (0: no canary)", labels=TL)
    weight = GaugeMetricFamily("xlt_track_canary_weight_percent",
                               "Share of traffic routed to the canary, percent", labels=TL)
    step = GaugeMetricFamily("xlt_track_canary_step",
                             "Canary step in progress, 1-based (0: no canary)", labels=TL)
    accuracy = GaugeMetricFamily("xlt_track_champion_accuracy",
                                 "Held-out accuracy of the champion adapter", labels=TL)
    for t in snap.tracks:
        key = [t.task, t.language]
        for p in PHASES:
            phase.add_metric([*key, p], 1.0 if t.phase == p else 0.0)
        champion.add_metric(key, float(t.champion or 0))
        canary.add_metric(key, float(t.canary or 0))
        weight.add_metric(key, t.canary_weight if t.canary else 0.0)
        step.add_metric(key, float(t.canary_step or 0))
        if t.champion_accuracy is not None:
            accuracy.add_metric(key, t.champion_accuracy)
    yield from (phase, champion, canary, weight, step, accuracy)


def drift_families(snap: Snapshot) -> Iterator[Metric]:
    labels = [*TL, "signal"]
    score = GaugeMetricFamily("xlt_drift_score", "Latest drift score per signal", labels=labels)
    threshold = GaugeMetricFamily("xlt_drift_threshold",
                                  "Threshold the drift score is compared with", labels=labels)
    drifted = GaugeMetricFamily("xlt_drift_signal_drifted",
                                "1 when the signal crossed its threshold in the latest check",
                                labels=labels)
    checked = GaugeMetricFamily("xlt_drift_last_check_timestamp_seconds",
                                "When the latest drift check of the track ran", labels=TL)
    for (task, language), signals in sorted(snap.drift.items()):
        for name, (value, limit, over) in sorted(signals.items()):
            key = [task, language, name]
            score.add_metric(key, float("nan") if value is None else float(value))
            threshold.add_metric(key, limit)
            drifted.add_metric(key, 1.0 if over else 0.0)
        checked.add_metric([task, language], snap.drift_checked_at[(task, language)])
    yield from (score, threshold, drifted, checked)


def job_families(snap: Snapshot) -> Iterator[Metric]:
    jobs = GaugeMetricFamily("xlt_training_jobs", "Training jobs by state",
                             labels=["task", "state"])
    for (task, status), n in sorted(snap.jobs.items()):
        jobs.add_metric([task, status], float(n))
    yield jobs
    hist = HistogramMetricFamily("xlt_training_job_duration_seconds",
                                 "Wall time of finished training jobs", labels=["task"])
    for task, (buckets, total, _count) in sorted(snap.durations.items()):
        bounds = ["+Inf" if b == float("inf") else f"{b:g}" for b in DURATION_BUCKETS]
        hist.add_metric([task], list(zip(bounds, [float(b) for b in buckets], strict=True)),
                        total)
    yield hist


def backlog_families(snap: Snapshot) -> Iterator[Metric]:
    pending = GaugeMetricFamily("xlt_outbox_pending", "Outbox rows not yet mirrored to MLflow")
    pending.add_metric([], float(snap.outbox_pending))
    oldest = GaugeMetricFamily("xlt_outbox_oldest_age_seconds",
                               "Age of the oldest undelivered outbox row (0: none)")
    oldest.add_metric([], snap.outbox_oldest_age_s)
    alerts = GaugeMetricFamily("xlt_alert_deliveries_pending",
                               "Alert webhook deliveries not yet acknowledged",
                               labels=["receiver"])
    alert_age = GaugeMetricFamily("xlt_alert_delivery_oldest_age_seconds",
                                  "Age of the oldest unacknowledged alert delivery",
                                  labels=["receiver"])
    for receiver, (n, age) in sorted(snap.alerts_pending.items()):
        alerts.add_metric([receiver], float(n))
        alert_age.add_metric([receiver], age)
    yield from (pending, oldest, alerts, alert_age)


def counter_families(c: EventCounters) -> Iterator[Metric]:
    def family(name: str, doc: str, labels: list[str], counts: Any) -> Metric:
        out = CounterMetricFamily(name, doc, labels=labels)
        for key, n in sorted(counts.items()):
            out.add_metric(list(key), float(n))
        return out

    yield family("xlt_gate_reports", "Gate reports of candidates by outcome",
                 [*TL, "outcome"], c.gates)
    yield family("xlt_gate_failures", "Individual gates failed", ["task", "gate"],
                 c.gate_failures)
    yield family("xlt_canary_analyses", "Canary analyses by verdict", [*TL, "verdict"],
                 c.canary)
    yield family("xlt_rollbacks", "Rollbacks of a champion", TL, c.rollbacks)
    yield family("xlt_promotions", "Promotions of a candidate to champion", TL, c.promotions)
    yield family("xlt_alerts", "Alert events by kind", [*TL, "kind"], c.alerts)


class ControllerMetrics:
    """Everything one controller process exposes; its own CollectorRegistry, so tests and
    two controllers in one process never collide in prometheus_client's global one."""

    def __init__(self, registry: Registry, max_age_s: float = 5.0) -> None:
        self.prometheus = CollectorRegistry(auto_describe=False)
        self.collector = RegistryCollector(registry, max_age_s)
        self.prometheus.register(self.collector)
        self.leader = Gauge("xlt_controller_leader",
                            "1 while this controller replica holds the leader lock",
                            registry=self.prometheus)
        self.tick_duration = Histogram(
            "xlt_controller_tick_duration_seconds", "Wall time of one reconcile tick",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=self.prometheus)
        self.last_tick = Gauge("xlt_controller_last_tick_timestamp_seconds",
                               "When the last reconcile tick finished",
                               registry=self.prometheus)

    def after_tick(self, seconds: float | None, leader: bool) -> None:
        """The scheduler's per-tick hook: leader status, tick time, fresh registry state."""
        self.leader.set(1.0 if leader else 0.0)
        if seconds is not None:
            self.tick_duration.observe(seconds)
            self.last_tick.set_to_current_time()
        try:
            self.collector.refresh()
        except Exception:
            self.collector.errors += 1
