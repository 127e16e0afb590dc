"""Jobs of every kind (train, gate, drift), as the tick sees them: launched and polled,
never awaited, so a tick's length does not depend on how much model work is in flight.

`follow` is the lifecycle every kind shares: a queued job waits for a slot; a running one
is polled through the executor (running: nothing to do; over its timeout or lost: queued
again, or failed once its attempts are spent); an executor that hands the outcome back
(Ray) has it written on the job row here. What a finished job means for its track is the
caller's (training_steps, gate_steps, drift_steps), applied in one guarded transaction.

`dispatch` is the launch pass after every track's step: per kind, queued jobs that their
track still waits on are launched fairly (controller.executors.job_queue) up to the kind's
slots, and each handle is recorded."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, select

from controller.executors import job_queue
from controller.executors.base import Progress
from controller.loop import failpoints
from controller.loop.context import StepContext
from controller.loop.phase_status import PhaseStatus
from controller.loop.state import Phase
from controller.policy import Policy
from registry.commands import records
from registry.errors import StaleRevision, XltError
from registry.jobs import JobKind, JobStatus, JobView
from registry.schema import Job, Track

log = logging.getLogger("xlt.controller")

LABEL = {JobKind.TRAIN: "training", JobKind.GATE: "gate", JobKind.DRIFT: "drift check"}
# the phase a track waits in for a job of each kind, and the phase-data field naming it
WAITS_IN = {JobKind.TRAIN: (Phase.RETRAINING, "job_id"),
            JobKind.GATE: (Phase.GATING, "gate_job_id"),
            JobKind.DRIFT: (Phase.STEADY, "drift_job_id")}


@dataclass(frozen=True)
class KindLimits:
    max_concurrent: int
    per_gpu: int
    max_attempts: int
    timeout_s: float
    num_gpus: float
    gpus: int | None  # GPUs to use; None: all the executor sees


def limits(policy: Policy, kind: str) -> KindLimits:
    if kind == JobKind.TRAIN:
        t = policy.training
        return KindLimits(t.max_concurrent, t.per_gpu, t.max_attempts, t.timeout_s,
                          t.num_gpus, t.gpus)
    j = policy.jobs.gate if kind == JobKind.GATE else policy.jobs.drift
    return KindLimits(j.max_concurrent, j.per_gpu, j.max_attempts, j.timeout_s, j.num_gpus,
                      policy.training.gpus)


def read_job(ctx: StepContext, job_id: int) -> JobView:
    with ctx.reg.reading() as s:
        row = s.get(Job, job_id)
        assert row is not None, f"phase points at a missing job {job_id}"
        return JobView.of(row)


def prefetch_jobs(ctx: StepContext, rows: Iterable[dict[str, Any]]) -> None:
    """The jobs tracks wait on (trainings, gates, drift checks), in one query for the
    whole tick."""
    ids = []
    for r in rows:
        field = _WAITS.get(r["phase"])
        if field is not None:
            status = PhaseStatus.from_dict(r["phase_data"], strict=False)
            if (job := getattr(status, field)) is not None:
                ids.append(job)
    ctx.prefetched = {}
    if ids:
        with ctx.reg.reading() as s:
            ctx.prefetched = {j.id: JobView.of(j)
                              for j in s.scalars(select(Job).where(Job.id.in_(ids)))}


_WAITS: dict[str, str] = dict(WAITS_IN.values())  # phase -> phase-data field


def waited_job(ctx: StepContext, job_id: int) -> JobView:
    """The job a track's phase names: read this tick by prefetch_jobs, else now."""
    return ctx.prefetched.pop(job_id, None) or read_job(ctx, job_id)


def follow(ctx: StepContext, job: JobView) -> JobView | str:
    """The job once finished (its outcome on the row), or a line saying where it stands."""
    label = LABEL.get(JobKind(job.kind), job.kind)
    if job.status.finished:
        return job
    if job.status == JobStatus.QUEUED:
        return f"{label} job {job.id} queued for a {job.kind} slot"
    poll = ctx.executor.poll(job)
    if poll.progress == Progress.RUNNING:
        ran = job.running_for()
        if ran is not None and ran > limits(ctx.policy, job.kind).timeout_s:
            return lost(ctx, job, f"timed out after {ran:.0f} s")
        return f"{label} job {job.id} running ({job.handle})"
    if poll.result is not None or poll.error is not None:  # handed back (Ray)
        status = "succeeded" if poll.result is not None else "failed"
        try:
            with ctx.uow() as uow:
                records.update_job(uow, job.id, status, result=poll.result,
                                   error=poll.error, worker=job.handle)
        except StaleRevision:
            pass  # launched again meanwhile: the row says what now
        failpoints.after_commit()
        return follow(ctx, read_job(ctx, job.id))
    again = read_job(ctx, job.id)  # the worker may have written its outcome meanwhile
    if again.status != JobStatus.RUNNING or again.handle != job.handle:
        return follow(ctx, again)
    return lost(ctx, again)


def lost(ctx: StepContext, job: JobView, why: str = "lost") -> str:
    """The worker is gone and never wrote an outcome (a killed controller or worker), or
    it overran its timeout: run the job again until its attempts are spent (a rerun of a
    training reuses the adapter a killed one registered; gate and drift jobs only read)."""
    label = LABEL.get(JobKind(job.kind), job.kind)
    if job.attempts < limits(ctx.policy, job.kind).max_attempts:
        with ctx.uow() as uow:
            records.update_job(uow, job.id, "queued",
                               error=f"worker {job.handle} {why}; launched again")
        failpoints.after_commit()
        return f"{label} job {job.id}: worker {job.handle} {why}, queued again"
    with ctx.uow() as uow:
        records.update_job(uow, job.id, "failed",
                           error=f"worker {why} on attempt {job.attempts} of {job.attempts}")
    failpoints.after_commit()
    return f"{label} job {job.id}: worker {why} on its last attempt: failed"


# -- the launch pass -------------------------------------------------------------------
def dispatch(ctx: StepContext, kinds: tuple[str, ...] = tuple(JobKind)) -> list[str]:
    """Launch queued jobs, per kind fairly, up to each kind's slots; returns what it did."""
    with ctx.reg.reading() as s:
        rows = s.execute(
            select(Job, Track.phase, Track.phase_data)
            .join(Track, and_(Track.task == Job.task, Track.language == Job.language))
            .where(Job.kind.in_(kinds), Job.status.in_(("queued", "running")))).all()
        jobs = [(JobView.of(j), phase, PhaseStatus.from_dict(data, strict=False))
                for j, phase, data in rows]
    lines: list[str] = []
    all_running = [j for j, _, _ in jobs if j.status == JobStatus.RUNNING]
    for kind in kinds:
        running = [j for j in all_running if j.kind == kind]
        phase, field = WAITS_IN[JobKind(kind)]
        waited = {j.id for j, ph, status in jobs if j.kind == kind and ph == phase
                  and getattr(status, field) == j.id}
        # only the job its track waits on (a training a person's abort left behind stays
        # queued); a gate or drift job its track moved past (a retrain started meanwhile)
        # would only compute what nobody reads: it is failed as superseded
        queued = [j for j, _, _ in jobs if j.kind == kind and j.status == JobStatus.QUEUED
                  and j.id in waited]
        if kind != JobKind.TRAIN:
            lines += [_supersede(ctx, j) for j, _, _ in jobs if j.kind == kind
                      and j.status == JobStatus.QUEUED and j.id not in waited]
        if not queued:
            continue
        lim = limits(ctx.policy, kind)
        gpus = 0
        if lim.num_gpus > 0:
            gpus = lim.gpus if lim.gpus is not None else ctx.executor.gpu_count()
        slots = job_queue.Slots(lim.max_concurrent, lim.per_gpu, gpus)
        # a GPU's load counts every kind's jobs on it; the slots count this kind's
        on_gpus = [j for j in all_running if j.kind != kind and j.device]
        launched = [_launch(ctx, launch)
                    for launch in job_queue.plan(queued, running, slots, on_gpus)]
        lines += launched
        waiting = len(queued) - len(launched)
        if waiting > 0:
            lines.append(f"{waiting} {LABEL[JobKind(kind)]} job(s) wait for a slot "
                         f"({len(running) + len(launched)} running)")
    return lines


def _supersede(ctx: StepContext, job: JobView) -> str:
    with ctx.uow() as uow:
        row = uow.session.get(Job, job.id, with_for_update=True)
        if row is None or row.status != JobStatus.QUEUED:
            return f"{job.task}/{job.language}: {job.kind} job {job.id} moved on meanwhile"
        records.update_job(uow, job.id, "failed",
                           error="superseded: its track no longer waits on it")
    failpoints.after_commit()
    return f"{job.task}/{job.language}: {job.kind} job {job.id} superseded (not run)"


def _launch(ctx: StepContext, launch: job_queue.Launch) -> str:
    job = launch.job
    label = LABEL.get(JobKind(job.kind), job.kind)
    device = launch.device or job.params.get("device")
    try:
        handle = ctx.executor.launch(job, launch.device)
    except Exception as exc:  # e.g. a Ray cluster that cannot be reached: next tick
        log.warning("launching %s job %s failed: %s", job.kind, job.id, exc)
        return f"{job.task}/{job.language}: launching job {job.id} failed: {exc}"
    try:
        with ctx.uow() as uow:
            records.launch_job(uow, job.id, handle, device)
    except XltError as exc:  # launched elsewhere meanwhile; ours finds no claim, exits
        return f"{job.task}/{job.language}: job {job.id} not launched: {exc}"
    failpoints.after_commit()
    return (f"{job.task}/{job.language}: {label} job {job.id} launched "
            f"({ctx.executor.name}, {handle}{', ' + device if device else ''})")
