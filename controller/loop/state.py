"""The typed state a step reads: the track's phase (one StrEnum, as Argo Rollouts' typed
RolloutPhase), its row as the reconciler sees it, and the parameters of a training job."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from controller.loop.phase_status import PhaseStatus
from controller.policy import Policy
from registry.upgrades import UpgradeState


class Phase(StrEnum):
    """tracks.phase. A StrEnum, so a stored value compares equal to its member."""

    STEADY = "STEADY"
    RETRAINING = "RETRAINING"
    GATING = "GATING"
    CANARY = "CANARY"
    PAUSED = "PAUSED"


@dataclass(frozen=True)
class TrackState:
    task: str
    language: str
    phase: str
    status: PhaseStatus
    revision: int
    champion: int | None
    canary: int | None
    canary_weight: float
    upgrade: UpgradeState | None = None  # the track's active base upgrade, if any
    base: str | None = None

    @classmethod
    def from_status(cls, row: dict[str, Any], upgrade: UpgradeState | None = None
                    ) -> TrackState:
        return cls(row["task"], row["language"], row["phase"],
                   PhaseStatus.from_dict(row["phase_data"]),
                   row["revision"], row["champion"], row["canary"], row["canary_weight"],
                   upgrade, row.get("base"))

    @property
    def on_upgrade(self) -> bool:
        """Whether the track's current training job is its active upgrade's."""
        return self.upgrade is not None and self.status.upgrade_id == self.upgrade.id


def training_params(policy: Policy, t: TrackState, report_id: int | None,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"task": t.task, "language": t.language, "epochs": policy.training.epochs,
            "teacher": policy.training.teacher, "seed": policy.training.seed,
            "device": policy.training.device, "continue_from": t.champion,
            "top_blocks": policy.training.top_blocks,
            "calibration_folds": policy.calibration_folds_for(t.task, t.language),
            "lexical": policy.training.lexical,
            "lexical_refit": policy.training.lexical_refit,
            "max_rows_per_epoch": policy.training.max_rows_per_epoch,
            "drift_report_id": report_id, **(extra or {})}
