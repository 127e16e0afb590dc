"""Frozen-prefix training for deep bases: the bottom `frozen_layers` blocks of the encoder
get no LoRA, so their output for a given text never changes during distillation. It is
computed once (like the teacher's embeddings) and each step runs only the top blocks,
forward and backward. On the 12-layer multilingual base with the top half adapted, a step
costs about half of a full one, and nothing below the cut is ever recomputed.

Works on BERT-style encoders (`embeddings`, `encoder.layer`), which is what xlt's bases
are; the peft-wrapped student's layers are reached through `get_base_model()`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers.masking_utils import create_bidirectional_mask

from controller.encoders.text import mean_pool
from controller.training.embed import pad_batch


def _bert(model: torch.nn.Module) -> torch.nn.Module:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not (hasattr(inner, "embeddings") and hasattr(inner, "encoder")):
        raise TypeError(f"{type(inner).__name__} is not a BERT-style encoder; "
                        "train it with frozen_layers=0")
    return inner


def _mask(model: torch.nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return create_bidirectional_mask(config=model.config, inputs_embeds=hidden,
                                     attention_mask=mask)


@torch.inference_mode()
def prefix_states(model: torch.nn.Module, ids: Sequence[Sequence[int]], frozen_layers: int,
                  pad_id: int, device: torch.device, batch_size: int = 128
                  ) -> list[torch.Tensor]:
    """Per text, the (length, hidden) output of embeddings + the first `frozen_layers`
    blocks, on CPU (length-sorted batches so padding stays small)."""
    bert = _bert(model)
    was_training = bert.training
    bert.eval()
    out: list[torch.Tensor] = [torch.empty(0)] * len(ids)
    order = np.argsort([len(x) for x in ids], kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = pad_batch([ids[i] for i in idx], pad_id, device)
        h = bert.embeddings(input_ids=batch["input_ids"])
        mask = _mask(bert, h, batch["attention_mask"])
        for layer in bert.encoder.layer[:frozen_layers]:
            h = layer(h, mask)
        h = h.float().cpu()
        for row, i in enumerate(idx):
            out[int(i)] = h[row, :len(ids[i])].clone()
    bert.train(was_training)
    return out


def pad_states(states: Sequence[torch.Tensor], device: torch.device
               ) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(int(s.shape[0]) for s in states)
    hidden = states[0].shape[1]
    h = torch.zeros((len(states), width, hidden))
    mask = torch.zeros((len(states), width), dtype=torch.long)
    for i, s in enumerate(states):
        h[i, :s.shape[0]] = s
        mask[i, :s.shape[0]] = 1
    return h.to(device), mask.to(device)


def top_embeddings(model: torch.nn.Module, hidden: torch.Tensor, mask: torch.Tensor,
                   frozen_layers: int) -> torch.Tensor:
    """Pooled, unit-norm embeddings from cached prefix states through the remaining
    blocks of `model` (the LoRA student), with gradients."""
    bert = _bert(model)
    m4 = _mask(bert, hidden, mask)
    for layer in bert.encoder.layer[frozen_layers:]:
        hidden = layer(hidden, m4)
    return torch.nn.functional.normalize(mean_pool(hidden, mask), dim=-1)


def frozen_prefix(model: torch.nn.Module) -> int:
    """How many bottom blocks of a (peft) student carry no LoRA: 0 for a full-depth adapter
    or a bare base."""
    configs = getattr(model, "peft_config", None)
    if not configs:
        return 0
    layers = getattr(next(iter(configs.values())), "layers_to_transform", None)
    return int(min(layers)) if layers else 0


@torch.inference_mode()
def embed_from_states(model: torch.nn.Module, states: Sequence[torch.Tensor],
                      frozen_layers: int, device: torch.device, batch_size: int = 256
                      ) -> torch.Tensor:
    """(n, hidden) pooled unit-norm embeddings of `model` from cached prefix states (only
    the blocks above the cut run), in input order, on CPU."""
    bert = _bert(model)
    was_training = bert.training
    bert.eval()
    out = torch.zeros((len(states), bert.config.hidden_size))
    order = np.argsort([int(s.shape[0]) for s in states], kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        hidden, mask = pad_states([states[i] for i in idx], device)
        out[torch.as_tensor(idx)] = top_embeddings(model, hidden, mask,
                                                   frozen_layers).float().cpu()
    bert.train(was_training)
    return out
