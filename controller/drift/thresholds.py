"""Per-language drift thresholds: a pydantic model without the heavy signal libraries, so
that validating a policy file (and starting the `xlt` CLI) never imports Evidently."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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
