"""One base encoder, many LoRA adapters, one forward pass for a batch whose rows use
different adapters.

Each targeted linear layer of the base is wrapped once by `MultiLoraLinear`, which keeps
every loaded adapter's A and B matrices stacked along a slot axis (slot 0: the bare base).
A forward computes the base layer once for the whole batch and adds each row's own
low-rank delta, `y = W x + B[slot] (A[slot] x)`; rows are sorted by slot, so an adapter's
delta is two matmuls over one contiguous slice of the batch. A batch mixing 8 languages
costs one pass of the base plus 8 small deltas per layer, instead of 8 passes (one merged
model per language) or 8 adapter switches (PEFT).

Adapters of different ranks share a stack padded with zero rows/columns (exact: the extra
products are zeros). The LoRA scaling (alpha / r) is folded into B when loading.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.masking_utils import create_bidirectional_mask

from controller.encoders.text import TextEncoder, mean_pool
from controller.training.artifact import head_from_tensors, read_adapter
from controller.training.embed import pad_batch
from controller.training.head import LinearHead
from registry.errors import ArtifactError, IncompatibleAdapter
from registry.fingerprint import loaded_model_fingerprint

PEFT_PREFIX = "base_model.model."


class MultiLoraLinear(torch.nn.Module):
    """A base nn.Linear plus per-row LoRA deltas; the batch's segments are set by the owner
    per forward, in `state`: a thread-local shared by every layer of one base, so several
    model threads can run forward passes of different batches through the same layers."""

    def __init__(self, base: torch.nn.Linear, state: threading.local | None = None) -> None:
        super().__init__()
        self.base = base
        self.state = state if state is not None else threading.local()
        dtype, device = base.weight.dtype, base.weight.device
        self.A = torch.zeros(1, 1, base.in_features, dtype=dtype, device=device)
        self.B = torch.zeros(1, base.out_features, 1, dtype=dtype, device=device)
        self.ranks: dict[int, int] = {}  # slot -> its adapter's rank in this layer

    @property
    def segments(self) -> list[tuple[int, int, int]] | None:
        """(slot, start, end): this thread's batch rows sorted by slot, or None (no LoRA)."""
        return getattr(self.state, "segments", None)

    def grow(self, slots: int, rank: int) -> None:
        """Make room for `slots` slots of rank up to `rank` (zero padded)."""
        n, r, _ = self.A.shape
        if slots <= n and rank <= r:
            return
        n2, r2 = max(n, slots), max(r, rank)
        A = self.A.new_zeros(n2, r2, self.base.in_features)
        B = self.B.new_zeros(n2, self.base.out_features, r2)
        A[:n, :r] = self.A
        B[:n, :, :r] = self.B
        self.A, self.B = A, B

    def put(self, slot: int, a: torch.Tensor, b_scaled: torch.Tensor) -> None:
        self.grow(slot + 1, a.shape[0])
        self.A[slot].zero_()
        self.B[slot].zero_()
        self.A[slot, : a.shape[0]] = a.to(self.A.dtype)
        self.B[slot, :, : b_scaled.shape[1]] = b_scaled.to(self.B.dtype)
        self.ranks[slot] = int(a.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if not self.segments:
            return y
        # rows come sorted by slot: each adapter's rows are one contiguous slice, so its
        # delta is two plain matmuls over all its rows' tokens (no per-row gathers)
        for slot, start, end in self.segments:
            r = self.ranks.get(slot)
            if r is None:  # the bare base, or an adapter that leaves this layer alone
                continue
            h = x[start:end] @ self.A[slot, :r].T
            y[start:end] += h @ self.B[slot, :, :r].T
        return y


@dataclass(frozen=True)
class AdapterSlot:
    key: Any
    slot: int
    labels: tuple[str, ...]
    head: LinearHead
    nbytes: int


def _parent(model: torch.nn.Module, path: str) -> tuple[torch.nn.Module, str]:
    parent_path, _, name = path.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), name


def lora_pairs(lora: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module path in the base: (A, B)} from peft state-dict names."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in lora.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in key:
                path = key.split(marker)[0].removeprefix(PEFT_PREFIX)
                pairs.setdefault(path, {})[part] = tensor
    bad = [p for p, ab in pairs.items() if len(ab) != 2]
    if bad or not pairs:
        raise ArtifactError(f"adapter LoRA tensors are incomplete ({bad[:3] or 'none'})",
                            "the file is corrupt or was written by another tool")
    return {p: (ab["lora_A"], ab["lora_B"]) for p, ab in pairs.items()}


LAYER = re.compile(r"(?:^|\.)layer\.(\d+)\.")


def frozen_blocks(pairs: dict[str, Any], num_layers: int) -> int:
    """How many bottom blocks carry none of these LoRA pairs: the lowest block index
    targeted (0 when the embeddings are; the pooler above the blocks does not count)."""
    cut = num_layers
    for path in pairs:
        m = LAYER.search(path)
        if m:
            cut = min(cut, int(m.group(1)))
        elif "embeddings" in path:
            return 0
    return cut


def _hidden(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(mean_pool(hidden, mask), dim=-1)


class MultiAdapterBase:
    """One base encoder held once, with any number of adapters loaded into slots."""

    def __init__(self, ref: str, encoder: TextEncoder, fingerprint: str | None = None,
                 bucket_rows: int = 32) -> None:
        self.ref = ref
        self.encoder = encoder
        for p in encoder.model.parameters():
            p.requires_grad_(False)
        # the contract's check at load compares against the base actually in memory
        self.fingerprint = fingerprint or loaded_model_fingerprint(encoder.model,
                                                                   encoder.tokenizer)
        self.layers: dict[str, MultiLoraLinear] = {}
        self.adapters: dict[Any, AdapterSlot] = {}
        self.cuts: dict[int, int] = {}  # slot -> bottom blocks its adapter leaves frozen
        self.bucket_rows = bucket_rows
        self._lock = threading.Lock()
        self.state = threading.local()  # the segments of the batch each thread is running

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    def _layer(self, path: str) -> MultiLoraLinear:
        if path not in self.layers:
            parent, name = _parent(self.encoder.model, path)
            base = getattr(parent, name)
            if not isinstance(base, torch.nn.Linear):
                raise ArtifactError(f"adapter targets {path}, which is not a linear layer",
                                    "the adapter was trained on another architecture")
            layer = MultiLoraLinear(base, self.state)
            layer.grow(len(self.adapters) + 1, 1)
            setattr(parent, name, layer)
            self.layers[path] = layer
        return self.layers[path]

    def load(self, key: Any, path: str | Path) -> AdapterSlot:
        """Load an adapter file into a new slot, after the fingerprint check."""
        with self._lock:
            if key in self.adapters:
                return self.adapters[key]
            meta, lora, head_tensors = read_adapter(path)
            cfg = meta.get("config", {})
            if cfg.get("kind") != "lora":
                raise ArtifactError(f"adapter kind {cfg.get('kind')!r} is not supported",
                                    "only LoRA adapters are")
            if meta.get("base_fingerprint") != self.fingerprint:
                raise IncompatibleAdapter(
                    f"adapter {key} was trained on base fingerprint "
                    f"{meta.get('base_fingerprint')}, the loaded base {self.ref} has "
                    f"fingerprint {self.fingerprint}",
                    "serve it on the base it was trained on, or retrain it")
            scale = float(cfg["alpha"]) / float(cfg["r"])
            pairs = lora_pairs(lora)
            slot = len(self.adapters) + 1
            for layer in self.layers.values():
                layer.grow(slot + 1, 1)
            nbytes = 0
            for module_path, (a, b) in pairs.items():
                self._layer(module_path).put(slot, a.to(self.device), (b * scale).to(self.device))
                nbytes += (a.numel() + b.numel()) * a.element_size()
            self.cuts[slot] = frozen_blocks(pairs, self.num_layers)
            head = head_from_tensors(head_tensors, Path(path).name).to(self.device)
            labels = tuple(cfg.get("labels") or [str(i) for i in range(head.shape[1])])
            entry = AdapterSlot(key, slot, labels, head, nbytes)
            self.adapters[key] = entry
            return entry

    def cut(self, slot: int) -> int:
        """How many bottom blocks the adapter in `slot` leaves frozen (slot 0: all)."""
        return self.cuts.get(slot, self.num_layers)

    @property
    def num_layers(self) -> int:
        return int(getattr(self.encoder.model.config, "num_hidden_layers", 0))

    @torch.inference_mode()
    def embed(self, texts: Sequence[str], slots: Sequence[int],
              base_rows: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pooled, normalised embeddings, row i through the adapter in slots[i] (0: bare
        base), and for the rows in `base_rows` also the bare base's embedding (drift).

        Texts are tokenised in one call, sorted by length and run in buckets of at most
        `bucket_rows` rows (so padding stays small); each bucket is ONE forward pass of the
        base whatever its adapters. A base embedding shares the blocks every adapter of the
        bucket leaves frozen: they run once, and only the blocks above the cut run again
        for the base's copy of the rows (an adapter on every block: the whole depth)."""
        n = len(texts)
        ids = self.encoder.tokenizer(list(texts), truncation=True,
                                     max_length=self.encoder.max_length)["input_ids"]
        hidden = self.encoder.hidden_size
        emb = torch.empty(n, hidden, device=self.device)
        want = set(base_rows)
        base = torch.empty(n, hidden, device=self.device) if want else None
        order = sorted(range(n), key=lambda i: len(ids[i]))
        step = max(1, self.bucket_rows)
        for lo in range(0, n, step):
            rows = sorted(order[lo:lo + step], key=lambda i: slots[i])  # stable: by slot
            extra = [i for i in rows if i in want]
            e, b = self._bucket([ids[i] for i in rows], [slots[i] for i in rows],
                                [rows.index(i) for i in extra])
            emb[torch.as_tensor(rows, device=self.device)] = e
            if extra and base is not None and b is not None:
                base[torch.as_tensor(extra, device=self.device)] = b
        return emb, base

    def _bucket(self, ids: list[list[int]], slots: list[int], extra: list[int]
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One forward pass over rows sorted by slot; `extra`: positions whose bare-base
        embedding is also wanted."""
        segments: list[tuple[int, int, int]] = []
        for pos, slot in enumerate(slots):
            if segments and segments[-1][0] == slot:
                segments[-1] = (slot, segments[-1][1], pos + 1)
            else:
                segments.append((slot, pos, pos + 1))
        batch = pad_batch(ids, int(self.encoder.tokenizer.pad_token_id or 0), self.device)
        mask = batch["attention_mask"]
        if not extra:
            out = self._with_segments(segments, lambda: self.encoder.model(**batch))
            return _pool(out.last_hidden_state, mask), None
        model = self.encoder.model
        cut = min(self.cut(s) for s in set(slots))
        h = model.embeddings(input_ids=batch["input_ids"])
        blocks = model.encoder.layer
        m4 = create_bidirectional_mask(config=model.config, inputs_embeds=h,
                                       attention_mask=mask)
        for layer in blocks[:cut]:  # no adapter of this bucket touches these: shared
            h = _hidden(layer(h, m4))
        k = len(slots)
        idx = torch.as_tensor(extra, device=self.device)
        h = torch.cat([h, h[idx]])
        mask2 = torch.cat([mask, mask[idx]])
        m4 = create_bidirectional_mask(config=model.config, inputs_embeds=h,
                                       attention_mask=mask2)

        def top() -> torch.Tensor:
            x = h
            for layer in blocks[cut:]:
                x = _hidden(layer(x, m4))
            return x

        x = self._with_segments(segments + [(0, k, k + len(extra))], top)
        pooled = _pool(x, mask2)
        return pooled[:k], pooled[k:]

    def _with_segments(self, segments: list[tuple[int, int, int]], run: Any) -> Any:
        self.state.segments = segments
        try:
            return run()
        finally:
            self.state.segments = None

    @torch.inference_mode()
    def classify(self, texts: Sequence[str], keys: Sequence[Any], with_base: bool = False
                 ) -> tuple[list[str], np.ndarray, list[tuple[str, ...]], np.ndarray | None]:
        """Label, class probabilities (rows padded to the widest head) and label names per
        row; with_base also returns the bare base's embeddings of the texts (for drift),
        computed in the same forward pass (sharing the blocks the adapters leave frozen)."""
        entries = [self.adapters[k] for k in keys]
        slots = [e.slot for e in entries]
        texts = list(texts)
        n = len(texts)
        emb, base = self.embed(texts, slots, range(n) if with_base else ())
        width = max((e.head.shape[1] for e in entries), default=0)
        probs = np.zeros((n, width), dtype=np.float32)
        by_slot: dict[int, list[int]] = {}
        for i, e in enumerate(entries):
            by_slot.setdefault(e.slot, []).append(i)
        for rows in by_slot.values():  # heads are tiny: one matmul per adapter present
            e = entries[rows[0]]
            idx = torch.as_tensor(rows, device=self.device)
            logits = e.head.logits(emb[idx], [texts[i] for i in rows])
            p = torch.softmax(logits, dim=-1).float().cpu().numpy()
            probs[rows, : p.shape[1]] = p
        labels = [entries[i].labels[int(probs[i].argmax())] for i in range(n)]
        base_emb = base.float().cpu().numpy() if base is not None else None
        return labels, probs, [e.labels for e in entries], base_emb

    def adapter_bytes(self) -> int:
        return sum(e.nbytes for e in self.adapters.values())
