"""The one composition root: every entry point (the CLI, the demo, the worker, the benches,
the tests) builds the controller, its operations, its executor and its alert wiring here,
from a registry and a policy. Nothing is wired by mutating another object: the controller
writes through its own view of the registry, bound to the policy's alert receivers, so
every alert it commits carries its delivery rows (fenced or not)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from controller.executors import make_executor
from controller.executors.base import Executor, WorkFn
from controller.loop.clock import Clock, SystemClock
from controller.loop.operations import Operations
from controller.loop.reconciler import Reconciler
from controller.policy import Policy
from controller.runtime.leader import LeaderLock
from controller.runtime.scheduler import Controller, FencedReconciler
from registry.service import Registry

if TYPE_CHECKING:
    from controller.ops.live import LiveOperations
    from controller.ops.model_cache import ModelCache

log = logging.getLogger("xlt.controller")


def build_operations(registry: Registry, policy: Policy, *, device: str | None = None,
                     models: ModelCache | None = None, clock: Clock | None = None,
                     html: str = "drifted") -> LiveOperations:
    """The loop's real operations (training, evaluation, drift checks, live traffic).
    Imported here, not at the top: a registry command that builds no controller must not
    pay for torch."""
    from controller.ops.live import LiveOperations

    return LiveOperations(registry, policy, device=device, models=models, clock=clock,
                          html=html)


def worker_work(registry: Registry, device: str | None = None) -> WorkFn:
    """What a remote worker (a Ray actor) runs jobs with: the operations over its own
    registry, with the default policy (a job's params carry everything the policy
    decided when it was queued)."""
    return build_operations(registry, Policy(), device=device or "auto").run_job


def controller_registry(registry: Registry, policy: Policy, actor: str) -> Registry:
    """The registry as the controller writes to it: its actor, the policy's receivers."""
    return registry.bound(actor=actor, alert_receivers=tuple(policy.alerts.receivers))


def build_controller(registry: Registry, policy: Policy, *, ops: Operations | None = None,
                     policy_path: str | None = None, clock: Clock | None = None,
                     executor: Executor | None = None,
                     drain: Callable[[Registry], Any] | None = None,
                     report: Callable[[str], None] = log.info,
                     actor: str = "controller") -> Controller:
    """A controller for `policy` over `registry`: the leader lock, the fenced reconciler
    with the policy's executor, and the process around them."""
    reg = controller_registry(registry, policy, actor)
    ops = ops if ops is not None else build_operations(reg, policy, clock=clock)
    leader = LeaderLock(reg.db, reg.settings.home, report=report,
                        lease_s=policy.leader_lease_s)
    executor = executor or make_executor(policy.executor, reg, policy_path, ops.run_job, policy,
                                         worker_work)
    reconciler = FencedReconciler(reg, policy, ops, clock or SystemClock(), leader=leader,
                                  executor=executor, actor=actor)
    return Controller(reg, policy, reconciler, leader, drain=drain, report=report)


def build_reconciler(registry: Registry, policy: Policy, *, ops: Operations | None = None,
                     clock: Clock | None = None, executor: Executor | None = None,
                     actor: str = "controller") -> Reconciler:
    """The loop alone, unfenced: one process that acts by itself (tests, benches)."""
    reg = controller_registry(registry, policy, actor)
    ops = ops if ops is not None else build_operations(reg, policy, clock=clock)
    executor = executor or make_executor(policy.executor, reg, None, ops.run_job, policy,
                                         worker_work)
    return Reconciler(reg, policy, ops, clock or SystemClock(), executor, actor=actor)
