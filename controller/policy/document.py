"""The whole policy file: its top-level fields and tables, the per-track and per-base
lookups, and parsing a TOML file into it (a bad file refused with the field's path)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from controller.policy.analysis import CanaryPolicy, DriftPolicy, GatePolicy
from controller.policy.fields import Evidence, Strict, base_ref, canonical_languages
from controller.policy.jobs import JobsPolicy
from controller.policy.operations import AlertsPolicy, MetricsPolicy, ServePolicy
from controller.policy.tracks import TrackPolicy
from controller.policy.training import AttemptPolicy, TrainingPolicy, UpgradePolicy
from registry.errors import InvalidInput, UnsafeInput
from registry.jsonsafe import MAX_DEPTH, depth_exceeds
from registry.languages import canonical_language


class Policy(Strict):
    tracks: list[TrackPolicy] = Field(default_factory=list)
    # base encoder for controlled languages that have no track yet (the controller then
    # trains their first champion); None: such languages wait for a registered adapter
    base: str | None = None
    check_interval_s: float = Field(3600.0, gt=0)
    tick_interval_s: float = Field(30.0, gt=0)
    outbox_interval_s: float = Field(10.0, gt=0)
    # a leader silent this long (hung with its session alive) loses the lock to a standby
    # (controller.runtime.leader); well above the 1 s heartbeat and a tick's longest step
    leader_lease_s: float = Field(120.0, ge=5)
    cooldown_s: float = Field(6 * 3600.0, ge=0)
    guard_window_s: float = Field(3600.0, ge=0)
    guard_max_accuracy_drop: float = Field(0.05, ge=0, le=1)
    executor: Literal["inline", "subprocess", "ray"] = "inline"
    # languages whose raw text must not be kept: only descriptors and embeddings are stored
    no_text_languages: list[str] = Field(default_factory=list)
    drift: DriftPolicy = Field(default_factory=DriftPolicy)
    drift_window_events: int = Field(5000, ge=10, description="newest events a check reads")
    gates: GatePolicy = Field(default_factory=GatePolicy)
    # per base encoder, the [gates] fields that differ for candidates trained on it: a
    # stronger base earns higher floors (`[base_gates."me5-small@1"] min_accuracy = 0.6`)
    base_gates: dict[str, GatePolicy] = Field(default_factory=dict)
    canary: CanaryPolicy = Field(default_factory=CanaryPolicy)
    training: TrainingPolicy = Field(default_factory=TrainingPolicy)
    jobs: JobsPolicy = Field(default_factory=JobsPolicy)
    alerts: AlertsPolicy = Field(default_factory=AlertsPolicy)
    metrics: MetricsPolicy = Field(default_factory=MetricsPolicy)
    upgrade: UpgradePolicy | None = None
    attempts: AttemptPolicy = Field(default_factory=AttemptPolicy)
    serve: ServePolicy = Field(default_factory=ServePolicy)

    @field_validator("no_text_languages")
    @classmethod
    def _languages(cls, values: list[str]) -> list[str]:
        return canonical_languages(values)

    @field_validator("base")
    @classmethod
    def _base(cls, value: str | None) -> str | None:
        return None if value is None else base_ref(value)

    @field_validator("base_gates", mode="before")
    @classmethod
    def _base_gates(cls, value: Any, info: ValidationInfo) -> Any:
        """Each base's table overrides [gates] field by field (gates is validated first)."""
        gates = info.data.get("gates")
        if not isinstance(value, dict) or gates is None:
            return value  # a wrong type, or [gates] itself failed: pydantic reports it
        out = {}
        for base, table in value.items():
            base_ref(base)
            out[base] = ({**gates.model_dump(), **table} if isinstance(table, dict)
                         else table)
        return out

    def for_base(self, base: str | None) -> Policy:
        """This policy with [gates] as a candidate trained on `base` must pass them."""
        gates = self.base_gates.get(base or "")
        return self if gates is None else self.model_copy(update={"gates": gates})

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

    def upgrade_wanted(self, task: str, language: str) -> str | None:
        """The base the policy wants (task, language) on, if it asks for an upgrade."""
        up = self.upgrade
        if up is None or (up.languages and language not in up.languages):
            return None
        return up.base if any((t.task, t.language) == (task, language)
                              for t in self.tracks) else None

    def drift_for(self, task: str, language: str) -> DriftPolicy:
        for t in self.tracks:
            if (t.task, t.language) == (task, language) and t.drift is not None:
                return t.drift
        return self.drift

    def evidence_for(self, task: str, language: str) -> list[Evidence]:
        for t in self.tracks:
            if (t.task, t.language) == (task, language) and t.evidence is not None:
                return t.evidence
        return self.canary.evidence

    def calibration_folds_for(self, task: str, language: str) -> int:
        for t in self.tracks:
            if (t.task, t.language) == (task, language) and t.calibration_folds is not None:
                return t.calibration_folds
        return self.training.calibration_folds

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


MAX_POLICY_BYTES = 1_000_000  # a policy is a few kB; more is not a policy


def parse_policy(text: str, source: str = "policy") -> Policy:
    if len(text) > MAX_POLICY_BYTES:
        raise UnsafeInput(f"{source} is {len(text)} characters, more than the "
                          f"{MAX_POLICY_BYTES} a policy may have", "give the policy file")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{source} is not valid TOML: {exc}", "fix the syntax") from exc
    except RecursionError:  # tomllib recurses per nested inline array/table
        raise UnsafeInput(f"{source} nests too deep to be a policy",
                          "write tables, not deeply nested inline arrays") from None
    if depth_exceeds(data, MAX_DEPTH):
        raise UnsafeInput(f"{source} nests deeper than {MAX_DEPTH} levels",
                          "write tables, not deeply nested inline arrays")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(_describe(exc, source), "fix that field (see docs/policy.md)") from exc


def load_policy(path: str | Path | None) -> Policy:
    if path is None:
        return Policy()
    file = Path(path)
    if not file.is_file():
        raise InvalidInput(f"policy file {file} does not exist", "check the --policy path")
    return parse_policy(file.read_text(encoding="utf-8"), str(file))
