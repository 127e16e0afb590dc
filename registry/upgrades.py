"""A base upgrade's per-track state, typed (like the status struct of an Argo Rollout):
what the controller reads to decide its next step and what `xlt encoder impact` shows.

Statuses, in order:  pending -> training -> gating -> canary -> done
                      any active one -> failed (candidate rejected, canary aborted,
                      training failed); done -> rolled_back (a rollback to the old base)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class UpgradeStatus(StrEnum):
    PENDING = "pending"
    TRAINING = "training"
    GATING = "gating"
    CANARY = "canary"
    DONE = "done"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"

    @property
    def active(self) -> bool:
        return self in ACTIVE


ACTIVE = frozenset({UpgradeStatus.PENDING, UpgradeStatus.TRAINING, UpgradeStatus.GATING,
                    UpgradeStatus.CANARY})
# which status each controller step may move an upgrade to, from which
NEXT = {
    UpgradeStatus.TRAINING: {UpgradeStatus.PENDING, UpgradeStatus.TRAINING},
    UpgradeStatus.GATING: {UpgradeStatus.TRAINING},
    UpgradeStatus.CANARY: {UpgradeStatus.GATING},
    UpgradeStatus.DONE: {UpgradeStatus.GATING, UpgradeStatus.CANARY},
    UpgradeStatus.FAILED: set(ACTIVE),
    UpgradeStatus.ROLLED_BACK: {UpgradeStatus.DONE},
}


@dataclass(frozen=True)
class UpgradeState:
    """One track's upgrade: from which base to which, where it stands, and why."""

    id: int
    task: str
    language: str
    from_base: str
    to_base: str
    to_fingerprint: str
    status: UpgradeStatus
    candidate: int | None  # the candidate adapter's version on the target base
    reason: str | None
    requested_at: datetime
    requested_by: str
    updated_at: datetime

    @property
    def active(self) -> bool:
        return self.status.active

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = str(self.status)
        out["requested_at"] = self.requested_at.isoformat()
        out["updated_at"] = self.updated_at.isoformat()
        return out
