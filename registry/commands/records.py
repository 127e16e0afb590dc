"""Records of the controller's work: jobs, gate results, canary analyses, drift reports,
reference-cache entries, and the production traffic log. Audit-worthy ones append an event."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, select

from registry.commands.lookups import adapter_by_version
from registry.errors import (
    InvalidInput,
    InvalidName,
    InvalidTransition,
    NotFound,
    StaleRevision,
)
from registry.languages import canonical_language
from registry.names import language_tag, task_name
from registry.schema import (
    CanaryAnalysis,
    DriftReport,
    GateResult,
    InferenceEvent,
    Job,
    ReferenceCache,
    Track,
    utcnow,
)
from registry.uow import UnitOfWork

JOB_STATUSES = ("queued", "running", "succeeded", "failed")
VERDICTS = ("drift", "stable", "insufficient_data")
CANARY_VERDICTS = ("pass", "fail", "inconclusive")


def create_job(uow: UnitOfWork, kind: str, params: dict[str, Any], executor: str,
               task: str | None = None, language: str | None = None) -> Job:
    job = Job(kind=kind, params=params, executor=executor, status="queued", attempts=0,
              task=task_name(task) if task is not None else None,
              language=language_tag(language) if language else None)
    uow.session.add(job)
    uow.session.flush()
    uow.event("job_created", task=task, language=job.language,
              after={"job_id": job.id, "kind": kind, "params": params, "executor": executor})
    return job


def launch_job(uow: UnitOfWork, job_id: int, handle: str, device: str | None) -> Job:
    """A queued job was launched: record where (the precondition keeps a job from being
    launched twice: a second launch finds it running and changes nothing)."""
    job = uow.session.get(Job, job_id, with_for_update=True)
    if job is None:
        raise NotFound(f"no job {job_id}", "list jobs with `xlt history`")
    if job.status != "queued":
        raise InvalidTransition(f"job {job_id} is {job.status}, not queued",
                                "it was launched already; the controller polls it")
    return update_job(uow, job_id, "running", handle=handle, device=device)


def update_job(uow: UnitOfWork, job_id: int, status: str, result: dict[str, Any] | None = None,
               error: str | None = None, handle: str | None = None,
               device: str | None = None, worker: str | None = None) -> Job:
    """Move a job: `running` records where it was launched (handle, device) and counts an
    attempt; `queued` again (its worker was lost) forgets the handle; `succeeded`/`failed`
    record the outcome. `worker`: the handle of the worker reporting its own outcome; if
    the job no longer runs under it (the controller gave it up as lost or timed out and
    launched it again), the late report is refused (StaleRevision) and nothing changes."""
    if status not in JOB_STATUSES:
        raise InvalidInput(f"job status {status!r} unknown", f"use one of {JOB_STATUSES}")
    job = uow.session.get(Job, job_id, with_for_update=True)
    if job is None:
        raise NotFound(f"no job {job_id}", "list jobs with `xlt history`")
    if worker is not None and (job.status != "running" or job.handle != worker):
        raise StaleRevision(f"job {job_id} no longer runs under {worker} (now {job.status}, "
                            f"{job.handle})", "the controller launched it again; this "
                            "worker's outcome is dropped")
    before = {"status": job.status, "handle": job.handle}
    job.status = status
    if status == "running":
        job.started_at, job.attempts, job.result = utcnow(), job.attempts + 1, result
        job.handle, job.device = handle, device
    if status == "queued":
        job.handle = job.device = None
    if status in ("succeeded", "failed"):
        job.finished_at, job.result, job.error = utcnow(), result, error
    uow.event(f"job_{status}", task=job.task, language=job.language, before=before,
              after={"job_id": job.id, "kind": job.kind, "status": status, "result": result,
                     "error": error, "handle": job.handle, "device": job.device})
    return job


def record_gate_result(uow: UnitOfWork, task: str, language: str, version: int,
                       gates: list[dict[str, Any]],
                       metrics: dict[str, Any] | None = None) -> GateResult:
    """`metrics`: the candidate's evaluation, carried on the event for the MLflow mirror's
    gate run."""
    adapter = adapter_by_version(uow.session, task, language, version)
    passed = all(bool(g.get("passed")) for g in gates)
    row = GateResult(adapter_id=adapter.id, gates=gates, passed=passed)
    uow.session.add(row)
    uow.session.flush()
    uow.event("gate", task=task, language=adapter.language, adapter_id=adapter.id,
              after={"version": version, "passed": passed, "gates": gates,
                     **({"metrics": metrics} if metrics else {})})
    return row


def record_canary_analysis(uow: UnitOfWork, task: str, language: str, step: int,
                           weight: float, metrics: dict[str, Any], verdict: str) -> CanaryAnalysis:
    if verdict not in CANARY_VERDICTS:
        raise InvalidInput(f"canary verdict {verdict!r} unknown", f"use one of {CANARY_VERDICTS}")
    track = uow.lock_track(task, canonical_language(language))
    if track.canary_id is None:
        raise NotFound(f"track {task}/{track.language} has no canary to analyse", "")
    row = CanaryAnalysis(track_id=track.id, adapter_id=track.canary_id, step=step,
                         weight=weight, metrics=metrics, verdict=verdict)
    uow.session.add(row)
    uow.session.flush()
    uow.event("canary_analysis", track=track, adapter_id=track.canary_id,
              after={"step": step, "weight": weight, "verdict": verdict, "metrics": metrics})
    return row


def record_drift_report(uow: UnitOfWork, task: str, language: str, *, verdict: str,
                        signals: dict[str, Any], reference: dict[str, Any],
                        report_paths: dict[str, Any] | None = None,
                        window_start: datetime | None = None,
                        window_end: datetime | None = None) -> DriftReport:
    if verdict not in VERDICTS:
        raise InvalidInput(f"drift verdict {verdict!r} unknown", f"use one of {VERDICTS}")
    task, language = task_name(task), language_tag(language)
    row = DriftReport(task=task, language=language, verdict=verdict, signals=signals,
                      reference=reference, report_paths=report_paths or {},
                      window_start=window_start, window_end=window_end)
    uow.session.add(row)
    uow.session.flush()
    track = uow.session.scalars(select(Track).where(Track.task == task,
                                                    Track.language == language)).one_or_none()
    uow.event("drift_check", task=task, language=language, track=track,
              after={"report_id": row.id, "verdict": verdict,
                     "drifted": sorted(k for k, v in signals.items()
                                       if isinstance(v, dict) and v.get("drifted"))})
    return row


def put_reference_cache(uow: UnitOfWork, task: str, language: str, reference_key: str,
                        artifact_sha256: str, stats: dict[str, Any]) -> ReferenceCache:
    task, language = task_name(task), language_tag(language)
    row = uow.session.scalars(select(ReferenceCache).where(
        ReferenceCache.task == task, ReferenceCache.language == language,
        ReferenceCache.reference_key == reference_key)).one_or_none()
    if row is None:
        row = ReferenceCache(task=task, language=language, reference_key=reference_key,
                             artifact_sha256=artifact_sha256, stats=stats)
        uow.session.add(row)
    else:
        row.artifact_sha256, row.stats = artifact_sha256, stats
    uow.session.flush()
    return row


INFERENCE_FIELDS = {c.name for c in InferenceEvent.__table__.columns} - {"id"}


def check_traffic_names(rows: list[dict[str, Any]]) -> None:
    """Every row's task is a name (registry.names) and its language a canonical tag."""
    for task in {r.get("task") for r in rows}:
        task_name(task)
    for key in ("language", "served_language"):
        for value in {r.get(key) for r in rows if r.get(key) is not None}:
            if language_tag(value) != value:
                raise InvalidName(f"{key} {value!r} is not in canonical form",
                                  f"write it as {language_tag(value)!r}")


def log_inference_events(uow: UnitOfWork, rows: list[dict[str, Any]]) -> int:
    """Bulk insert of already-validated traffic rows (controller.drift validates them).
    Traffic is data, not a state change: no audit event per row."""
    if not rows:
        return 0
    clean = []
    for r in rows:
        unknown = set(r) - INFERENCE_FIELDS
        if unknown:
            raise InvalidInput(f"unknown inference event fields {sorted(unknown)}",
                               f"allowed: {sorted(INFERENCE_FIELDS)}")
        clean.append({"at": utcnow(), "descriptors": {}, **r})
    check_traffic_names(clean)
    uow.session.execute(insert(InferenceEvent), clean)
    return len(clean)
