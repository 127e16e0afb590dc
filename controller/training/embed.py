"""Fast batch embedding for short texts: tokenize once, length-sorted batches, so each batch
pads to its own longest text (3-4x faster than file order on CPU for CLDR names)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from controller.encoders.text import TextEncoder


def tokenize_ids(encoder: TextEncoder, texts: Sequence[str], max_length: int
                 ) -> list[list[int]]:
    if not texts:
        return []
    enc = encoder.tokenizer(list(texts), truncation=True, max_length=max_length)
    return [list(x) for x in enc["input_ids"]]


def pad_batch(ids: Sequence[Sequence[int]], pad_id: int, device: torch.device
              ) -> dict[str, torch.Tensor]:
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, :len(row)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}


def embed_ids(encoder: TextEncoder, ids: Sequence[Sequence[int]],
              model: torch.nn.Module | None = None, batch_size: int = 256) -> torch.Tensor:
    """(n, hidden) float32 CPU tensor of pooled, unit-norm embeddings of tokenized texts,
    in input order (length-sorted batches)."""
    net = model if model is not None else encoder.model
    out = torch.zeros((len(ids), encoder.hidden_size))
    order = np.argsort([len(x) for x in ids], kind="stable")
    pad_id = encoder.tokenizer.pad_token_id or 0
    was_training = net.training
    net.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = pad_batch([ids[i] for i in idx], pad_id, encoder.device)
            out[torch.as_tensor(idx)] = encoder.forward_embeddings(net, batch).float().cpu()
    net.train(was_training)
    return out


def embed_sorted(encoder: TextEncoder, texts: Sequence[str],
                 model: torch.nn.Module | None = None, max_length: int | None = None,
                 batch_size: int = 256) -> torch.Tensor:
    """(n, hidden) float32 CPU tensor of pooled, unit-norm embeddings, in input order."""
    ids = tokenize_ids(encoder, texts, max_length or encoder.max_length)
    return embed_ids(encoder, ids, model=model, batch_size=batch_size)
