"""The reconciler's RETRAINING steps and the launch pass: trainings are launched and
polled, never awaited, so a tick's length does not depend on how many tracks train.

Per track in RETRAINING (its phase data names the job): a queued job waits for a slot; a
running one is polled through the executor (running: nothing to do; lost: queued again,
or failed once its attempts are spent); a finished one moves the track to GATING or to a
retry. After every track's step the launch pass (`dispatch_training`) launches queued
jobs, fairly (controller.executors.job_queue), up to the policy's slots, and records each handle.
Mixed into controller.loop.reconciler.Reconciler."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, select

from controller.executors import job_queue
from controller.executors.base import Poll, Progress
from controller.loop import failpoints
from controller.loop.phase_status import PhaseStatus
from registry.commands import records
from registry.errors import XltError
from registry.jobs import JobStatus, JobView
from registry.schema import Job, Track

if TYPE_CHECKING:
    from controller.loop.reconciler import TrackState

log = logging.getLogger("xlt.controller")
RETRAINING, GATING = "RETRAINING", "GATING"


class TrainingSteps:
    # provided by the Reconciler
    reg: Any
    policy: Any
    executor: Any
    _guarded: Any
    _uow: Any
    _phase: Any
    _to_steady: Any
    upgrade_trained: Any
    upgrade_failed: Any

    _prefetched: dict[int, JobView]

    def prefetch_jobs(self, rows: Any) -> None:
        """The jobs RETRAINING tracks wait on, in one query for the whole tick."""
        ids = [job for r in rows if r["phase"] == RETRAINING
               and (job := PhaseStatus.from_dict(r["phase_data"], strict=False).job_id)
               is not None]
        self._prefetched = {}
        if ids:
            with self.reg.reading() as s:
                self._prefetched = {j.id: JobView.of(j)
                                    for j in s.scalars(select(Job).where(Job.id.in_(ids)))}

    def _job(self, job_id: int) -> JobView:
        with self.reg.reading() as s:
            row = s.get(Job, job_id)
            assert row is not None, f"phase points at a missing job {job_id}"
            return JobView.of(row)

    # -- RETRAINING --------------------------------------------------------------------
    def _retraining(self, t: TrackState, tp: Any, job: JobView | None = None) -> str:
        job_id = t.status.job_id
        if job_id is None:
            raise ValueError("a RETRAINING track's phase data names no job")
        job = job or getattr(self, "_prefetched", {}).pop(job_id, None) or self._job(job_id)
        if job.status == JobStatus.SUCCEEDED:
            return self._trained(t, int((job.result or {})["version"]))
        if job.status == JobStatus.FAILED:
            return self._train_failed(t, job.params, job.error or "unknown error")
        if job.status == JobStatus.QUEUED:
            return f"training job {job.id} queued for a training slot"
        poll: Poll = self.executor.poll(job)
        if poll.progress == Progress.RUNNING:
            ran = job.running_for()
            if ran is not None and ran > self.policy.training.timeout_s:
                return self._lost(t, job, f"timed out after {ran:.0f} s")
            return f"training job {job.id} running ({job.handle})"
        if poll.result is not None:  # an executor that hands the outcome back (Ray)
            return self._record_trained(t, job, poll.result)
        if poll.error is not None:
            with self._uow() as uow:
                records.update_job(uow, job.id, "failed", error=poll.error)
            failpoints.after_commit()
            return f"training job {job.id} failed: {poll.error}"
        again = self._job(job.id)  # the worker may have written its outcome meanwhile
        if again.status != JobStatus.RUNNING or again.handle != job.handle:
            return self._retraining(t, tp, again)
        return self._lost(t, again)

    def _lost(self, t: TrackState, job: JobView, why: str = "lost") -> str:
        """The worker is gone and never wrote an outcome (a killed controller or worker),
        or it overran the policy's timeout: run the job again (the job id travels with its
        adapter, so a rerun after the adapter was registered reuses it) until its attempts
        are spent."""
        if job.attempts < self.policy.training.max_attempts:
            with self._uow() as uow:
                records.update_job(uow, job.id, "queued",
                                   error=f"worker {job.handle} {why}; launched again")
            failpoints.after_commit()
            return f"training job {job.id}: worker {job.handle} {why}, queued again"
        with self._uow() as uow:
            records.update_job(uow, job.id, "failed",
                               error=f"worker {why} on attempt {job.attempts} of "
                                     f"{job.attempts}")
        failpoints.after_commit()
        return f"training job {job.id}: worker {why} on its last attempt: failed"

    def _record_trained(self, t: TrackState, job: JobView, result: dict[str, Any]) -> str:
        version = int(result["version"])
        with self._guarded(t) as uow:
            records.update_job(uow, job.id, "succeeded", result=result)
            self._phase(uow, t, GATING, t.status.but(candidate=version),
                        f"trained v{version}", t.revision)
            self.upgrade_trained(uow, t, version)
        return f"trained candidate v{version}"

    def _trained(self, t: TrackState, version: int) -> str:
        with self._guarded(t) as uow:
            self._phase(uow, t, GATING, t.status.but(candidate=version),
                        f"trained v{version}", t.revision)
            self.upgrade_trained(uow, t, version)
        return f"candidate v{version} to gates"

    def _train_failed(self, t: TrackState, params: dict[str, Any], error: str) -> str:
        attempt = t.status.attempt or 1
        if attempt < self.policy.training.max_attempts:
            with self._guarded(t) as uow:
                job = records.create_job(uow, "train", params, self.policy.executor, t.task,
                                         t.language)
                self._phase(uow, t, RETRAINING,
                            t.status.but(job_id=job.id, attempt=attempt + 1),
                            f"retry after: {error}", t.revision)
            return f"retrying training (attempt {attempt + 1})"
        with self._guarded(t) as uow:
            note = self.upgrade_failed(uow, t, f"training failed: {error}")
            self._to_steady(t, "training failed", cooldown=True, expected=t.revision, uow=uow,
                            alert=f"training failed after {attempt} attempts: {error}{note}",
                            alert_kind="training_failed")
        return "training failed: back to STEADY" + note

    # -- the launch pass ---------------------------------------------------------------
    def dispatch_training(self) -> list[str]:
        """Launch queued trainings, fairly, up to the policy's slots; returns what it did."""
        with self.reg.reading() as s:
            rows = s.execute(
                select(Job, Track.phase, Track.phase_data)
                .join(Track, and_(Track.task == Job.task, Track.language == Job.language))
                .where(Job.kind == "train", Job.status.in_(("queued", "running")))).all()
            jobs = [(JobView.of(j), phase, PhaseStatus.from_dict(data, strict=False))
                    for j, phase, data in rows]
        running = [j for j, _, _ in jobs if j.status == JobStatus.RUNNING]
        # only the job its track waits on (a job a person's abort left behind stays queued)
        queued = [j for j, phase, status in jobs if j.status == JobStatus.QUEUED
                  and phase == RETRAINING and status.job_id == j.id]
        training = self.policy.training
        gpus = 0
        if training.num_gpus > 0:
            gpus = training.gpus if training.gpus is not None else self.executor.gpu_count()
        slots = job_queue.Slots(training.max_concurrent, training.per_gpu, gpus)
        lines = [self._launch(launch) for launch in job_queue.plan(queued, running, slots)]
        waiting = len(queued) - len(lines)
        if waiting > 0:
            lines.append(f"{waiting} training job(s) wait for a slot "
                         f"({len(running) + len(lines)} running)")
        return lines

    def _launch(self, launch: job_queue.Launch) -> str:
        job = launch.job
        device = launch.device or job.params.get("device")
        try:
            handle = self.executor.launch(job, launch.device)
        except Exception as exc:  # e.g. a Ray cluster that cannot be reached: next tick
            log.warning("launching training job %s failed: %s", job.id, exc)
            return f"{job.task}/{job.language}: launching job {job.id} failed: {exc}"
        try:
            with self._uow() as uow:
                records.launch_job(uow, job.id, handle, device)
        except XltError as exc:  # launched elsewhere meanwhile; ours finds no claim, exits
            return f"{job.task}/{job.language}: job {job.id} not launched: {exc}"
        failpoints.after_commit()
        return (f"{job.task}/{job.language}: training job {job.id} launched "
                f"({self.executor.name}, {handle}{', ' + device if device else ''})")
