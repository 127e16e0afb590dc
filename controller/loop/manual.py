"""A person's commands that act on the controller's bookkeeping (not a registry change)."""

from __future__ import annotations

from controller.loop.state import Phase, TrackState
from registry.service import Registry


def resume_canary(registry: Registry, task: str, language: str, now: float) -> None:
    """`xlt canary resume`: a paused track continues its current step with a fresh window."""
    from registry.errors import InvalidTransition

    rows = registry.status(task, language)
    if not rows or rows[0]["phase"] != Phase.PAUSED:
        raise InvalidTransition(f"track {task}/{language} is not paused",
                                "only a PAUSED canary can be resumed")
    t = TrackState.from_status(rows[0])
    status = t.status.but(inconclusive=0, step_started_at=now, last_analysis_at=now)
    registry.set_phase(task, language, Phase.CANARY, status.to_dict(), t.revision,
                       "resumed by hand")
