"""How a server runs its adapters. `batched` is the product; `merged` and `peft` are the
baselines the benchmark measures it against, behind the same HTTP path:

- batched: each base once, every adapter in a slot, one forward pass per batch whatever
  the mix of adapters (controller.serve.lora);
- merged: one merged copy of the base per adapter (LoRA folded in), one pass per adapter
  present in the batch: fast per pass, a full model's memory per language;
- peft: one PeftModel per base holding every adapter by name, `set_adapter` and one pass
  per adapter present in the batch.

Every backend holds a base once per ref and checks each adapter's fingerprint against the
base it is loaded on (the contract's check at load).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from controller.encoders.text import TextEncoder
from controller.serve.lora import MultiAdapterBase

Key = tuple[str, str, int]  # task, language, version
Output = tuple[list[str], np.ndarray, list[tuple[str, ...]], np.ndarray | None]
BaseLoader = Callable[[str], TextEncoder]


class BatchedBackend:
    name = "batched"
    concurrent = True  # each model thread's batch is its own (MultiAdapterBase.state)

    def __init__(self, load_base: BaseLoader) -> None:
        self._load_base = load_base
        self.bases: dict[str, MultiAdapterBase] = {}
        self.bucket_rows = 32  # rows per forward pass ([serve] bucket_rows)

    def base(self, ref: str) -> MultiAdapterBase:
        if ref not in self.bases:
            self.bases[ref] = MultiAdapterBase(ref, self._load_base(ref),
                                               bucket_rows=self.bucket_rows)
        return self.bases[ref]

    def load(self, key: Key, base_ref: str, path: Path) -> None:
        self.base(base_ref).load(key, path)

    def labels(self, key: Key, base_ref: str) -> tuple[str, ...]:
        return self.base(base_ref).adapters[key].labels

    def classify(self, base_ref: str, texts: Sequence[str], keys: Sequence[Key],
                 with_base: bool) -> Output:
        return self.base(base_ref).classify(texts, keys, with_base)


class _PerAdapterBackend(ABC):
    """Shared by the two baselines: one pass per adapter present in the batch."""

    name = "per-adapter"
    concurrent = False  # peft's set_adapter is one setting for the whole model

    def __init__(self, load_base: BaseLoader) -> None:
        self._load_base = load_base
        self.encoders: dict[str, TextEncoder] = {}
        self.heads: dict[Key, tuple[Any, tuple[str, ...]]] = {}

    def encoder(self, ref: str) -> TextEncoder:
        if ref not in self.encoders:
            self.encoders[ref] = self._load_base(ref)
        return self.encoders[ref]

    def labels(self, key: Key, base_ref: str) -> tuple[str, ...]:
        return self.heads[key][1]

    @abstractmethod
    def _embed(self, base_ref: str, key: Key, texts: list[str]) -> torch.Tensor:
        """Embeddings of `texts` through the adapter `key` (each baseline its own way)."""

    @torch.inference_mode()
    def classify(self, base_ref: str, texts: Sequence[str], keys: Sequence[Key],
                 with_base: bool) -> Output:
        encoder = self.encoder(base_ref)
        texts = list(texts)
        groups: dict[Key, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        width = max(self.heads[k][0].shape[1] for k in groups)
        probs = np.zeros((len(texts), width), dtype=np.float32)
        for key, rows in groups.items():
            emb = self._embed(base_ref, key, [texts[i] for i in rows])
            logits = self.heads[key][0].logits(emb, [texts[i] for i in rows])
            p = torch.softmax(logits, dim=-1).float().cpu().numpy()
            probs[rows, : p.shape[1]] = p
        names = [self.heads[k][1] for k in keys]
        labels = [names[i][int(probs[i].argmax())] for i in range(len(texts))]
        base_emb = None
        if with_base:
            batch = encoder.tokenize(texts)
            base_emb = encoder.forward_embeddings(encoder.model, batch).float().cpu().numpy()
        return labels, probs, names, base_emb


class MergedBackend(_PerAdapterBackend):
    name = "merged"

    def __init__(self, load_base: BaseLoader) -> None:
        super().__init__(load_base)
        self.models: dict[Key, torch.nn.Module] = {}

    def load(self, key: Key, base_ref: str, path: Path) -> None:
        from controller.training.artifact import load_adapter

        if key in self.models:
            return
        encoder = self.encoder(base_ref)
        loaded = load_adapter(path, encoder.model, encoder.tokenizer)  # copies the base
        self.models[key] = loaded.model.merge_and_unload().eval()
        self.heads[key] = (loaded.head, tuple(loaded.meta["config"]["labels"]))

    def _embed(self, base_ref: str, key: Key, texts: list[str]) -> torch.Tensor:
        encoder = self.encoder(base_ref)
        return encoder.forward_embeddings(self.models[key], encoder.tokenize(texts))


class PeftBackend(_PerAdapterBackend):
    name = "peft"

    def __init__(self, load_base: BaseLoader) -> None:
        super().__init__(load_base)
        self.models: dict[str, Any] = {}

    def load(self, key: Key, base_ref: str, path: Path) -> None:
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

        from controller.training.artifact import check_base, head_from_tensors, read_adapter

        if key in self.heads:
            return
        encoder = self.encoder(base_ref)
        meta, lora, head = read_adapter(path)
        check_base(meta, encoder.model if base_ref not in self.models
                   else self.models[base_ref].get_base_model(), encoder.tokenizer)
        cfg = meta["config"]
        config = LoraConfig(r=cfg["r"], lora_alpha=cfg["alpha"], lora_dropout=0.0,
                            target_modules=list(cfg["target_modules"]), bias="none")
        name = "_".join(map(str, key)).replace(".", "_")
        if base_ref not in self.models:
            self.models[base_ref] = get_peft_model(copy.deepcopy(encoder.model), config,
                                                   adapter_name=name).eval()
        else:
            self.models[base_ref].add_adapter(name, config)
        set_peft_model_state_dict(self.models[base_ref], lora, adapter_name=name)
        self.heads[key] = (head_from_tensors(head, path.name), tuple(cfg["labels"]))

    def _embed(self, base_ref: str, key: Key, texts: list[str]) -> torch.Tensor:
        encoder, model = self.encoder(base_ref), self.models[base_ref]
        model.set_adapter("_".join(map(str, key)).replace(".", "_"))
        return encoder.forward_embeddings(model, encoder.tokenize(texts))


BACKENDS = {"batched": BatchedBackend, "merged": MergedBackend, "peft": PeftBackend}


def make_backend(name: str, load_base: BaseLoader) -> Any:
    return BACKENDS[name](load_base)
