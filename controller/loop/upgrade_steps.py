"""The reconciler's part of a base upgrade (DESIGN.md, base upgrades).

A track with an active upgrade to base B goes through the ordinary loop on B: from STEADY
a training job on B (a fresh adapter: the champion's LoRA belongs to the old base and
cannot be continued; the teacher is B with its own English head; the same data languages
as the champion, so the candidate serves the same traffic), then the usual gates against
the champion (each evaluated on its own base, on the same items), canary (champion on the
old base, candidate on B) and promote, which moves base and champion in one transaction.
The upgrade row's status moves in the same transaction as the track's phase, so a killed
controller resumes where the database says.
"""

from __future__ import annotations

from typing import Any

from controller.loop.context import StepContext
from controller.loop.state import Phase, TrackState, training_params
from registry import queries
from registry.commands import deployment, records
from registry.errors import XltError
from registry.uow import UnitOfWork
from registry.upgrades import UpgradeState, UpgradeStatus

# from STEADY, these statuses (re)start the upgrade's training: a TRAINING or GATING one
# can be seen in STEADY only when a person ended the loop by hand in between
RESTARTABLE = (UpgradeStatus.PENDING, UpgradeStatus.TRAINING, UpgradeStatus.GATING)


def file_policy_upgrades(ctx: StepContext, rows: dict[tuple[str, str], dict[str, Any]]
                         ) -> list[str]:
    """The policy's [upgrade]: request it for each controlled track not yet on the base and
    never asked to move there (a failed upgrade is not retried by itself; a person
    re-requests it with `xlt encoder upgrade`)."""
    wanted = {(tp.task, tp.language): ctx.policy.upgrade_wanted(tp.task, tp.language)
              for tp in ctx.policy.tracks}
    wanted = {k: v for k, v in wanted.items() if v and k in rows and rows[k]["base"] != v}
    if not wanted:
        return []
    lines = []
    for base in sorted(set(wanted.values())):
        try:
            asked = {(u.task, u.language) for u in ctx.reg.query(queries.upgrades, base)}
        except XltError as exc:
            lines.append(f"upgrade to {base}: refused: {exc}")
            continue
        for (task, language), want in sorted(wanted.items()):
            if want != base or (task, language) in asked:
                continue
            ctx.reg.actor = ctx.actor
            try:
                ctx.reg.request_upgrade(base, task, [language],
                                        f"policy: move {task}/{language} to {base}")
                lines.append(f"{task}/{language}: upgrade to {base} requested (policy)")
            except XltError as exc:
                lines.append(f"{task}/{language}: upgrade to {base} refused: {exc}")
    return lines


def active_upgrades(ctx: StepContext) -> dict[tuple[str, str], UpgradeState]:
    return {(u.task, u.language): u for u in ctx.reg.query(queries.active_upgrades)}


def start_upgrade_training(ctx: StepContext, t: TrackState, now: float) -> str:
    up = t.upgrade
    assert up is not None, "start_upgrade_training needs an active upgrade"
    data_languages = [t.language]
    if t.champion is not None:
        row = ctx.reg.query(queries.show_adapter, t.task, t.language, t.champion)
        data_languages = list(row["hyperparams"].get("data_languages") or data_languages)
    params = training_params(ctx.policy, t, None, {
        "base": up.to_base, "continue_from": None, "upgrade_id": up.id,
        "data_languages": data_languages})
    reason = f"upgrade to {up.to_base}: train a candidate on it"
    with ctx.guarded(t) as uow:
        job = records.create_job(uow, "train", params, ctx.policy.executor, t.task,
                                 t.language)
        status = t.status.steady(job_id=job.id, attempt=1, last_check_at=now,
                                 upgrade_id=up.id)
        ctx.phase(uow, t, Phase.RETRAINING, status, reason, t.revision)
        deployment.advance_upgrade(uow, t.task, t.language, UpgradeStatus.TRAINING,
                                   None, f"training job {job.id}")
    return f"{reason} (job {job.id})"


def upgrade_trained(uow: UnitOfWork, t: TrackState, version: int) -> None:
    if t.on_upgrade:
        assert t.upgrade is not None
        deployment.advance_upgrade(uow, t.task, t.language, UpgradeStatus.GATING, version,
                                   f"candidate v{version} on {t.upgrade.to_base}")


def upgrade_failed(uow: UnitOfWork, t: TrackState, reason: str) -> str:
    if not t.on_upgrade:
        return ""
    assert t.upgrade is not None
    deployment.advance_upgrade(uow, t.task, t.language, UpgradeStatus.FAILED, None, reason)
    return f"; upgrade to {t.upgrade.to_base} failed, the track stays on its base"
