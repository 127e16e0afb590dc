"""A sharper P(correct) than the top-class confidence alone, for label-free accuracy.

CBPE's error on a window has two parts (bench/estimation_bench.py's error budget): the
realisation of the window around its expectation, with variance sum p(1-p) / n^2, and the
map's own level error from its calibration rows, which also grows with p(1-p). Both shrink
when the per-request P(correct) is sharper (nearer 0 or 1), and a map of the top-class
confidence alone cannot be sharper than that confidence allows. Two more signals are
available wherever a request's text is kept, re-scored through the model:
- the shape of the probability vector: the margin between the top two classes and the
  entropy;
- agreement with the model's own training data: the share of the request's k nearest
  training rows (cosine, in the embedding the model reads) whose label is the predicted
  one, the nearest-neighbour form of the trust score (Jiang, Kim, Guan and Gupta, "To
  Trust Or Not To Trust A Classifier", NeurIPS 2018). A prediction that its neighbourhood
  contradicts is wrong more often than its confidence says.
A logistic regression over these features, fitted on the same cross-fitted calibration rows
as the isotonic map, gives P(correct) per request; CBPE's estimate is its mean over a window.

Measured in bench/estimation_bench.py (column `sharper`) beside the isotonic map, and on
real LoRA adapters in bench/calibration_bench.py. The training pipeline fits it beside the
isotonic map (controller.training.crossfit) and the controller's label-free judgement
reads it where a request's text is kept (LiveOperations.correctness, policy `[canary]
estimator`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

FEATURES = ("logit_confidence", "margin", "entropy", "knn_agreement")
_CHUNK = 1024  # rows of x per similarity block: bounds memory at _CHUNK x len(ref) floats


def knn_agreement(x: np.ndarray, predicted: Sequence[int] | np.ndarray, ref_x: np.ndarray,
                  ref_y: Sequence[int] | np.ndarray, k: int = 10) -> np.ndarray:
    """Share of each row's k nearest reference rows (cosine) labelled as the row's
    prediction. The reference rows must not contain the rows scored (cross-fitting: the
    fold's model and its own training rows only), else each row finds itself."""
    x, ref_x = np.asarray(x, dtype=np.float32), np.asarray(ref_x, dtype=np.float32)
    pred, ref = np.asarray(predicted, dtype=np.int64), np.asarray(ref_y, dtype=np.int64)
    if x.ndim != 2 or ref_x.ndim != 2 or x.shape[1] != ref_x.shape[1]:
        raise ValueError("knn agreement needs two 2-d embedding arrays of the same width")
    if pred.shape != (x.shape[0],) or ref.shape != (ref_x.shape[0],):
        raise ValueError("one predicted label per row and one label per reference row")
    if not 1 <= k <= ref_x.shape[0]:
        raise ValueError(f"k must be between 1 and the {ref_x.shape[0]} reference rows")
    unit = ref_x / np.maximum(np.linalg.norm(ref_x, axis=1, keepdims=True), 1e-12)
    out = np.empty(x.shape[0])
    for start in range(0, x.shape[0], _CHUNK):
        block = x[start:start + _CHUNK]
        sims = (block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)) @ unit.T
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out[start:start + _CHUNK] = (ref[nearest] == pred[start:start + _CHUNK, None]).mean(1)
    return out


def request_features(probs: np.ndarray, agreement: np.ndarray) -> np.ndarray:
    """The calibrator's inputs per request, in FEATURES order, from the full probability
    vector and `knn_agreement` of its predicted label."""
    p = np.asarray(probs, dtype=np.float64)
    agree = np.asarray(agreement, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2 or agree.shape != (p.shape[0],):
        raise ValueError("features need an (n, classes >= 2) probability array and one "
                         "agreement per row")
    top = np.sort(p, axis=1)
    conf = np.clip(top[:, -1], 1e-6, 1 - 1e-6)
    entropy = -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(1)
    return np.column_stack([np.log(conf / (1 - conf)), top[:, -1] - top[:, -2], entropy, agree])


@dataclass(frozen=True)
class FeatureCalibrator:
    """Logistic map from request features (FEATURES) to P(correct)."""

    coef: tuple[float, ...]
    intercept: float
    n: int

    def __call__(self, features: np.ndarray) -> np.ndarray:
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != len(self.coef):
            raise ValueError(f"expected an (n, {len(self.coef)}) feature array, got {f.shape}")
        return 1.0 / (1.0 + np.exp(-(f @ np.asarray(self.coef) + self.intercept)))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "features": list(FEATURES)}

    @classmethod
    def from_dict(cls, data: Any) -> FeatureCalibrator:
        """The stored map; ValueError (what is wrong) for a record that is not one."""
        if not isinstance(data, dict):
            raise ValueError(f"feature calibrator record must be a mapping, not {type(data)}")
        if not isinstance(data.get("features"), list) or data["features"] != list(FEATURES):
            raise ValueError(f"feature calibrator is for features {data.get('features')}, "
                             f"not {list(FEATURES)}")
        missing = [k for k in ("coef", "intercept", "n") if k not in data]
        if missing:
            raise ValueError(f"feature calibrator record lacks {', '.join(missing)}")
        try:
            coef = tuple(float(c) for c in data["coef"])
            intercept, n = float(data["intercept"]), int(data["n"])
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"feature calibrator record is malformed: {exc}") from None
        if len(coef) != len(FEATURES):
            raise ValueError(f"feature calibrator has {len(coef)} coefficients, "
                             f"expected {len(FEATURES)}")
        if not all(np.isfinite([*coef, intercept])) or n < 1:
            raise ValueError("feature calibrator coefficients must be finite, n >= 1")
        return cls(coef, intercept, n)


def fit_feature_calibrator(features: np.ndarray, correct: Sequence[bool] | np.ndarray,
                           strength: float = 1.0) -> FeatureCalibrator:
    """Fitted on cross-fitted calibration rows, as the isotonic map is. Four features and a
    mild L2 penalty (`strength`: sklearn's C) on ~1,700 rows: the map's own variance stays
    far below the rows' sampling noise."""
    from sklearn.linear_model import LogisticRegression

    f = np.asarray(features, dtype=np.float64)
    hit = np.asarray(correct, dtype=bool)
    if f.ndim != 2 or f.shape[1] != len(FEATURES) or hit.shape != (f.shape[0],):
        raise ValueError(f"calibration needs an (n, {len(FEATURES)}) feature array and one "
                         "correctness flag per row")
    if hit.all() or not hit.any():
        raise ValueError("calibration rows must hold both right and wrong predictions")
    model = LogisticRegression(C=strength, max_iter=2000).fit(f, hit)
    return FeatureCalibrator(tuple(float(c) for c in model.coef_[0]),
                             float(model.intercept_[0]), int(f.shape[0]))
