"""On-disk memo of what the frozen base computes: pooled teacher embeddings and the
frozen prefix's hidden states, per base fingerprint, keyed by the token ids the base read.

Everything the frozen base computes for a text is a function of (base, token ids) alone, so
it is computed once per base and reused by every later run: the English source side is the
same for every target language (one teacher pass serves hi, sw, yo and am, and the English
head), and a track's own texts come back at every retrain (drift, attempts, upgrades). The
key is the sha1 of the ids, not of the text, so a different max_length shares every entry it
does not truncate. Files live under `<cache_root>/states/<fingerprint>/` (see
controller.encoders.me5.cache_root), one per kind; writers merge under a file lock.
`MemoryStateCache` is the same memo held in one process (serving, gates).
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Container, Hashable, Sequence
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file

from controller.encoders.text import TextEncoder
from controller.training.embed import embed_ids, tokenize_ids

Ids = Sequence[int]
Key = Hashable


def ids_key(ids: Ids) -> bytes:
    return hashlib.sha1(np.asarray(ids, dtype=np.int64).tobytes()).digest()


def compute_missing(keys: Sequence[Key], ids: Sequence[Ids], present: Container[Key],
                    compute: Callable[[list[Ids]], list[torch.Tensor]]
                    ) -> dict[Key, torch.Tensor]:
    """Rows for the keys not in `present`, each distinct one computed once by `compute`
    (detached, float32, on CPU): what both stores add on a miss."""
    missing: dict[Key, Ids] = {}
    for k, x in zip(keys, ids, strict=True):
        if k not in present and k not in missing:
            missing[k] = x
    if not missing:
        return {}
    new = compute(list(missing.values()))
    return {k: t.detach().float().cpu().contiguous()
            for k, t in zip(missing, new, strict=True)}


class TensorStore:
    """Tensors (any shape with a fixed last dimension) keyed by token ids, in one
    safetensors file (rows concatenated along dim 0, with offsets and 20-byte keys)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._rows: dict[bytes, torch.Tensor] = {}
        self._mtime: float | None = None

    def _read(self) -> dict[bytes, torch.Tensor]:
        if not self.path.is_file():
            return {}
        data = load_file(str(self.path))
        keys, offsets, flat = data["keys"].numpy(), data["offsets"].tolist(), data["rows"]
        return {bytes(keys[i]): flat[offsets[i]:offsets[i + 1]]
                for i in range(len(keys))}

    def _refresh(self) -> None:
        mtime = self.path.stat().st_mtime if self.path.is_file() else None
        if mtime != self._mtime:
            self._rows, self._mtime = self._read(), mtime

    def _write(self, rows: dict[bytes, torch.Tensor]) -> None:
        keys = list(rows)
        values = [rows[k] for k in keys]
        offsets = np.cumsum([0] + [int(v.shape[0]) for v in values])
        tensors = {"keys": torch.from_numpy(np.frombuffer(b"".join(keys), dtype=np.uint8)
                                            .reshape(len(keys), 20).copy()),
                   "offsets": torch.from_numpy(offsets.astype(np.int64)),
                   "rows": torch.cat(values).contiguous()}
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        save_file(tensors, str(tmp))
        tmp.replace(self.path)

    def get_many(self, ids: Sequence[Ids],
                 compute: Callable[[list[Ids]], list[torch.Tensor]]) -> list[torch.Tensor]:
        """The stored tensor for each ids list; missing ones computed (once per distinct
        ids) by `compute`, then written back."""
        self._refresh()
        keys = [ids_key(x) for x in ids]
        fresh = compute_missing(keys, ids, self._rows, compute)
        if fresh:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.path) + ".lock"):
                merged = {**self._read(), **fresh}  # keep what other writers added
                self._write(merged)
            self._rows = merged
            self._mtime = self.path.stat().st_mtime
        return [self._rows[k] for k in keys]


class FrozenBaseOutputs(ABC):
    """What a frozen base computes for texts, memoised by token ids; subclasses say where
    the rows live (`_get_many`)."""

    @abstractmethod
    def _get_many(self, kind: str, ids: Sequence[Ids],
                  compute: Callable[[list[Ids]], list[torch.Tensor]]) -> list[torch.Tensor]:
        """The row of each ids list for `kind`, the missing ones computed by `compute`."""

    def embeddings(self, encoder: TextEncoder, texts: Sequence[str],
                   max_length: int | None = None) -> torch.Tensor:
        """(n, hidden) pooled unit-norm embeddings of the base (the teacher), as
        embed_sorted would give them."""
        ids = tokenize_ids(encoder, texts, max_length or encoder.max_length)
        if not ids:
            return torch.zeros((0, encoder.hidden_size))
        rows = self._get_many("pooled", ids,
                              lambda todo: list(embed_ids(encoder, todo).unsqueeze(1)))
        return torch.cat(rows)

    def prefix_states(self, model: torch.nn.Module, ids: Sequence[Ids], frozen_layers: int,
                      pad_id: int, device: torch.device) -> list[torch.Tensor]:
        """Per ids list, the (length, hidden) output of the base's first `frozen_layers`
        blocks (controller.training.split.prefix_states), on CPU."""
        from controller.training.split import prefix_states

        return self._get_many(
            f"prefix{frozen_layers}", ids,
            lambda todo: prefix_states(model, todo, frozen_layers, pad_id, device))


class BaseStateCache(FrozenBaseOutputs):
    """The frozen base's outputs for one base (fingerprint), on disk: what training reads
    again at every run."""

    def __init__(self, fingerprint: str, root: str | os.PathLike[str] | None = None) -> None:
        if root is None:
            from controller.encoders.me5 import cache_root

            root = cache_root() / "states"
        self.directory = Path(root) / fingerprint.replace(":", "-")[:80]
        self._stores: dict[str, TensorStore] = {}

    def _get_many(self, kind: str, ids: Sequence[Ids],
                  compute: Callable[[list[Ids]], list[torch.Tensor]]) -> list[torch.Tensor]:
        if kind not in self._stores:
            self._stores[kind] = TensorStore(self.directory / f"{kind}.safetensors")
        return self._stores[kind].get_many(ids, compute)


class MemoryStateCache(FrozenBaseOutputs):
    """The frozen base's outputs for one loaded base, in this process only, least recently
    used first out: what serving and the gates read again and again (a track's traffic
    repeats its texts; every gate run reads the same test items), without rewriting a file
    per batch as the on-disk store would."""

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._rows: OrderedDict[tuple[str, bytes], torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def _get_many(self, kind: str, ids: Sequence[Ids],
                  compute: Callable[[list[Ids]], list[torch.Tensor]]) -> list[torch.Tensor]:
        keys = [(kind, ids_key(x)) for x in ids]
        fresh = compute_missing(keys, ids, self._rows, compute)
        out = [fresh[k] if k in fresh else self._rows[k] for k in keys]
        for k in keys:  # most recently used last
            if k in self._rows:
                self._rows.move_to_end(k)
        for k, t in fresh.items():
            size = t.nelement() * t.element_size()
            # a row sliced from its batch would keep the whole (padded) batch alive while
            # counting only its own bytes: keep a copy, so the bound holds in memory too
            if t.untyped_storage().nbytes() > size:
                t = t.clone()
            self._rows[k] = t
            self.nbytes += size
        while self.nbytes > self.max_bytes and self._rows:
            _, t = self._rows.popitem(last=False)
            self.nbytes -= t.nelement() * t.element_size()
        return out
