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

With a lexical half (controller.training.lexical), the same dev rows fit two weights
instead of one temperature: served logits a * linear + b * lexical, (a, b) minimising the
dev split's negative log-likelihood (stacking; it calibrates and weighs the halves at
once). Both are folded in, and T = 1 / a is recorded as the linear half's temperature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from controller.encoders.text import TextEncoder
from controller.training.evaluate import embed_texts
from controller.training.head import LinearHead
from controller.training.lexical import LexicalHead, fit_lexical
from controller.training.state_cache import BaseStateCache

# log-spaced grid: wide enough for heads that are 20x too sharp or too flat
GRID = np.exp(np.linspace(np.log(0.05), np.log(20.0), 400))
# the stacking weights' grid (two dimensions: coarser)
STACK_GRID = np.exp(np.linspace(np.log(0.05), np.log(20.0), 61))


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
    """A copy of `head`'s linear half whose logits are the original ones divided by
    `temperature` (without a lexical half: what distillation reads)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    tensors = head.linear_tensors()
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


def fit_stack(linear: torch.Tensor, lexical: np.ndarray, labels: Sequence[int]
              ) -> tuple[float, float]:
    """(a, b) on STACK_GRID minimising the mean NLL of softmax(a * linear + b * lexical);
    (1, 1) without data."""
    if len(labels) == 0:
        return 1.0, 1.0
    z = linear.detach().float().cpu()
    w = torch.as_tensor(np.asarray(lexical), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    grid = torch.as_tensor(STACK_GRID, dtype=torch.float32)
    best = (float("inf"), 1.0, 1.0)
    with torch.no_grad():
        for a in STACK_GRID:
            logits = float(a) * z[None] + grid[:, None, None] * w[None]  # (b, rows, labels)
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, z.shape[1]), y.repeat(len(STACK_GRID)),
                reduction="none").reshape(len(STACK_GRID), -1).mean(1)
            i = int(torch.argmin(nll))
            if float(nll[i]) < best[0]:
                best = (float(nll[i]), float(a), float(STACK_GRID[i]))
    return best[1], best[2]


def _dev_rows(encoder: TextEncoder, student: torch.nn.Module, df: pd.DataFrame,
              language: str, labels: Sequence[str], cache: BaseStateCache | None
              ) -> tuple[list[str], torch.Tensor, list[int]]:
    """`df`'s rows in `language`: their texts, student embeddings and label indices."""
    rows = df[df["language"] == language]
    index = {name: i for i, name in enumerate(labels)}
    texts = rows["text"].tolist()
    return texts, embed_texts(encoder, student, texts, cache), [index[x] for x in rows["label"]]


def stack_weights(head: LinearHead, emb: torch.Tensor, texts: Sequence[str],
                  y: Sequence[int], lexical: LexicalHead) -> tuple[float, float]:
    """fit_stack's (a, b) for `head`'s linear half on `emb` and `lexical` on `texts`."""
    with torch.no_grad():
        linear = head(emb.to(head.linear.weight.device))
    return fit_stack(linear, lexical.logits(texts), y)


def calibrate_on_split(encoder: TextEncoder, student: torch.nn.Module, head: LinearHead,
                       df: pd.DataFrame, language: str, labels: Sequence[str],
                       cache: BaseStateCache | None = None,
                       lexical: LexicalHead | None = None) -> tuple[LinearHead, float]:
    """Fit T (or, with `lexical`, the stacking weights) on `df`'s rows in `language` (the
    dev split: never the test split the gates read), through the student as serving runs
    it; (calibrated head, T of its linear half)."""
    texts, emb, y = _dev_rows(encoder, student, df, language, labels, cache)
    if lexical is None:
        return calibrate_head(head, emb, y)
    a, b = stack_weights(head, emb, texts, y, lexical)
    return scaled_head(head, 1.0 / a).with_lexical(lexical.scaled(b)), 1.0 / a


@dataclass(frozen=True)
class ShippedHead:
    """The head an adapter ships (`head`, with T of its linear half, or None), and
    `honest`: the same head, except that where the lexical half was refitted with the dev
    rows, `honest` keeps the half fitted without them, so that its confidences on dev are
    out of sample (what a confidence -> P(correct) map must be fitted on)."""

    head: LinearHead
    temperature: float | None
    honest: LinearHead

    @property
    def refitted(self) -> bool:
        return self.honest is not self.head


def shipped_head(encoder: TextEncoder, student: torch.nn.Module, head: LinearHead,
                 target_texts: Sequence[str], target_labels: Sequence[int] | None,
                 dev: pd.DataFrame | None, language: str, labels: Sequence[str],
                 calibrate: bool, lexical: bool, cache: BaseStateCache | None = None,
                 refit: bool = True) -> ShippedHead:
    """The head an adapter ships, from the head the student was distilled against:
    with `lexical` (and target labels and a dev split), a lexical half fitted on the
    training texts and stacked with the linear half on dev, then (with `refit`) fitted
    again on the training texts plus dev's, under the same weight; with `calibrate`, a
    temperature fitted on dev; otherwise unchanged.

    Why refit: once dev has chosen the weight, its labelled rows are worth more as
    training rows, and the lexical half is the part that learns from them (the student
    learns from the English teacher). On five re-splits of the emoji plus the shipped one,
    the half alone gains sw +0.8, yo +2.0, am +1.5, hi +1.4 points (bench/ceiling_bench.py,
    columns lexical and lexical+dev)."""
    if dev is None or not calibrate:
        return ShippedHead(head, None, head)
    half = None
    if lexical and target_labels is not None and len(set(target_labels)) > 1:
        half = fit_lexical(list(target_texts), list(target_labels), len(labels))
    if half is None or target_labels is None:
        calibrated, temperature = calibrate_on_split(encoder, student, head, dev, language,
                                                     labels, cache)
        return ShippedHead(calibrated, temperature, calibrated)
    texts, emb, y = _dev_rows(encoder, student, dev, language, labels, cache)
    a, b = stack_weights(head, emb, texts, y, half)
    linear = scaled_head(head, 1.0 / a)
    honest = linear.with_lexical(half.scaled(b))
    if not refit or not texts:
        return ShippedHead(honest, 1.0 / a, honest)
    full = fit_lexical([*target_texts, *texts], [*target_labels, *y], len(labels))
    return ShippedHead(linear.with_lexical(full.scaled(b)), 1.0 / a, honest)
