"""One [[tracks]] entry: a (task, language) the controller controls, with its overrides."""

from __future__ import annotations

from pydantic import Field, field_validator

from controller.policy.analysis import DriftPolicy
from controller.policy.fields import Evidence, Strict, check_folds, field_error
from registry.names import language_tag, task_name


class TrackPolicy(Strict):
    task: str
    language: str
    drift: DriftPolicy | None = None  # per-language thresholds
    fairness_floor: float | None = Field(None, ge=0, le=1)
    evidence: list[Evidence] | None = None  # which evidence may decide its canary/guard
    # [training] calibration_folds for this track alone: a language judged without labels
    # gets cross-fitted maps (within 3 points in 96-98% of windows against 90-92% from dev;
    # docs/limits.md) without every language paying for the folds
    calibration_folds: int | None = Field(None, ge=0)

    @field_validator("calibration_folds")
    @classmethod
    def _folds(cls, folds: int | None) -> int | None:
        return None if folds is None else check_folds(folds)

    @field_validator("task")
    @classmethod
    def _task(cls, value: str) -> str:
        return field_error(task_name, value)

    @field_validator("language")
    @classmethod
    def _language(cls, value: str) -> str:
        return field_error(language_tag, value)
