"""Per-language drift signals: each gives a score, compares it with a threshold, says drifted.

Signals (names are stable: they are keys in stored drift reports and in the policy file):

* ``embedding``: Evidently's embedding drift *method* ``distance(dist="cosine")`` (cosine
  distance between the mean reference and mean current embedding of the base encoder),
  divided by the reference's own noise scale (the median distance between random halves of
  the reference, cached with it). Raw cosine distances are not comparable across languages
  (measured with all-MiniLM-L6-v2 on stable traffic: pa 0.0006, en 0.022, hi-Latn 0.045),
  so one absolute threshold either misses a shift in one language or alarms in another;
  the ratio is ~0.4-1.2 for stable traffic in all of them and 2-100 for script shifts.
  The metric path (EmbeddingsDrift) is not used: it draws a t-SNE plot (30-55 s).
* ``descriptors``: Evidently's normed Wasserstein distance per numeric text descriptor
  (length, words, non-letter share, mark share); the score is the largest.
* ``script_mix``: Jensen-Shannon distance (base 2) between the mean script mix of the
  reference and of the current window, and Evidently's Jensen-Shannon stattest on the
  dominant script per text; the score is the larger. Catches sr -> sr-Latn and, through
  the latin / latin_ext / latin_ipa buckets, yo -> yo-BJ, even when text is withheld.
* ``prediction``: Evidently's Jensen-Shannon stattest on the predicted labels.
* ``confidence``: Evidently's normed Wasserstein distance on the top-class confidence.

Distances, not p-values: with thousands of events a p-value rejects differences nobody
cares about (Evidently picks distances above 1,000 rows for the same reason).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from evidently.legacy.calculations.stattests import (
    jensenshannon_stat_test,
    wasserstein_stat_test,
)
from evidently.legacy.core import ColumnType
from evidently.legacy.metrics.data_drift.embedding_drift_methods import DistanceDriftMethod
from scipy.spatial.distance import jensenshannon

# the thresholds live in a light module so that the policy (and the CLI) need not import
# Evidently to validate a policy file; re-exported here where the signals use them
from controller.policy import DriftThresholds  # noqa: F401 (the signals' thresholds)

SIGNALS = ("embedding", "descriptors", "script_mix", "prediction", "confidence")
VERDICT_DRIFT = "drift"
VERDICT_STABLE = "stable"
VERDICT_INSUFFICIENT = "insufficient_data"


@dataclass
class SignalResult:
    name: str
    score: float
    threshold: float
    drifted: bool
    method: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["score"] = _finite(self.score)
        out["drifted"] = bool(self.drifted)
        return out


def _finite(value: float) -> float | None:
    """JSON has no NaN/inf: a score that could not be computed is stored as null."""
    value = float(value)
    return value if math.isfinite(value) else None


def _result(name: str, score: float, threshold: float, method: str,
            **details: Any) -> SignalResult:
    drifted = bool(math.isfinite(score) and score >= threshold)
    return SignalResult(name, float(score), float(threshold), drifted, method, details)


# -- embeddings --------------------------------------------------------------------------
_COSINE = DistanceDriftMethod(dist="cosine", threshold=1.0)  # its own threshold is unused


def embedding_noise_scale(embeddings: np.ndarray, rounds: int = 64, seed: int = 0) -> float:
    """Median cosine distance between the means of two random halves of the reference: how
    far two samples of this language's text lie apart with no drift at all."""
    from scipy.spatial.distance import cosine  # the function Evidently's method uses

    n = len(embeddings)
    if n < 4:
        return float("nan")
    rng = np.random.default_rng(seed)
    dists = []
    for _ in range(rounds):
        perm = rng.permutation(n)
        half = n // 2
        dists.append(cosine(embeddings[perm[:half]].mean(axis=0),
                            embeddings[perm[half:]].mean(axis=0)))
    # a floor, so a reference of near-identical texts does not turn noise into "drift"
    return max(float(np.median(dists)), 1e-4)


def embedding_signal(reference: pd.DataFrame, current: np.ndarray, noise_scale: float,
                     threshold: float) -> SignalResult:
    """`reference`: the reference embeddings as a DataFrame (kept by the Reference so it is
    built once); `current`: (n, d) array."""
    distance, _, _ = _COSINE(pd.DataFrame(current), reference)
    score = distance / noise_scale if noise_scale > 0 else float("nan")
    return _result("embedding", score, threshold, "evidently distance(cosine) / noise",
                   cosine_distance=_finite(distance), noise_scale=_finite(noise_scale))


# -- tabular -----------------------------------------------------------------------------
def wasserstein(reference: pd.Series, current: pd.Series) -> float:
    return float(wasserstein_stat_test(reference, current, ColumnType.Numerical,
                                       threshold=None).drift_score)


def jensenshannon_categorical(reference: pd.Series, current: pd.Series) -> float:
    return float(jensenshannon_stat_test(reference.astype(str), current.astype(str),
                                         ColumnType.Categorical, threshold=None).drift_score)


def descriptor_signal(reference: pd.DataFrame, current: pd.DataFrame, columns: tuple[str, ...],
                      threshold: float) -> SignalResult:
    per_column = {c: wasserstein(reference[c], current[c]) for c in columns}
    worst = max(per_column, key=lambda c: per_column[c])
    return _result("descriptors", per_column[worst], threshold, "evidently wasserstein (normed)",
                   worst=worst, per_column={k: _finite(v) for k, v in per_column.items()})


def script_mix_signal(reference_mix: np.ndarray, current_mix: np.ndarray,
                      reference_dominant: pd.Series, current_dominant: pd.Series,
                      scripts: tuple[str, ...], threshold: float) -> SignalResult:
    """`*_mix`: mean script-share vectors (one entry per script, summing to ~1 or 0)."""
    if reference_mix.sum() > 0 and current_mix.sum() > 0:
        mix = float(jensenshannon(reference_mix, current_mix, base=2))
    else:  # texts without letters on one side: only a change if the other side has some
        mix = 0.0 if reference_mix.sum() == current_mix.sum() else 1.0
    dominant = jensenshannon_categorical(reference_dominant, current_dominant)
    top = np.argsort(-np.abs(current_mix - reference_mix))[:3]
    moved = {scripts[i]: round(float(current_mix[i] - reference_mix[i]), 4) for i in top
             if abs(current_mix[i] - reference_mix[i]) > 1e-4}
    return _result("script_mix", max(mix, dominant), threshold,
                   "jensen-shannon (mean mix) + evidently jensenshannon (dominant script)",
                   mean_mix_js=mix, dominant_js=dominant, largest_moves=moved)


def prediction_signal(reference: pd.Series, current: pd.Series, threshold: float) -> SignalResult:
    score = jensenshannon_categorical(reference, current)
    ref_share = reference.astype(str).value_counts(normalize=True)
    cur_share = current.astype(str).value_counts(normalize=True)
    delta = cur_share.sub(ref_share, fill_value=0.0)
    top = delta.abs().sort_values(ascending=False).index[:3]
    return _result("prediction", score, threshold, "evidently jensenshannon",
                   largest_moves={str(k): round(float(delta[k]), 4) for k in top})


def confidence_signal(reference: pd.Series, current: pd.Series, threshold: float) -> SignalResult:
    score = wasserstein(reference, current)
    return _result("confidence", score, threshold, "evidently wasserstein (normed)",
                   reference_mean=_finite(reference.mean()), current_mean=_finite(current.mean()))


def verdict(signals: dict[str, SignalResult], n_events: int,
            thresholds: DriftThresholds, n_reference: int | None = None) -> str:
    if n_events < thresholds.min_events or (n_reference is not None
                                            and n_reference < thresholds.min_reference):
        return VERDICT_INSUFFICIENT
    drifted = sum(1 for s in signals.values() if s.drifted)
    return VERDICT_DRIFT if drifted >= thresholds.min_signals else VERDICT_STABLE
