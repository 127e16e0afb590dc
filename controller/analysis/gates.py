"""Evaluation gates a candidate must pass before its canary.

Inputs are the evaluation dicts of controller.training.evaluate (accuracy, macro_f1, ece,
english_accuracy, per-item `correct` vectors on the same held-out items). Each gate returns
name, value, threshold, passed: what the gate report and `xlt history` show.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from controller.analysis.estimation import Estimate, normal_quantile
from controller.policy import CanaryPolicy, GatePolicy


@dataclass(frozen=True)
class Gate:
    name: str
    value: float | None
    threshold: float
    passed: bool
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_bootstrap_interval(candidate: np.ndarray, champion: np.ndarray, samples: int,
                              confidence: float, seed: int = 0) -> tuple[float, float, float]:
    """Mean and interval of accuracy(candidate) - accuracy(champion) over the same items."""
    cand, champ = np.asarray(candidate, float), np.asarray(champion, float)
    if cand.shape != champ.shape or cand.size == 0:
        raise ValueError("candidate and champion must be judged on the same non-empty items")
    diff = cand - champ
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diff.size, size=(samples, diff.size))
    means = diff[idx].mean(axis=1)
    tail = (1 - confidence) / 2
    return float(diff.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def evaluate_gates(candidate: dict[str, Any], champion: dict[str, Any] | None,
                   policy: GatePolicy, fairness: dict[str, tuple[float, float]] | None = None,
                   seed: int = 0) -> list[Gate]:
    """`fairness` maps each affected controlled language to (accuracy after, its floor)."""
    gates = [
        Gate("accuracy_floor", candidate["accuracy"], policy.min_accuracy,
             candidate["accuracy"] >= policy.min_accuracy),
        Gate("macro_f1_floor", candidate["macro_f1"], policy.min_macro_f1,
             candidate["macro_f1"] >= policy.min_macro_f1),
        Gate("ece_ceiling", candidate["ece"], policy.max_ece, candidate["ece"] <= policy.max_ece),
    ]
    english = candidate.get("english_accuracy")
    gates.append(Gate("forgetting_english_accuracy", english, policy.min_english_accuracy,
                      english is not None and english >= policy.min_english_accuracy))
    if champion is None:
        gates.append(Gate("relative_to_champion", None, -policy.relative_epsilon, True,
                          "no champion: nothing to compare with"))
    else:
        mean, low, high = paired_bootstrap_interval(
            np.asarray(candidate["correct"]), np.asarray(champion["correct"]),
            policy.bootstrap_samples, policy.bootstrap_confidence, seed)
        gates.append(Gate("relative_to_champion", round(low, 4), -policy.relative_epsilon,
                          low >= -policy.relative_epsilon,
                          f"accuracy difference {mean:+.3f}, "
                          f"{policy.bootstrap_confidence:.0%} interval [{low:+.3f}, {high:+.3f}]"))
    for language, (accuracy, floor) in sorted((fairness or {}).items()):
        gates.append(Gate(f"fairness_{language}", accuracy, floor, accuracy >= floor))
    return gates


# -- guard window after a promotion -------------------------------------------------------
@dataclass(frozen=True)
class GuardVerdict:
    state: str  # ok | regression | waiting
    reason: str
    evidence: str  # labels | estimate | none


def guard_verdict(rows: list[dict[str, Any]], baseline: float, max_drop: float,
                  canary: CanaryPolicy, evidence: Sequence[str],
                  estimate: Estimate | None = None) -> GuardVerdict:
    """The new champion's live accuracy against the baseline it replaced: from feedback
    labels when there are enough (and labels may decide), else from its CBPE estimate,
    judged on the upper end of the estimate's interval (sampling error and calibration
    tolerance), so a rollback needs confident evidence of a regression."""
    labelled = [r for r in rows if r.get("feedback_label") is not None]
    floor = baseline - max_drop
    if "labels" in evidence and len(labelled) >= canary.min_feedback_events:
        accuracy = sum(r["prediction"] == r["feedback_label"] for r in labelled) / len(labelled)
        if accuracy >= floor:
            return GuardVerdict("ok", f"guard window: accuracy {accuracy:.3f} (baseline "
                                f"{baseline:.3f})", "labels")
        return GuardVerdict("regression", f"regression in guard window: accuracy "
                            f"{accuracy:.3f} < baseline {baseline:.3f} - {max_drop}", "labels")
    if ("estimate" in evidence and estimate is not None
            and estimate.n >= canary.min_estimate_events):
        sigma = math.hypot(estimate.std_error, canary.estimate_tolerance)
        high = estimate.accuracy + normal_quantile(1 - canary.alpha) * sigma
        text = (f"estimated accuracy {estimate.accuracy:.3f} (upper {high:.3f}, "
                f"n={estimate.n}, no labels) vs baseline {baseline:.3f} - {max_drop}")
        if high < floor:
            return GuardVerdict("regression", f"regression in guard window: {text}",
                                "estimate")
        return GuardVerdict("ok", f"guard window: {text}", "estimate")
    return GuardVerdict("waiting", f"guard window: {len(labelled)} labelled events so far",
                        "none")
