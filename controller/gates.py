"""Evaluation gates a candidate must pass before its canary.

Inputs are the evaluation dicts of controller.training.evaluate (accuracy, macro_f1, ece,
english_accuracy, per-item `correct` vectors on the same held-out items). Each gate returns
name, value, threshold, passed: what the gate report and `xlt history` show.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from controller.policy import GatePolicy


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
