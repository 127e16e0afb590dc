"""Serving a task from the registry: route each request (sticky canary, fallback chain), run
the served adapter, and log an inference event per request for drift and canary analysis.

Models are loaded from verified artifacts and checked against the base fingerprint (the
contract's check at load); each (language, version, base) is loaded once per process. Every
request runs on the base the router names for its adapter (the adapter's own): during a base
upgrade the champion serves on the old base and the canary on the new one, in one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from controller.encoders.text import TextEncoder
from controller.training.artifact import LoadedAdapter, load_adapter
from controller.training.evaluate import embed_texts
from controller.training.pipeline import load_base
from controller.training.split import frozen_prefix
from controller.training.state_cache import MemoryStateCache
from registry import queries
from registry.service import Registry


class ModelCache:
    """Bases by ref and adapters by (task, language, version, base), loaded once, and per
    base a memo of what the frozen base computes (its embeddings, and the states below the
    cut of adapters that leave the bottom blocks frozen): the champion, a canary and the
    drift embedding of one request all start from the same frozen blocks, and traffic and
    held-out items come back, so each text crosses those blocks once per process."""

    def __init__(self, registry: Registry, device: str = "cpu", memo: bool = True) -> None:
        self.registry = registry
        self.device = device
        self.use_memo = memo  # off: every adapter merged, every text through every block
        self._bases: dict[str, TextEncoder] = {}
        self._memos: dict[str, MemoryStateCache] = {}
        self._adapters: dict[tuple[str, str, int, str], tuple[LoadedAdapter, list[str]]] = {}
        self._rows: dict[tuple[str, str, int], dict[str, Any]] = {}

    def base(self, ref: str) -> TextEncoder:
        if ref not in self._bases:
            self._bases[ref] = load_base(self.registry, ref, self.device)[1]
        return self._bases[ref]

    def memo(self, ref: str) -> MemoryStateCache | None:
        return self._memos.setdefault(ref, MemoryStateCache()) if self.use_memo else None

    def embed(self, ref: str, texts: Sequence[str],
              model: torch.nn.Module | None = None) -> np.ndarray:
        """Pooled unit-norm embeddings of `texts` by base `ref`, or through an adapter's
        `model` loaded on it (see `adapter`)."""
        return embed_texts(self.base(ref), model, list(texts), self.memo(ref)).numpy()

    def _row(self, task: str, language: str, version: int) -> dict[str, Any]:
        key = (task, language, version)
        if key not in self._rows:  # adapter versions are immutable: cache their rows
            self._rows[key] = self.registry.query(queries.show_adapter, task, language, version)
        return self._rows[key]

    def adapter(self, task: str, language: str, version: int, base: str | None = None
                ) -> tuple[LoadedAdapter, list[str]]:
        """The adapter loaded on `base` (default: the base it was trained on); a base whose
        fingerprint differs from the adapter's is refused (IncompatibleAdapter)."""
        base = base or self._row(task, language, version)["base"]
        key = (task, language, version, base)
        if key not in self._adapters:
            _, path = self.registry.adapter_weights(task, language, version)
            encoder = self.base(base)
            loaded = load_adapter(path, encoder.model, encoder.tokenizer)  # fingerprint check
            # inference only. A full-depth adapter is folded into this private copy of the
            # base (plain matmuls instead of base + low-rank products on every layer); one
            # that leaves the bottom blocks frozen stays a peft model, so `embed` runs only
            # its top blocks, from the base's memoised states
            if not (self.use_memo and frozen_prefix(loaded.model)):
                loaded.model = loaded.model.merge_and_unload()
            loaded.model.eval()
            self._adapters[key] = (loaded, list(loaded.meta["config"]["labels"]))
        return self._adapters[key]

    def predict(self, task: str, language: str, version: int, texts: Sequence[str],
                base: str | None = None) -> tuple[list[str], np.ndarray]:
        """Labels and confidences of adapter `version` of (task, language) on `texts`,
        run on `base` (default: the adapter's own)."""
        labels, probs, _ = self.probabilities(task, language, version, texts, base)
        return labels, probs.max(1)

    def probabilities(self, task: str, language: str, version: int, texts: Sequence[str],
                      base: str | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Labels, every class's probability (n, classes) and the embeddings the head read
        (n, hidden) of adapter `version` on `texts`."""
        base = base or self._row(task, language, version)["base"]
        loaded, labels = self.adapter(task, language, version, base)
        emb = self.embed(base, texts, loaded.model)
        with torch.inference_mode():
            logits = loaded.head.logits(torch.as_tensor(emb, device=self.base(base).device),
                                        list(texts))
            probs = torch.softmax(logits, dim=-1).float().cpu().numpy()
        return [labels[i] for i in probs.argmax(1)], probs, emb
