"""The analysis tables: [drift] (per-language thresholds), [gates] and [canary]."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from controller.policy.fields import ALL_EVIDENCE, Evidence, Strict


# Per-language drift thresholds, read by controller.drift's signals: a pydantic model without
# the heavy signal libraries, so that validating a policy file (and starting the `xlt` CLI)
# never imports Evidently. The policy's [drift] table and each track's [tracks.drift] table
# are validated by it.
class DriftThresholds(BaseModel):
    """Thresholds of one language's check. Defaults were calibrated on the CLDR emoji data
    (stable traffic vs. script, orthography and label-mix shifts); the policy file may
    override any of them per language."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_events: int = Field(200, ge=1, description="fewer current events: insufficient_data")
    # a reference of a few dozen items is its own noise (hi-Latn's test split has 87 rows:
    # label JS distance 0.17 on stable traffic); build it from more data instead
    min_reference: int = Field(100, ge=1, description="smaller reference: insufficient_data")
    # measured on stable traffic (max over 9 languages, MiniLM and hashing embeddings):
    # embedding 1.18, descriptors 0.19, script_mix 0.04, prediction 0.09, confidence 0.30;
    # shifts with the variant reaching 60% of traffic: embedding 1.3-35, script_mix
    # 0.13-0.41, prediction (label mix) 0.24-0.25
    embedding: float = Field(2.0, gt=0, description="cosine distance / reference noise scale")
    descriptors: float = Field(0.25, gt=0, description="normed Wasserstein, any descriptor")
    script_mix: float = Field(0.06, gt=0, description="Jensen-Shannon distance, base 2")
    prediction: float = Field(0.2, gt=0, description="Jensen-Shannon distance, labels")
    confidence: float = Field(0.35, gt=0, description="normed Wasserstein, confidence")
    min_signals: int = Field(1, ge=1, description="drifted signals needed for 'drift'")
    disabled: tuple[str, ...] = Field((), description="signals not computed")

    def for_signal(self, name: str) -> float:
        return float(getattr(self, name))


DriftPolicy = DriftThresholds


class GatePolicy(Strict):
    min_accuracy: float = Field(0.45, ge=0, le=1)
    min_macro_f1: float = Field(0.30, ge=0, le=1)
    max_ece: float = Field(0.25, ge=0, le=1)
    # relative: candidate not worse than the champion by more than epsilon, judged on the
    # lower end of a paired bootstrap interval of (candidate - champion) accuracy
    relative_epsilon: float = Field(0.02, ge=0, le=1)
    bootstrap_samples: int = Field(1000, ge=100)
    bootstrap_confidence: float = Field(0.95, gt=0.5, lt=1)
    min_english_accuracy: float = Field(0.70, ge=0, le=1)  # forgetting
    fairness_floor: float = Field(0.40, ge=0, le=1)  # every affected controlled language


class CanaryPolicy(Strict):
    steps: list[float] = Field(default_factory=lambda: [10.0, 50.0, 100.0])
    interval_s: float = Field(600.0, gt=0)
    min_feedback_events: int = Field(30, ge=1)
    alpha: float = Field(0.05, gt=0, lt=1)
    max_accuracy_drop: float = Field(0.05, ge=0, le=1)
    failure_limit: int = Field(0, ge=0, description="failed analyses tolerated before abort")
    inconclusive_limit: int = Field(3, ge=0, description="inconclusive analyses before pause")
    # which evidence may decide a canary or guard verdict (per track: [tracks] evidence):
    # labels: feedback labels (two-proportion test); estimate: accuracy estimated from the
    # models' calibrated confidences (CBPE); agreement: canary and champion re-scored on
    # the same requests. Label-free evidence is used only when labels are too few.
    evidence: list[Evidence] = Field(default_factory=lambda: list(ALL_EVIDENCE))
    min_estimate_events: int = Field(50, ge=1, description="events per arm for an estimate")
    # calibration error allowed for on top of sampling error (the estimate's own doubt)
    estimate_tolerance: float = Field(0.03, ge=0, le=1)
    # each request's P(correct) where its text is kept: "features", the sharper map of
    # controller.analysis.estimation_features (margin, entropy, agreement with the adapter's nearest
    # training rows) where the adapter has one, else the isotonic map; "confidence", the
    # isotonic map of the top-class confidence alone (as logged), always
    estimator: Literal["features", "confidence"] = "features"

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[float]) -> list[float]:
        if not steps:
            raise ValueError("at least one canary step is needed")
        if any(not 0 < s <= 100 for s in steps):
            raise ValueError("each step is a traffic percentage in (0, 100]")
        if steps != sorted(steps) or len(set(steps)) != len(steps):
            raise ValueError("steps must increase")
        return steps
