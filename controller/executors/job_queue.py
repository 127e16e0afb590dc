"""Which queued jobs of one kind (trainings, gate evaluations, drift checks) to launch
now: the policy's slot limits (global and per GPU) and a fair queue. Pure: the reconciler
reads the jobs, this decides, the reconciler launches and writes down.

Fair: languages take turns (round-robin), each language's jobs oldest-waiting first, and
the turns are ordered by how long each language's oldest job has waited. A track has at
most one training job, so when 50 languages drift at once and 2 slots exist, the 50 are
trained in the order they drifted, two at a time, and a language that drifts again later
queues behind every language already waiting."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from registry.jobs import JobView

_EPOCH = datetime.min


@dataclass(frozen=True)
class Slots:
    max_concurrent: int
    per_gpu: int = 1
    gpus: int = 0  # 0: the jobs need no GPU, only the global limit applies


@dataclass(frozen=True)
class Launch:
    job: JobView
    device: str | None  # cuda:N when jobs take a GPU; None: the job's own device setting


def fair_order(queued: list[JobView]) -> list[JobView]:
    by_language: dict[str, list[JobView]] = defaultdict(list)
    for job in sorted(queued, key=_waited):
        by_language[job.language or ""].append(job)
    turns = sorted(by_language.values(), key=lambda jobs: _waited(jobs[0]))
    out: list[JobView] = []
    for depth in range(max((len(j) for j in turns), default=0)):
        out += [jobs[depth] for jobs in turns if depth < len(jobs)]
    return out


def plan(queued: list[JobView], running: list[JobView], slots: Slots,
         elsewhere: Sequence[JobView] = ()) -> list[Launch]:
    """`running`: this kind's jobs (the slots count them); `elsewhere`: other kinds' running
    jobs, which load the GPUs they were placed on."""
    free = slots.max_concurrent - len(running)
    load = Counter(j.device for j in (*running, *elsewhere) if j.device)
    launches: list[Launch] = []
    for job in fair_order(queued):
        if free <= 0:
            break
        device = None
        if slots.gpus:
            device = min((f"cuda:{i}" for i in range(slots.gpus)), key=lambda d: load[d])
            if load[device] >= slots.per_gpu:
                break  # every GPU is full
            load[device] += 1
        launches.append(Launch(job, device))
        free -= 1
    return launches


def _waited(job: JobView) -> tuple[datetime, int]:
    created = job.created_at.replace(tzinfo=None) if job.created_at else _EPOCH
    return created, job.id
