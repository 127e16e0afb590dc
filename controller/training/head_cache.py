"""The English (teacher-language) head, trained once per base and reused.

A head depends only on the base (its fingerprint), the teacher language, the training
split's file (sha256) and the seed, so it is cached under
`<cache_root>/heads/<sha256 of those>.safetensors` (see controller.encoders.me5.cache_root)
and every later training run on that base reads it instead of re-encoding the teacher's
training text (2k texts through 12 blocks: the largest fixed cost of a run on a deep base).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from filelock import FileLock

from controller.encoders.me5 import cache_root
from controller.encoders.text import TextEncoder
from controller.training.embed import embed_sorted
from controller.training.head import LinearHead, load_head, save_head, train_head
from controller.training.state_cache import BaseStateCache


def head_key(base_fingerprint: str, teacher: str, labels: Sequence[str], seed: int,
             rows: pd.DataFrame) -> str:
    """Per (base, teacher, label set, seed, the teacher's rows themselves)."""
    digest = hashlib.sha256(pd.util.hash_pandas_object(
        rows[["text", "label"]], index=False).to_numpy().tobytes()).hexdigest()
    raw = json.dumps([base_fingerprint, teacher, list(labels), seed, digest])
    return hashlib.sha256(raw.encode()).hexdigest()


def train_teacher_head(encoder: TextEncoder, train: pd.DataFrame, teacher: str,
                       labels: Sequence[str], seed: int,
                       cache: BaseStateCache | None = None) -> LinearHead:
    rows = train[train["language"] == teacher]
    index = {name: i for i, name in enumerate(labels)}
    texts = rows["text"].tolist()
    # through the base's state cache, these are the distillation's teacher embeddings too
    emb = (cache.embeddings(encoder, texts) if cache is not None
           else embed_sorted(encoder, texts)).numpy()
    return train_head(emb, [index[x] for x in rows["label"]], len(labels), seed=seed)


def cached_teacher_head(encoder: TextEncoder, base_fingerprint: str, train: pd.DataFrame,
                        teacher: str, labels: Sequence[str], seed: int = 0,
                        root: str | os.PathLike[str] | None = None,
                        cache: BaseStateCache | None = None) -> LinearHead:
    directory = Path(root) if root else cache_root() / "heads"
    directory.mkdir(parents=True, exist_ok=True)
    key = head_key(base_fingerprint, teacher, labels, seed, train[train["language"] == teacher])
    path = directory / f"{key}.safetensors"
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            return load_head(path)
        head = train_teacher_head(encoder, train, teacher, labels, seed, cache)
        tmp = path.with_suffix(".tmp")
        save_head(head, tmp)
        tmp.replace(path)
    return head
