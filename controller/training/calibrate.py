"""Temperature scaling (Guo et al. 2017) of an adapter's head, fitted on held-out text of
the adapter's own language, and folded into the head so that serving uses it unchanged.

A student trained with cross-entropy on a few thousand texts ends over- or under-confident
on new items (ECE 0.13-0.18 on the multilingual base before this step). One scalar T,
chosen to minimise the negative log-likelihood of the dev split's labels, divides the
logits; it never changes a prediction (argmax), only its confidence. Folding it in
(weight / T, bias / T) keeps the artifact's layout: every reader of the head (serving,
gates, drift) gets calibrated probabilities without knowing T. The value is recorded in
the adapter's metadata (`temperature`) so that warm-starting from the adapter can undo it
and distil against the head's original logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from controller.encoder import TextEncoder
from controller.training.evaluate import embed_texts
from controller.training.head import LinearHead
from controller.training.state_cache import BaseStateCache

# log-spaced grid: wide enough for heads that are 20x too sharp or too flat
GRID = np.exp(np.linspace(np.log(0.05), np.log(20.0), 400))


def fit_temperature(logits: torch.Tensor, labels: Sequence[int]) -> float:
    """The T on GRID that minimises the mean NLL of softmax(logits / T); 1.0 without data.
    A grid instead of a gradient fit: one dimension, a few hundred rows, always converges."""
    if len(labels) == 0:
        return 1.0
    z = logits.detach().float().cpu()
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    with torch.no_grad():
        nll = [float(torch.nn.functional.cross_entropy(z / float(t), y)) for t in GRID]
    return float(GRID[int(np.argmin(nll))])


def scaled_head(head: LinearHead, temperature: float) -> LinearHead:
    """A copy of `head` whose logits are the original ones divided by `temperature`."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    tensors = head.tensors()
    return LinearHead.from_tensors({"weight": tensors["weight"] / temperature,
                                    "bias": tensors["bias"] / temperature})


def calibrate_head(head: LinearHead, embeddings: torch.Tensor, labels: Sequence[int]
                   ) -> tuple[LinearHead, float]:
    """(the head with T folded in, T) for a student's embeddings of held-out labelled text."""
    device = head.linear.weight.device
    with torch.no_grad():
        logits = head(embeddings.to(device))
    temperature = fit_temperature(logits, labels)
    return scaled_head(head, temperature), temperature


def calibrate_on_split(encoder: TextEncoder, student: torch.nn.Module, head: LinearHead,
                       df: pd.DataFrame, language: str, labels: Sequence[str],
                       cache: BaseStateCache | None = None) -> tuple[LinearHead, float]:
    """Fit T on `df`'s rows in `language` (the dev split: never the test split the gates
    read), through the student as serving runs it; (calibrated head, T)."""
    rows = df[df["language"] == language]
    index = {name: i for i, name in enumerate(labels)}
    emb = embed_texts(encoder, student, rows["text"].tolist(), cache)
    return calibrate_head(head, emb, [index[x] for x in rows["label"]])
