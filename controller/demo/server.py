"""Serving a task in-process for the demo and the tests: route each request (sticky canary,
fallback chain), run the served adapter, and log an inference event per request for drift
and canary analysis. `xlt serve` (controller.serve) is the HTTP server for production."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np

from controller.ops.model_cache import ModelCache
from controller.traffic.log import log_events
from registry.routing import CachedResolver
from registry.service import Registry


class Server:
    """Routes and serves requests for one task, and logs what it served."""

    def __init__(self, registry: Registry, task: str, device: str = "cpu",
                 models: ModelCache | None = None) -> None:
        self.registry = registry
        self.task = task
        self.models = models or ModelCache(registry, device)
        # revalidated once per serve() call (one batch), never on a timer: the demo's clock
        # is not real, and a per-request check would be one query per request
        self.resolver = CachedResolver(registry.db, ttl=float("inf"))

    def serve(self, language: str, texts: Sequence[str], routing_keys: Sequence[str], *,
              at: Sequence[datetime] | None = None,
              feedback: Sequence[str | None] | None = None,
              keep_text: bool = True) -> list[dict[str, Any]]:
        """Serve each text; returns the logged events (one per text, in input order)."""
        started = time.perf_counter()
        groups: dict[tuple[str | None, int | None, str | None], list[int]] = defaultdict(list)
        track_base = None
        self.resolver.revalidate()
        for i, key in enumerate(routing_keys):
            r = self.resolver.resolve(self.task, language, key)
            groups[(r.served_language, r.version, r.base)].append(i)
            track_base = r.track_base or r.base
        if track_base is None:
            raise ValueError(f"no base encoder serves {self.task}/{language}")
        # drift compares with a reference embedded by the track's base: embed with it too
        embeddings = self.models.embed(track_base, texts)
        predictions: list[str] = [""] * len(texts)
        confidence = np.zeros(len(texts))
        for (served, version, base), idx in groups.items():
            if version is None or served is None:
                raise ValueError(f"{self.task}/{language} has no champion to serve")
            labels, conf = self.models.predict(self.task, served, version,
                                               [texts[i] for i in idx], base=base)
            for j, i in enumerate(idx):
                predictions[i], confidence[i] = labels[j], conf[j]
        latency = (time.perf_counter() - started) * 1000 / max(1, len(texts))
        versions = {i: v for (_, v, _), idx in groups.items() for i in idx}
        events = [{
            "task": self.task, "language": language, "adapter_version": versions[i],
            "routing_key": routing_keys[i], "text": texts[i], "embedding": embeddings[i],
            "prediction": predictions[i], "confidence": float(confidence[i]),
            "feedback_label": feedback[i] if feedback is not None else None,
            "latency_ms": round(latency, 3), **({"at": at[i]} if at is not None else {}),
        } for i in range(len(texts))]
        log_events(self.registry, events, keep_text=keep_text)
        return events
