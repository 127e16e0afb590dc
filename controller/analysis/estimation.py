"""Label-free judgement: accuracy estimated from the models' own calibrated confidences,
and agreement between canary and champion on the same requests.

Confidence-based performance estimation (CBPE), as NannyML implements it and Kivimäki et
al. analyse it ("Confidence-based Estimators for Predictive Performance in Model
Monitoring", JAIR 2025, arXiv:2407.08649; NannyML docs, "Estimating Performance for
Classification", how-it-works/performance_estimation#cbpe): if a model's confidence is
calibrated, the probability that a prediction is correct is its calibrated confidence, so
the expected accuracy of a window is the mean calibrated confidence, and the realised
accuracy is a Poisson-binomial variable around it with variance sum p(1-p) / n^2. CBPE
assumes calibration, so each adapter's top-class confidence is first mapped to P(correct)
by isotonic regression (scikit-learn's IsotonicRegression). The calibration set decides
the error: fitted on a dev split of ~460 rows (~230 emoji), the fitted map carries the dev
split's own sampling noise (dev and test accuracy of one model differ by up to 5 points by
chance), so the estimate misses the truth by 2-5 points on every window alike.
`cross_fitted_calibrator` pools out-of-fold predictions over the training rows (folds by
emoji, the model's recipe retrained without the fold) with the dev split: ~6x the rows.

Why not the `nannyml` package: `pip install --dry-run nannyml` into the shared venv keeps
pandas 2.3.3 / numpy 2.4.6 / scikit-learn 1.9.1, but pulls ~30 packages (xgboost,
lightgbm, gcsfs/s3fs, Google Cloud clients, a usage-analytics client), and its multiclass
CBPE needs every class's probability column while the traffic log keeps the top-class
confidence only; for accuracy the method reduces to the few lines below.

Agreement: canary and champion re-scored on the same requests (when their text is kept).
Where they agree, their correctness is identical; where they disagree at most one is right,
so the accuracy difference is carried by the disagreeing requests only: its estimate is
the mean of (p_canary - p_champion) over them (zero elsewhere), with per-request variance
p_c + p_h - (p_c - p_h)^2. The disagreement rate also bounds the difference outright:
|acc_canary - acc_champion| <= disagreement.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Calibrator:
    """Isotonic map from top-class confidence to P(correct), as interpolation knots."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    n: int

    def __call__(self, confidences: Sequence[float] | np.ndarray) -> np.ndarray:
        conf = np.asarray(confidences, dtype=np.float64)
        return np.clip(np.interp(conf, self.x, self.y), 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_calibrator(confidences: Sequence[float] | np.ndarray,
                   correct: Sequence[bool] | np.ndarray,
                   weights: Sequence[float] | np.ndarray | None = None) -> Calibrator:
    """`weights` (one per row, >= 0) reweight the calibration rows, e.g. by
    `label_shift_weights` of each row's true class."""
    from sklearn.isotonic import IsotonicRegression

    conf = np.asarray(confidences, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    if conf.size == 0 or conf.shape != hit.shape:
        raise ValueError("calibration needs one correctness flag per confidence")
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    if w is not None and (w.shape != conf.shape or not np.all(w >= 0) or w.sum() <= 0):
        raise ValueError("calibration weights must be one non-negative number per row, "
                         "not all zero")
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
        conf, hit, sample_weight=w)
    return Calibrator(tuple(map(float, iso.X_thresholds_)),
                      tuple(map(float, iso.y_thresholds_)), int(conf.size))


def cross_fitted_calibrator(groups: Sequence[Any],
                            fit_score: Callable[[frozenset[Any]], tuple[Any, Any]],
                            folds: int = 5, extra: tuple[Any, Any] | None = None,
                            seed: int = 0) -> Calibrator:
    """Calibrator fitted on out-of-fold predictions (cross-fitting) plus `extra` held-out
    rows (the dev split's confidences and correctness flags).

    `groups` are the group ids of the rows a model is trained on (the emoji: every row of a
    held-out emoji leaves training, in every language, so no fold scores an item whose
    meaning the model saw); `fit_score(held_out)` trains the model's recipe without the
    groups in `held_out` and returns (confidences, correct) on the rows of those groups."""
    unique = sorted(set(groups), key=str)
    if folds < 2 or len(unique) < folds:
        raise ValueError(f"cross-fitting needs at least {folds} groups and 2 folds")
    order = np.random.default_rng(seed).permutation(len(unique))
    confs: list[np.ndarray] = []
    hits: list[np.ndarray] = []
    if extra is not None:
        confs.append(np.asarray(extra[0], dtype=np.float64))
        hits.append(np.asarray(extra[1], dtype=np.float64))
    for k in range(folds):
        held = frozenset(unique[i] for i in order[k::folds])
        conf, hit = fit_score(held)
        confs.append(np.asarray(conf, dtype=np.float64))
        hits.append(np.asarray(hit, dtype=np.float64))
    return fit_calibrator(np.concatenate(confs), np.concatenate(hits))


def label_shift_weights(true_labels: Sequence[int] | np.ndarray,
                        predicted_labels: Sequence[int] | np.ndarray,
                        window_predictions: Sequence[int] | np.ndarray, classes: int,
                        ridge: float = 1e-3) -> np.ndarray:
    """Class weights w[y] = q_window(y) / p_calibration(y) under label shift, from the
    window's predicted labels only (what the traffic log keeps).

    Black-box shift estimation (Lipton, Wang and Smola, "Detecting and Correcting for Label
    Shift with Black Box Predictors", ICML 2018): with C[i, j] = P_cal(predicted i, true j)
    and mu[i] = P_window(predicted i), C w = mu. Solved regularised as RLLS does
    (Azizzadenesheli et al., "Regularized Learning for Domain Adaptation under Label
    Shifts", ICLR 2019): w = 1 + theta, theta = argmin |C theta - (mu - C 1)|^2 +
    ridge |theta|^2, clipped at 0; weak models make C near-singular, and the ridge pulls
    w towards "no shift" there. `ridge` 1e-3 was chosen on es, ru, id and tr (see
    bench/estimation_bench.py), not on the languages the README reports."""
    y = np.asarray(true_labels, dtype=np.int64)
    yhat = np.asarray(predicted_labels, dtype=np.int64)
    window = np.asarray(window_predictions, dtype=np.int64)
    if y.size == 0 or y.shape != yhat.shape or window.size == 0:
        raise ValueError("label-shift weights need calibration rows (true and predicted "
                         "labels) and a non-empty window of predicted labels")
    if min(y.min(), yhat.min(), window.min()) < 0 or max(
            y.max(), yhat.max(), window.max()) >= classes:
        raise ValueError(f"labels must be class indices in [0, {classes})")
    joint = np.zeros((classes, classes))
    np.add.at(joint, (yhat, y), 1.0)
    joint /= y.size
    mu = np.bincount(window, minlength=classes) / window.size
    theta = np.linalg.solve(joint.T @ joint + ridge * np.eye(classes),
                            joint.T @ (mu - joint.sum(axis=1)))
    return np.maximum(1.0 + theta, 0.0)


@dataclass(frozen=True)
class Estimate:
    """Estimated accuracy of a window and the standard error of the realised accuracy."""

    accuracy: float
    std_error: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": round(self.accuracy, 4), "std_error": round(self.std_error, 4),
                "n": self.n}


def estimate_accuracy(calibrator: Calibrator, confidences: Sequence[float] | np.ndarray
                      ) -> Estimate:
    return estimate_from_correctness(calibrator(confidences))


def estimate_from_correctness(p_correct: Sequence[float] | np.ndarray) -> Estimate:
    """CBPE from each request's P(correct), whichever map gave it."""
    p = np.asarray(p_correct, dtype=np.float64)
    if p.size == 0:
        return Estimate(float("nan"), float("inf"), 0)
    return Estimate(float(p.mean()), float(math.sqrt(float((p * (1 - p)).sum())) / p.size),
                    int(p.size))


@dataclass(frozen=True)
class Paired:
    """Canary and champion scored on the same requests."""

    n: int
    agree: int
    difference: float  # estimated accuracy(canary) - accuracy(champion)
    std_error: float
    canary_accuracy: float
    champion_accuracy: float

    @property
    def agreement(self) -> float:
        return self.agree / self.n if self.n else float("nan")

    def disagreement_upper(self, alpha: float) -> float:
        """One-sided (1 - alpha) Wilson upper bound of the disagreement rate."""
        return wilson_upper(self.n - self.agree, self.n, alpha)

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "agreement": round(self.agreement, 4),
                "difference": round(self.difference, 4), "std_error": round(self.std_error, 4),
                "canary_accuracy": round(self.canary_accuracy, 4),
                "champion_accuracy": round(self.champion_accuracy, 4)}


def paired_estimate(canary_labels: Sequence[str], canary_conf: Sequence[float],
                    champion_labels: Sequence[str], champion_conf: Sequence[float],
                    canary_cal: Calibrator, champion_cal: Calibrator) -> Paired:
    return paired_from_correctness(canary_labels, canary_cal(canary_conf), champion_labels,
                                   champion_cal(champion_conf))


def paired_from_correctness(canary_labels: Sequence[str],
                            canary_p: Sequence[float] | np.ndarray,
                            champion_labels: Sequence[str],
                            champion_p: Sequence[float] | np.ndarray) -> Paired:
    """Canary and champion on the same requests, from each request's P(correct) per arm."""
    a, b = np.asarray(canary_labels, dtype=object), np.asarray(champion_labels, dtype=object)
    pc, ph = np.asarray(canary_p, dtype=np.float64), np.asarray(champion_p, dtype=np.float64)
    if not a.shape == b.shape == pc.shape == ph.shape:
        raise ValueError("paired estimate needs one label and one P(correct) per request "
                         "for each arm")
    differ = a != b
    # two different labels cannot both be right: keep the pair's probabilities coherent
    scale = np.where(differ & (pc + ph > 1), 1.0 / np.maximum(pc + ph, 1e-12), 1.0)
    pc_d, ph_d = pc * scale, ph * scale
    diff = np.where(differ, pc_d - ph_d, 0.0)
    var = np.where(differ, pc_d + ph_d - (pc_d - ph_d) ** 2, 0.0)
    n = int(a.size)
    return Paired(n, int((~differ).sum()), float(diff.mean()) if n else float("nan"),
                  float(math.sqrt(float(var.sum())) / n) if n else float("inf"),
                  float(pc.mean()) if n else float("nan"), float(ph.mean()) if n else float("nan"))


def clustered_se(values: Sequence[float] | np.ndarray, groups: Sequence[Any] | np.ndarray
                 ) -> float:
    """Standard error of the mean of `values` when the rows of one group are not
    independent (an emoji's name and keywords rows are right or wrong together): the
    cluster-robust variance of a mean, the sum over groups of (the group's centred sum)^2,
    over n^2."""
    r = np.asarray(values, dtype=np.float64)
    if r.size == 0 or len(groups) != r.size:
        raise ValueError("clustered_se needs one group per value, and values")
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    sums = np.bincount(inverse, weights=r - r.mean())
    return float(np.sqrt((sums ** 2).sum()) / r.size)


def share_within(sigma: float, tolerance: float = 0.03) -> float:
    """P(|N(0, sigma)| <= tolerance): the share of windows within the tolerance when an
    estimate's error is centred normal with that spread."""
    from statistics import NormalDist

    return 2 * NormalDist().cdf(tolerance / sigma) - 1 if sigma > 0 else 1.0


def normal_quantile(q: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(q)


def wilson_upper(k: int, n: int, alpha: float) -> float:
    if n == 0:
        return 1.0
    z = normal_quantile(1 - alpha)
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


@dataclass(frozen=True)
class Judgement:
    verdict: str  # pass | fail | inconclusive
    reason: str
    evidence: str  # which evidence decided


def judge_difference(difference: float, std_error: float, tolerance: float, margin: float,
                     alpha: float, what: str) -> Judgement:
    """Canary minus champion accuracy, with sampling error and calibration tolerance:
    fail when confidently worse by more than `margin`, pass when confidently not."""
    sigma = math.sqrt(std_error ** 2 + tolerance ** 2)
    z = normal_quantile(1 - alpha)
    low, high = difference - z * sigma, difference + z * sigma
    text = (f"{what}: canary - champion {difference:+.3f}, {1 - alpha:.0%} interval "
            f"[{low:+.3f}, {high:+.3f}] (sampling {std_error:.3f}, calibration {tolerance})")
    if high < -margin:
        return Judgement("fail", f"{text}: worse by more than {margin}", "estimate")
    if low >= -margin:
        return Judgement("pass", f"{text}: not worse by more than {margin}", "estimate")
    return Judgement("inconclusive", f"{text}: too uncertain", "estimate")
