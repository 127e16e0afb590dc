"""Gathering label-free evidence for a canary or guard window (controller.analysis.estimation has
the method): each arm's CBPE estimate from its logged confidences, and, where the requests'
text is kept, canary and champion re-scored on the same requests (agreement and a paired
estimate). `judge` turns it into a verdict under the policy's allowed evidence."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from controller.analysis.estimation import (
    Estimate,
    Judgement,
    Paired,
    estimate_accuracy,
    estimate_from_correctness,
    judge_difference,
    paired_estimate,
    paired_from_correctness,
)
from controller.policy import CanaryPolicy


@dataclass(frozen=True)
class LabelFreeEvidence:
    canary: Estimate | None
    champion: Estimate | None
    paired: Paired | None
    # which map gave P(correct): "features" (both arms by the sharper map) or "confidence"
    estimator: str = "confidence"

    def to_dict(self) -> dict[str, Any]:
        return {"canary_estimate": self.canary.to_dict() if self.canary else None,
                "champion_estimate": self.champion.to_dict() if self.champion else None,
                "paired": self.paired.to_dict() if self.paired else None,
                "estimator": self.estimator}

    @property
    def champion_accuracy(self) -> float | None:
        """The champion's estimated accuracy (the guard's baseline after a promotion)."""
        if self.paired is not None:
            return self.paired.champion_accuracy
        return self.champion.accuracy if self.champion is not None else None


class Scoring(Protocol):
    """What label-free judgement asks of the adapters it judges (the real one is
    controller.ops.label_free_scoring, part of LiveOperations)."""

    def predict(self, task: str, language: str, version: int,
                texts: list[str]) -> tuple[list[str], Any]:
        """Labels and top-class confidences of adapter `version` on `texts`."""

    def calibrator(self, task: str, language: str, version: int) -> Any:
        """The isotonic confidence -> P(correct) map of adapter `version`."""

    def feature_map(self, task: str, language: str, version: int) -> Any:
        """(FeatureCalibrator, k) of adapter `version`, or None when it has none."""

    def correctness(self, task: str, language: str, version: int,
                    texts: list[str]) -> tuple[list[str], Any] | None:
        """Labels and P(correct) per text by the sharper map, or None without one."""


def _labelled(rows: Sequence[dict[str, Any]]) -> int:
    return sum(1 for r in rows if r.get("feedback_label") is not None)


def _sharper(ops: Scoring, task: str, language: str, versions: Sequence[int],
             texts: Sequence[Any], policy: CanaryPolicy) -> dict[int, Any] | None:
    """Per version, (labels, P(correct)) on `texts` by the sharper map; None unless the
    policy asks for it, every text is kept and every version has a feature map (two arms
    judged by different maps would compare the maps, not the models)."""
    if policy.estimator != "features" or not texts or any(t is None for t in texts):
        return None
    if any(ops.feature_map(task, language, v) is None for v in versions):
        return None  # known before any request is scored
    out = {}
    for v in dict.fromkeys(versions):
        scored = ops.correctness(task, language, v, list(texts))
        if scored is None:
            return None
        out[v] = scored
    return out


def gather(ops: Scoring, task: str, language: str, canary: int, champion: int | None,
           events: Sequence[dict[str, Any]], policy: CanaryPolicy,
           allowed: Sequence[str]) -> LabelFreeEvidence | None:
    """None when labels suffice or label-free evidence is not allowed."""
    if champion is None or not ({"estimate", "agreement"} & set(allowed)):
        return None
    can_rows = [e for e in events if e.get("adapter_version") == canary]
    champ_rows = [e for e in events if e.get("adapter_version") == champion]
    need = policy.min_feedback_events
    if "labels" in allowed and _labelled(can_rows) >= need and _labelled(champ_rows) >= need:
        return None
    texts = [e.get("text") for e in events]
    sharper = _sharper(ops, task, language, [canary, champion], texts, policy)
    if sharper is not None:
        # every request re-scored by both arms: each arm's estimate on the requests it
        # served, and the paired estimate on all of them
        (lc, pc), (lh, ph) = sharper[canary], sharper[champion]
        served = [e.get("adapter_version") for e in events]
        mine_c = [p for p, v in zip(pc, served, strict=True) if v == canary]
        mine_h = [p for p, v in zip(ph, served, strict=True) if v == champion]
        return LabelFreeEvidence(
            estimate_from_correctness(mine_c) if mine_c else None,
            estimate_from_correctness(mine_h) if mine_h else None,
            paired_from_correctness(lc, pc, lh, ph), "features")
    cal_c, cal_h = (ops.calibrator(task, language, canary),
                    ops.calibrator(task, language, champion))
    est_c = estimate_accuracy(cal_c, [r["confidence"] for r in can_rows]) if can_rows else None
    est_h = (estimate_accuracy(cal_h, [r["confidence"] for r in champ_rows])
             if champ_rows else None)
    paired = None
    if texts and all(t is not None for t in texts):
        lc, cc = ops.predict(task, language, canary, texts)
        lh, ch = ops.predict(task, language, champion, texts)
        paired = paired_estimate(lc, cc, lh, ch, cal_c, cal_h)
    return LabelFreeEvidence(est_c, est_h, paired)


def judge(evidence: LabelFreeEvidence, policy: CanaryPolicy,
          allowed: Sequence[str]) -> Judgement:
    margin, alpha, need = policy.max_accuracy_drop, policy.alpha, policy.min_estimate_events
    paired = evidence.paired if evidence.paired and evidence.paired.n >= need else None
    if "agreement" in allowed and paired is not None:
        upper = paired.disagreement_upper(alpha)
        if upper <= margin:
            return Judgement("pass", f"canary and champion agree on {paired.agreement:.1%} of "
                             f"{paired.n} requests: disagreement <= {upper:.3f} bounds any "
                             f"accuracy drop below {margin}", "agreement")
    if "estimate" in allowed:
        if paired is not None:
            return judge_difference(paired.difference, paired.std_error,
                                    policy.estimate_tolerance, margin, alpha,
                                    f"paired estimate on {paired.n} requests")
        c, h = evidence.canary, evidence.champion
        if c is not None and h is not None and min(c.n, h.n) >= need:
            # two calibrations, each with its own doubt
            return judge_difference(c.accuracy - h.accuracy,
                                    math.hypot(c.std_error, h.std_error),
                                    policy.estimate_tolerance * math.sqrt(2), margin, alpha,
                                    f"estimates canary {c.accuracy:.3f} (n={c.n}) vs "
                                    f"champion {h.accuracy:.3f} (n={h.n})")
    return Judgement("inconclusive", f"label-free evidence ({', '.join(allowed)}) too thin: "
                     f"need {need} requests", "none")


def arm_estimate(ops: Scoring, task: str, language: str, version: int | None,
                 rows: Sequence[dict[str, Any]], policy: CanaryPolicy,
                 allowed: Sequence[str], estimator: str | None = None) -> Estimate | None:
    """CBPE estimate of one adapter on the events it served (the guard's label-free
    evidence); None when labels suffice or estimates may not decide.
    By the sharper map where the policy asks for it and the requests' text is kept, unless
    `estimator` (the map of the guard's baseline) is "confidence"; a "features" baseline
    with rows whose text was not kept falls back to the isotonic map, about a point apart
    (bench/results/label-free.md), well inside the guard's drop."""
    if (version is None or "estimate" not in allowed or not rows
            or ("labels" in allowed and _labelled(rows) >= policy.min_feedback_events)):
        return None
    sharper = (None if estimator == "confidence" else
               _sharper(ops, task, language, [version], [r.get("text") for r in rows], policy))
    if sharper is not None:
        return estimate_from_correctness(sharper[version][1])
    return estimate_accuracy(ops.calibrator(task, language, version),
                             [r["confidence"] for r in rows])
