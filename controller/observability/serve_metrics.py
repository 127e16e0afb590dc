"""Counters of `xlt serve` itself (per process), exposed by its `/metrics` route (admin
scope): what the traffic writer could not keep, and what the batcher turned away."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

SERVE_REGISTRY = CollectorRegistry()
TRAFFIC_DROPPED = Counter(
    "xlt_serve_traffic_dropped", "Predictions served but not written to the traffic log "
    "(the writer's queue was full or the database refused them)", ["reason"],
    registry=SERVE_REGISTRY)
TRAFFIC_WRITTEN = Counter("xlt_serve_traffic_written", "Predictions written to the "
                          "traffic log", registry=SERVE_REGISTRY)
REQUESTS_REFUSED = Counter("xlt_serve_requests_refused", "Requests answered 503 because "
                           "the batch queue was full", registry=SERVE_REGISTRY)
