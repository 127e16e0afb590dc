"""Evaluation of an adapter on a held-out split: the one function the gates call.

Metrics (all plain JSON values):
* accuracy, macro-F1 (over labels with support or predictions), expected calibration error
  (15 equal-width confidence bins, confidence = top softmax probability);
* transfer gap: source-language accuracy of the teacher minus L accuracy of the student;
* forgetting: source accuracy of the teacher minus source accuracy through the student;
  both read the head's linear half alone: forgetting is the encoder's. A lexical half
  (controller.training.lexical) is fitted on language L's n-grams and serves L's requests
  only, so English text through it is reported apart (`english_accuracy_served`);
* a per-class report, and per-item correctness (`correct`, and `items` with ids and
  confidences) for the gates' paired bootstrap; items are in the split file's order (sorted
  by id), the same for every version of a track, so vectors pair up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from controller.encoders.text import TextEncoder
from controller.training.embed import embed_sorted, tokenize_ids
from controller.training.head import LinearHead
from controller.training.split import embed_from_states, frozen_prefix
from controller.training.state_cache import FrozenBaseOutputs

ECE_BINS = 15


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """Sum over bins of |accuracy - mean confidence| weighted by the bin's share of items."""
    if len(confidence) == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin i holds (edges[i], edges[i+1]]; confidence 0 falls in the first bin
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - confidence[sel].mean())
    return float(ece)


def per_class_report(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]
                     ) -> dict[str, dict[str, float]]:
    report: dict[str, dict[str, float]] = {}
    for i, name in enumerate(labels):
        tp = int(((y_pred == i) & (y_true == i)).sum())
        predicted = int((y_pred == i).sum())
        support = int((y_true == i).sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        report[name] = {"precision": precision, "recall": recall, "f1": f1,
                        "support": support, "predicted": predicted}
    return report


def macro_f1(report: dict[str, dict[str, float]]) -> float:
    present = [r["f1"] for r in report.values() if r["support"] or r["predicted"]]
    return float(np.mean(present)) if present else 0.0


def embed_texts(encoder: TextEncoder, model: torch.nn.Module | None, texts: Sequence[str],
                cache: FrozenBaseOutputs | None = None) -> torch.Tensor:
    """(n, hidden) pooled embeddings of `texts` through `model` (None: the bare base)."""
    # the bare base's embeddings never change: read them from the base's cache when given;
    # a frozen-prefix student runs only its top blocks, on the base's cached prefix states
    cut = frozen_prefix(model) if model is not None else 0
    if cache is not None and model is None:
        emb = cache.embeddings(encoder, texts)
    elif cache is not None and cut:
        ids = tokenize_ids(encoder, texts, encoder.max_length)
        states = cache.prefix_states(encoder.model, ids, cut,
                                     encoder.tokenizer.pad_token_id or 0, encoder.device)
        emb = embed_from_states(model, states, cut, encoder.device)  # type: ignore[arg-type]
    else:
        emb = embed_sorted(encoder, texts, model=model)
    return emb


def predict_probs(encoder: TextEncoder, model: torch.nn.Module | None, head: LinearHead,
                  texts: Sequence[str], cache: FrozenBaseOutputs | None = None,
                  lexical: bool = True) -> np.ndarray:
    """Class probabilities as served (`lexical=False`: the head's linear half alone)."""
    emb = embed_texts(encoder, model, texts, cache)
    with torch.inference_mode():
        head = head.to(emb.device)
        logits = head.logits(emb, texts) if lexical else head(emb)
        return torch.softmax(logits, dim=-1).numpy()


def _accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float((probs.argmax(1) == y).mean()) if len(y) else 0.0


def evaluate_split(encoder: TextEncoder, student: torch.nn.Module | None, head: LinearHead,
                   df: pd.DataFrame, language: str, labels: Sequence[str],
                   source_language: str = "en", cache: FrozenBaseOutputs | None = None
                   ) -> dict[str, Any]:
    """Evaluate `student` (None = the bare base, i.e. zero-shot) on the rows of `df` in
    `language`; `df` should also hold the split's `source_language` rows for the gap and
    forgetting figures. `encoder.model` is the teacher."""
    index = {name: i for i, name in enumerate(labels)}
    target = df[df["language"] == language]
    source = df[df["language"] == source_language]
    y = np.array([index[lab] for lab in target["label"]], dtype=int)
    probs = predict_probs(encoder, student, head, target["text"].tolist(), cache)
    pred = probs.argmax(1) if len(y) else np.zeros(0, dtype=int)
    correct = (pred == y).astype(int)
    confidence = probs.max(1) if len(y) else np.zeros(0)
    report = per_class_report(y, pred, labels)

    y_src = np.array([index[lab] for lab in source["label"]], dtype=int)
    src_texts = source["text"].tolist()
    src_teacher = _accuracy(predict_probs(encoder, None, head, src_texts, cache, False), y_src)
    src_student = (src_teacher if student is None else
                   _accuracy(predict_probs(encoder, student, head, src_texts, cache, False),
                             y_src))
    served = {}
    if head.lexical is not None and source_language == "en":
        served["english_accuracy_served"] = _accuracy(
            predict_probs(encoder, student, head, src_texts, cache), y_src)
    accuracy = float(correct.mean()) if len(y) else 0.0
    return {
        "language": language,
        "source_language": source_language,
        "n": len(y),
        "accuracy": accuracy,
        "macro_f1": macro_f1(report),
        "ece": expected_calibration_error(confidence, correct),
        "source_accuracy_teacher": src_teacher,
        "source_accuracy_student": src_student,
        "transfer_gap": src_teacher - accuracy,
        "forgetting": src_teacher - src_student,
        # the names the gates read (controller.analysis.gates): English accuracy through the
        # student, and the per-item vector in the split's fixed item order (by id)
        "english_accuracy": src_student if source_language == "en" else None,
        **served,
        "correct": correct.tolist(),
        "per_class": report,
        "items": {"ids": target["id"].tolist(), "correct": correct.tolist(),
                  "confidence": [round(float(c), 6) for c in confidence]},
    }
