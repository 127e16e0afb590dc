"""Where long work runs: launch a job, poll it on later ticks, never wait.

  base.py       the Executor protocol, Poll/Progress, claiming and recording outcomes
  local.py      inline (a thread) and subprocess (`python -m controller.runtime.worker`)
  ray.py        a Ray task on a cluster
  job_queue.py  which queued jobs launch next (slots, fairness)
  owner.py      who owns a handle (host, pid)
"""

from __future__ import annotations

from typing import Any

from controller.executors.base import Executor, WorkFn
from controller.executors.local import InlineExecutor, SubprocessExecutor
from registry.service import Registry


def make_executor(name: str, registry: Registry, policy_path: str | None,
                  work: WorkFn, policy: Any = None, remote_work: Any = None) -> Executor:
    """`remote_work`: for Ray, what a worker there builds its `work` with (a module-level
    function: Ray sends it by reference)."""
    if name == "subprocess":
        return SubprocessExecutor(registry, policy_path)
    if name == "ray":
        from controller.executors.ray import RayExecutor

        return RayExecutor(registry, policy, remote_work)
    return InlineExecutor(registry, work)
