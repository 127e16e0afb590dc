"""Cross-fitted calibration of a trained adapter, for label-free judgement (CBPE).

The controller estimates an adapter's accuracy on unlabelled traffic from its calibrated
confidences (controller.analysis.estimation). Fitted on the dev split alone (~460 rows, ~230
emoji), the confidence -> P(correct) map carries that split's luck into every estimate:
measured with bench/estimation_bench.py (heads on me5-small@1 embeddings), 68-79% of
windows within 3 points of the truth, against 84-92% when the map is fitted on
out-of-fold predictions over the training rows plus dev (cross-fitting: each fold's model
is the same recipe trained without the fold's emoji, scored on the fold's rows, so every
row is scored by a model that never saw its item). This module runs that for a LoRA
adapter at training time, when the data and the recipe are at hand, and returns the
fitted maps; the pipeline stores them with the adapter's metrics (`calibrator`) and
LiveOperations reads them instead of refitting on dev. Two maps come from the same rows:
isotonic on the top-class confidence, and the sharper logistic map of
controller.analysis.estimation_features (margin, entropy, agreement with the nearest training
rows), which needs each request's text at judgement time. Measured on real LoRA adapters
in bench/calibration_bench.py: see bench/results/label-free.md.

It costs `folds` more trainings per adapter, so it is opt-in (policy `[training]
calibration_folds`, or per `[[tracks]]`; `xlt train --calibration-folds K`). A fold is held
out by emoji in every language at once (the teacher's English head is retrained without
it too), so no fold model has seen the meaning of an item it is scored on. A continuation (a retrain
warm-started from the champion) cannot be replayed without the champion's knowledge of
the fold, so its folds train the recipe from scratch: slightly weaker models than the
warm-started adapter, so the map errs on the pessimistic side.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from controller.analysis.estimation import Calibrator, fit_calibrator
from controller.analysis.estimation_features import (
    FEATURES,
    FeatureCalibrator,
    fit_feature_calibrator,
    knn_agreement,
    request_features,
)
from controller.encoders.text import TextEncoder
from controller.training.evaluate import embed_texts
from controller.training.head import LinearHead
from controller.training.state_cache import BaseStateCache

log = logging.getLogger("xlt.crossfit")

# trains the adapter's recipe on the given training rows: (student, its shipped head)
Recipe = Callable[[pd.DataFrame], tuple[torch.nn.Module, LinearHead]]
# nearest training rows a request's prediction is checked against (the sharper map's
# knn_agreement); 10 as measured in bench/estimation_bench.py
KNN_K = 10


@dataclass(frozen=True)
class Scored:
    """Calibration rows of one model: top-class confidence, correctness, and the sharper
    map's features (controller.analysis.estimation_features.FEATURES), one row each."""

    confidence: np.ndarray
    correct: np.ndarray
    features: np.ndarray

    @staticmethod
    def concat(parts: Sequence[Scored]) -> Scored:
        return Scored(np.concatenate([p.confidence for p in parts]),
                      np.concatenate([p.correct for p in parts]),
                      np.concatenate([p.features for p in parts]))


@dataclass(frozen=True)
class Fitted:
    """Both maps from the same calibration rows; `features` None when the rows cannot fit
    one (all right or all wrong: the isotonic map is then a constant too)."""

    isotonic: Calibrator
    features: FeatureCalibrator | None


def probabilities(encoder: TextEncoder, model: torch.nn.Module, head: LinearHead,
                  texts: Sequence[str], cache: BaseStateCache | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(class probabilities as served, the embeddings the head read) of `texts`."""
    emb = embed_texts(encoder, model, list(texts), cache)
    with torch.inference_mode():
        head = head.to(emb.device)
        probs = torch.softmax(head.logits(emb, list(texts)), dim=-1).float().cpu().numpy()
    return probs, emb.float().cpu().numpy()


def score_rows(encoder: TextEncoder, model: torch.nn.Module, head: LinearHead,
               rows: pd.DataFrame, reference: pd.DataFrame, labels: Sequence[str],
               cache: BaseStateCache | None, k: int = KNN_K) -> Scored:
    """`model` + `head` on labelled `rows`, as serving scores them. `reference`: the
    model's own training rows of the language (the nearest-neighbour feature); it must not
    hold `rows`' items, else each row finds itself."""
    if rows.empty:
        return Scored(np.zeros(0), np.zeros(0, dtype=bool), np.zeros((0, len(FEATURES))))
    if reference.empty:
        raise ValueError("the nearest-neighbour feature needs the model's training rows")
    index = {name: i for i, name in enumerate(labels)}
    probs, emb = probabilities(encoder, model, head, rows["text"].tolist(), cache)
    ref_emb = embed_texts(encoder, model, reference["text"].tolist(), cache).float().numpy()
    predicted = probs.argmax(1)
    agree = knn_agreement(emb, predicted, ref_emb,
                          [index[x] for x in reference["label"]], min(k, len(reference)))
    truth = np.array([index[x] for x in rows["label"]])
    return Scored(probs.max(1), predicted == truth, request_features(probs, agree))


def fit_maps(scored: Scored) -> Fitted:
    iso = fit_calibrator(scored.confidence, scored.correct)
    try:
        sharper: FeatureCalibrator | None = fit_feature_calibrator(scored.features,
                                                                   scored.correct)
    except ValueError as exc:
        log.warning("no feature map: %s", exc)
        sharper = None
    return Fitted(iso, sharper)


def cross_fitted(encoder: TextEncoder, train: pd.DataFrame, language: str,
                 labels: Sequence[str], recipe: Recipe, folds: int, seed: int,
                 extra: Scored, cache: BaseStateCache | None = None) -> Fitted:
    """Both maps fitted on out-of-fold predictions over `language`'s rows of `train`
    (folds by emoji) plus `extra` (the adapter's own scores on dev). Each fold model's
    nearest-neighbour reference is its own kept rows of the language."""
    mine = train[train["language"] == language]
    emoji = sorted(set(mine["id"]), key=str)  # items: the same id in every language
    if folds < 2 or len(emoji) < folds:
        raise ValueError(f"cross-fitting needs at least {folds} items of {language} and "
                         f"2 folds, got {len(emoji)} items and {folds} folds")
    order = np.random.default_rng(seed).permutation(len(emoji))
    parts = [extra]
    for k in range(folds):
        held = {emoji[i] for i in order[k::folds]}
        model, head = recipe(train[~train["id"].isin(held)])
        out = mine["id"].isin(held)
        parts.append(score_rows(encoder, model, head, mine[out], mine[~out], labels, cache))
        del model
    return fit_maps(Scored.concat(parts))


def calibrator_record(fitted: Fitted, folds: int, k: int = KNN_K) -> dict[str, Any]:
    """What the adapter's metrics keep (JSON): the isotonic map's knots, unrounded (an
    isotonic map is a staircase whose risers sit between nearby knots: rounding moves
    them), and the feature map with its neighbour count. `folds` 0: fitted on dev alone,
    scored by the head before its lexical refit."""
    cal = fitted.isotonic
    method = "cross-fitted isotonic" if folds else "dev isotonic, before the lexical refit"
    record: dict[str, Any] = {"x": list(cal.x), "y": list(cal.y), "n": cal.n,
                              "folds": folds, "method": method}
    if fitted.features is not None:
        record["features"] = {**fitted.features.to_dict(), "k": k}
    return record


def feature_calibrator_from_record(record: Any) -> tuple[FeatureCalibrator, int] | None:
    """The stored feature map and its neighbour count, or None when the adapter has none;
    a malformed one is logged and ignored (the isotonic map decides instead)."""
    stored = record.get("features") if isinstance(record, dict) else None
    if stored is None:
        return None
    try:
        k = stored.get("k") if isinstance(stored, dict) else None
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"neighbour count k must be a positive integer, not {k!r}")
        return FeatureCalibrator.from_dict(stored), k
    except ValueError as exc:
        log.warning("stored feature map ignored: %s", exc)
        return None


def calibrator_from_record(record: Any) -> Calibrator | None:
    """The stored map, or None when the adapter has none (or a malformed one)."""
    if not isinstance(record, dict):
        return None
    x, y, n = record.get("x"), record.get("y"), record.get("n")
    if (not isinstance(x, list) or not isinstance(y, list) or len(x) != len(y) or not x
            or not isinstance(n, int)):
        return None
    try:
        xs, ys = tuple(float(v) for v in x), tuple(float(v) for v in y)
    except (TypeError, ValueError):
        return None
    if any(b < a for a, b in zip(xs, xs[1:], strict=False)):
        return None
    return Calibrator(xs, ys, n)
