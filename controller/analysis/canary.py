"""Canary analysis on live traffic: canary against champion in the same window.

Accuracy on events with feedback labels is compared with a one-sided two-proportion z-test;
mean confidence is reported beside it. Verdicts: `fail` when the canary is significantly
worse by more than the tolerated drop, `inconclusive` when either side has too little
feedback, `pass` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from controller.policy import ALL_EVIDENCE, CanaryPolicy

if TYPE_CHECKING:
    from controller.analysis.label_free import LabelFreeEvidence


@dataclass(frozen=True)
class ArmStats:
    events: int
    labelled: int
    correct: int
    mean_confidence: float | None

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


def arm_stats(rows: list[dict[str, Any]]) -> ArmStats:
    labelled = [r for r in rows if r.get("feedback_label") is not None]
    correct = sum(1 for r in labelled if r["prediction"] == r["feedback_label"])
    conf = [float(r["confidence"]) for r in rows if r.get("confidence") is not None]
    return ArmStats(len(rows), len(labelled), correct, sum(conf) / len(conf) if conf else None)


def two_proportion_p_value(k1: int, n1: int, k2: int, n2: int, margin: float = 0.0) -> float:
    """One-sided p-value of H0: p1 >= p2 - margin against H1: p1 < p2 - margin."""
    p1, p2 = k1 / n1, k2 / n2
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(max(pooled * (1 - pooled) * (1 / n1 + 1 / n2), 1e-12))
    z = (p1 - (p2 - margin)) / se
    return 0.5 * math.erfc(-z / math.sqrt(2))  # standard normal CDF at z


@dataclass(frozen=True)
class CanaryVerdict:
    verdict: str
    canary: ArmStats
    champion: ArmStats
    p_value: float | None
    reason: str
    evidence: str = "labels"  # which evidence decided: labels | estimate | agreement | none
    label_free: dict[str, Any] | None = None
    champion_estimate: float | None = None  # label-free: the champion's estimated accuracy

    def metrics(self) -> dict[str, Any]:
        return {"canary": {**asdict(self.canary), "accuracy": self.canary.accuracy},
                "champion": {**asdict(self.champion), "accuracy": self.champion.accuracy},
                "p_value": self.p_value, "reason": self.reason, "evidence": self.evidence,
                "label_free": self.label_free}


def analyse(canary_rows: list[dict[str, Any]], champion_rows: list[dict[str, Any]],
            policy: CanaryPolicy, champion_baseline: ArmStats | None = None,
            evidence: Sequence[str] = ALL_EVIDENCE,
            label_free: LabelFreeEvidence | None = None) -> CanaryVerdict:
    """`champion_baseline`: the champion's figures from the previous step, used when the
    champion has no traffic of its own (a 100% step). `evidence`: what may decide (the
    policy's, per language); `label_free`: controller.analysis.label_free's evidence, used when
    labelled events are too few (or labels may not decide)."""
    can, champ = arm_stats(canary_rows), arm_stats(champion_rows)
    need = policy.min_feedback_events
    if champ.labelled < need and champion_baseline is not None:
        champ = champion_baseline
    if can.labelled < need or champ.labelled < need or "labels" not in evidence:
        why = (f"feedback events canary {can.labelled}, champion {champ.labelled};"
               f" need {need} each")
        if label_free is None:
            return CanaryVerdict("inconclusive", can, champ, None, why, "none")
        from controller.analysis.label_free import judge

        j = judge(label_free, policy, evidence)
        return CanaryVerdict(j.verdict, can, champ, None, f"{why}; {j.reason}", j.evidence,
                             label_free.to_dict(), label_free.champion_accuracy)
    p = two_proportion_p_value(can.correct, can.labelled, champ.correct, champ.labelled,
                               policy.max_accuracy_drop)
    drop = (champ.accuracy or 0) - (can.accuracy or 0)
    if p < policy.alpha:
        return CanaryVerdict("fail", can, champ, p,
                             f"canary accuracy {can.accuracy:.3f} vs champion "
                             f"{champ.accuracy:.3f}: worse by {drop:.3f} (p={p:.4f})")
    return CanaryVerdict("pass", can, champ, p,
                         f"canary accuracy {can.accuracy:.3f} vs champion {champ.accuracy:.3f}"
                         f" (p={p:.3f} for a drop over {policy.max_accuracy_drop})")
