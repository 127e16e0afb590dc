"""Cross-fitted calibration of a trained adapter, for label-free judgement (CBPE).

The controller estimates an adapter's accuracy on unlabelled traffic from its calibrated
confidences (controller.estimation). Fitted on the dev split alone (~460 rows, ~230
emoji), the confidence -> P(correct) map carries that split's luck into every estimate:
measured with bench/estimation_bench.py (heads on me5-small@1 embeddings), 68-79% of
windows within 3 points of the truth, against 84-92% when the map is fitted on
out-of-fold predictions over the training rows plus dev (cross-fitting: each fold's model
is the same recipe trained without the fold's emoji, scored on the fold's rows, so every
row is scored by a model that never saw its item). This module runs that for a LoRA
adapter at training time, when the data and the recipe are at hand, and returns the
fitted map; the pipeline stores it with the adapter's metrics (`calibrator`) and
LiveOperations.calibrator reads it instead of refitting on dev. On three real LoRA
adapters (bench/calibration_bench.py) the evidence is mixed: see README "Known limits".

It costs `folds` more trainings per adapter, so it is opt-in (policy `[training]
calibration_folds`, `xlt train --calibration-folds K`). A fold is held out by emoji in
every language at once (the teacher's English head is retrained without it too), so no
fold model has seen the meaning of an item it is scored on. A continuation (a retrain
warm-started from the champion) cannot be replayed without the champion's knowledge of
the fold, so its folds train the recipe from scratch: slightly weaker models than the
warm-started adapter, so the map errs on the pessimistic side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from controller.encoder import TextEncoder
from controller.estimation import Calibrator, fit_calibrator
from controller.training.evaluate import predict_probs
from controller.training.head import LinearHead
from controller.training.state_cache import BaseStateCache

# trains the adapter's recipe on the given training rows: (student, its shipped head)
Recipe = Callable[[pd.DataFrame], tuple[torch.nn.Module, LinearHead]]


def confidences(encoder: TextEncoder, model: torch.nn.Module, head: LinearHead,
                rows: pd.DataFrame, labels: Sequence[str],
                cache: BaseStateCache | None) -> tuple[np.ndarray, np.ndarray]:
    """(top-class confidence, correct) of `model` + `head` on `rows`, as serving scores."""
    if rows.empty:
        return np.zeros(0), np.zeros(0, dtype=bool)
    index = {name: i for i, name in enumerate(labels)}
    probs = predict_probs(encoder, model, head, rows["text"].tolist(), cache)
    truth = np.array([index[x] for x in rows["label"]])
    return probs.max(1), probs.argmax(1) == truth


def cross_fitted(encoder: TextEncoder, train: pd.DataFrame, language: str,
                 labels: Sequence[str], recipe: Recipe, folds: int, seed: int,
                 extra: tuple[np.ndarray, np.ndarray],
                 cache: BaseStateCache | None = None) -> Calibrator:
    """Isotonic map fitted on out-of-fold predictions over `language`'s rows of `train`
    (folds by emoji) plus `extra` (the adapter's own confidences on dev)."""
    mine = train[train["language"] == language]
    emoji = sorted(set(mine["emoji"]), key=str)
    if folds < 2 or len(emoji) < folds:
        raise ValueError(f"cross-fitting needs at least {folds} items of {language} and "
                         f"2 folds, got {len(emoji)} items and {folds} folds")
    order = np.random.default_rng(seed).permutation(len(emoji))
    conf, hit = [np.asarray(extra[0], dtype=float)], [np.asarray(extra[1], dtype=bool)]
    for k in range(folds):
        held = {emoji[i] for i in order[k::folds]}
        model, head = recipe(train[~train["emoji"].isin(held)])
        c, h = confidences(encoder, model, head, mine[mine["emoji"].isin(held)], labels,
                           cache)
        conf.append(c)
        hit.append(h)
        del model
    return fit_calibrator(np.concatenate(conf), np.concatenate(hit))


def calibrator_record(cal: Calibrator, folds: int) -> dict[str, Any]:
    """What the adapter's metrics keep (JSON): the map's knots, unrounded (an isotonic
    map is a staircase whose risers sit between nearby knots: rounding moves them).
    `folds` 0: fitted on dev alone, scored by the head before its lexical refit."""
    method = "cross-fitted isotonic" if folds else "dev isotonic, before the lexical refit"
    return {"x": list(cal.x), "y": list(cal.y), "n": cal.n, "folds": folds, "method": method}


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
