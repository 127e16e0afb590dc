"""Serving a task from the registry: route each request (sticky canary, fallback chain), run
the served adapter, and log an inference event per request for drift and canary analysis.

Models are loaded from verified artifacts and checked against the base fingerprint (the
contract's check at load); each (language, version) is loaded once per process.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import torch

from controller.encoder import TextEncoder
from controller.training.artifact import LoadedAdapter, load_adapter
from controller.training.pipeline import load_base
from registry import queries
from registry.routing import CachedResolver
from registry.service import Registry


class ModelCache:
    """Bases by ref and adapters by (task, language, version), loaded once."""

    def __init__(self, registry: Registry, device: str = "cpu") -> None:
        self.registry = registry
        self.device = device
        self._bases: dict[str, TextEncoder] = {}
        self._adapters: dict[tuple[str, str, int], tuple[LoadedAdapter, list[str]]] = {}

    def base(self, ref: str) -> TextEncoder:
        if ref not in self._bases:
            self._bases[ref] = load_base(self.registry, ref, self.device)[1]
        return self._bases[ref]

    def adapter(self, task: str, language: str, version: int) -> tuple[LoadedAdapter, list[str]]:
        key = (task, language, version)
        if key not in self._adapters:
            row = self.registry.query(queries.show_adapter, task, language, version)
            _, path = self.registry.adapter_weights(task, language, version)
            encoder = self.base(row["base"])
            loaded = load_adapter(path, encoder.model, encoder.tokenizer)  # fingerprint check
            # inference only: fold LoRA into this private copy of the base, so serving runs
            # plain BERT matmuls instead of base + low-rank products on every linear layer
            loaded.model = loaded.model.merge_and_unload().eval()
            self._adapters[key] = (loaded, list(loaded.meta["config"]["labels"]))
        return self._adapters[key]

    def predict(self, task: str, language: str, version: int, texts: Sequence[str]
                ) -> tuple[list[str], np.ndarray]:
        """Labels and confidences of adapter `version` of (task, language) on `texts`."""
        loaded, labels = self.adapter(task, language, version)
        row = self.registry.query(queries.show_adapter, task, language, version)
        encoder = self.base(row["base"])
        emb = encoder.embed(list(texts), model=loaded.model)
        with torch.inference_mode():
            logits = loaded.head(torch.as_tensor(emb, device=encoder.device))
            probs = torch.softmax(logits, dim=-1).float().cpu().numpy()
        return [labels[i] for i in probs.argmax(1)], probs.max(1)


class Server:
    """Routes and serves requests for one task, and logs what it served."""

    def __init__(self, registry: Registry, task: str, device: str = "cpu",
                 models: ModelCache | None = None) -> None:
        self.registry = registry
        self.task = task
        self.models = models or ModelCache(registry, device)
        self.resolver = CachedResolver(registry.db, ttl=0.0)  # the demo's clock is not real

    def serve(self, language: str, texts: Sequence[str], routing_keys: Sequence[str], *,
              at: Sequence[datetime] | None = None,
              feedback: Sequence[str | None] | None = None,
              keep_text: bool = True) -> list[dict[str, Any]]:
        """Serve each text; returns the logged events (one per text, in input order)."""
        started = time.perf_counter()
        groups: dict[tuple[str | None, int | None], list[int]] = defaultdict(list)
        base_ref = None
        for i, key in enumerate(routing_keys):
            r = self.resolver.resolve(self.task, language, key)
            groups[(r.served_language, r.version)].append(i)
            base_ref = r.base
        if base_ref is None:
            raise ValueError(f"no base encoder serves {self.task}/{language}")
        embeddings = self.models.base(base_ref).embed(list(texts))  # drift looks at these
        predictions: list[str] = [""] * len(texts)
        confidence = np.zeros(len(texts))
        for (served, version), idx in groups.items():
            if version is None or served is None:
                raise ValueError(f"{self.task}/{language} has no champion to serve")
            labels, conf = self.models.predict(self.task, served, version,
                                               [texts[i] for i in idx])
            for j, i in enumerate(idx):
                predictions[i], confidence[i] = labels[j], conf[j]
        latency = (time.perf_counter() - started) * 1000 / max(1, len(texts))
        versions = {i: v for (_, v), idx in groups.items() for i in idx}
        events = [{
            "task": self.task, "language": language, "adapter_version": versions[i],
            "routing_key": routing_keys[i], "text": texts[i], "embedding": embeddings[i],
            "prediction": predictions[i], "confidence": float(confidence[i]),
            "feedback_label": feedback[i] if feedback is not None else None,
            "latency_ms": round(latency, 3), **({"at": at[i]} if at is not None else {}),
        } for i in range(len(texts))]
        from controller.drift.store import log_events

        log_events(self.registry, events, keep_text=keep_text)
        return events
