"""The policy file (TOML): what the controller controls and every threshold it acts on.

Every field has a default, so an empty file is a valid policy. A bad file is refused with
the field's path and the reason (pydantic's validation, reworded into one line).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from controller.drift.signals import DriftThresholds
from registry.errors import InvalidInput
from registry.languages import canonical_language


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# the drift thresholds are those of controller.drift (calibrated on the CLDR data); the
# policy's [drift] table and each track's [tracks.drift] table are validated by that model
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


class TrainingPolicy(Strict):
    epochs: int = Field(6, ge=1)
    teacher: str | None = None  # None: English, or the nearest registered language by URIEL
    max_attempts: int = Field(2, ge=1)
    seed: int = 0
    device: str = "auto"


class TrackPolicy(Strict):
    task: str
    language: str
    drift: DriftPolicy | None = None  # per-language thresholds
    fairness_floor: float | None = Field(None, ge=0, le=1)

    @field_validator("language")
    @classmethod
    def _language(cls, value: str) -> str:
        try:
            return canonical_language(value)
        except InvalidInput as exc:  # pydantic reports ValueError with the field's path
            raise ValueError(str(exc)) from exc


class Policy(Strict):
    tracks: list[TrackPolicy] = Field(default_factory=list)
    # base encoder for controlled languages that have no track yet (the controller then
    # trains their first champion); None: such languages wait for a registered adapter
    base: str | None = None
    check_interval_s: float = Field(3600.0, gt=0)
    tick_interval_s: float = Field(30.0, gt=0)
    outbox_interval_s: float = Field(10.0, gt=0)
    cooldown_s: float = Field(6 * 3600.0, ge=0)
    guard_window_s: float = Field(3600.0, ge=0)
    guard_max_accuracy_drop: float = Field(0.05, ge=0, le=1)
    executor: Literal["inline", "subprocess"] = "inline"
    # languages whose raw text must not be kept: only descriptors and embeddings are stored
    no_text_languages: list[str] = Field(default_factory=list)
    drift: DriftPolicy = Field(default_factory=DriftPolicy)
    drift_window_events: int = Field(5000, ge=10, description="newest events a check reads")
    gates: GatePolicy = Field(default_factory=GatePolicy)
    canary: CanaryPolicy = Field(default_factory=CanaryPolicy)
    training: TrainingPolicy = Field(default_factory=TrainingPolicy)

    @field_validator("no_text_languages")
    @classmethod
    def _languages(cls, values: list[str]) -> list[str]:
        try:
            return [canonical_language(v) for v in values]
        except InvalidInput as exc:
            raise ValueError(str(exc)) from exc

    def keeps_text(self, language: str) -> bool:
        return canonical_language(language) not in self.no_text_languages

    @model_validator(mode="after")
    def _unique_tracks(self) -> Policy:
        seen = set()
        for t in self.tracks:
            if (t.task, t.language) in seen:
                raise ValueError(f"track {t.task}/{t.language} is listed twice")
            seen.add((t.task, t.language))
        return self

    def drift_for(self, task: str, language: str) -> DriftPolicy:
        for t in self.tracks:
            if (t.task, t.language) == (task, language) and t.drift is not None:
                return t.drift
        return self.drift

    def fairness_floor_for(self, task: str, language: str) -> float:
        for t in self.tracks:
            if (t.task, t.language) == (task, language) and t.fairness_floor is not None:
                return t.fairness_floor
        return self.gates.fairness_floor


def _describe(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{source}: field {where}: {first['msg']}{more}"


def parse_policy(text: str, source: str = "policy") -> Policy:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{source} is not valid TOML: {exc}", "fix the syntax") from exc
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(_describe(exc, source), "fix that field (see README, Policy)") from exc


def load_policy(path: str | Path | None) -> Policy:
    if path is None:
        return Policy()
    file = Path(path)
    if not file.is_file():
        raise InvalidInput(f"policy file {file} does not exist", "check the --policy path")
    return parse_policy(file.read_text(encoding="utf-8"), str(file))
