"""[jobs.gate] and [jobs.drift]: the limits of the two kinds of model work besides training
(controller.loop.job_steps). Trainings keep theirs in [training]."""

from __future__ import annotations

from pydantic import Field

from controller.policy.fields import Strict


class JobLimits(Strict):
    # the tick never runs a gate evaluation or a drift check itself: it queues one as a job
    # and launches up to these many at once on the policy's executor, fairly across languages
    max_concurrent: int = Field(2, ge=1, description="jobs of this kind at once, all tracks")
    per_gpu: int = Field(2, ge=1, description="jobs of this kind at once on one GPU")
    # a worker that dies (or a controller killed with it) is launched again until these
    # many launches are spent; then the job fails (a gate job rejects its candidate, a
    # drift check counts as done with no verdict, with an alert either way)
    max_attempts: int = Field(3, ge=1)
    timeout_s: float = Field(1800.0, gt=0)
    # what one job asks for: num_gpus > 0 puts it on a GPU (local executors pick the least
    # loaded cuda:N, Ray schedules it); num_cpus / memory_mb are Ray's resources
    num_gpus: float = Field(0.0, ge=0)
    num_cpus: float = Field(1.0, gt=0)
    memory_mb: int | None = Field(None, ge=1)


class DriftJobLimits(JobLimits):
    """The same fields for drift checks (a class of its own: the policy reference has a
    row per field of each table)."""


class JobsPolicy(Strict):
    gate: JobLimits = Field(default_factory=JobLimits)
    drift: DriftJobLimits = Field(default_factory=DriftJobLimits)
