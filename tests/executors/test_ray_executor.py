"""The Ray executor on a real local Ray cluster (2 CPUs, started by the test with `ray
start --head --block`): a training job runs as a Ray actor and the track reaches GATING;
the controller SIGKILLed while the actor trains, then restarted, adopts the same actor
(one adapter, one job, one launch); a killed Ray worker is restarted by Ray and the job
still ends once. Tiny model; the registry on SQLite, reached by the workers by its URL."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    import ray  # CI installs the [ray] extra: a missing Ray fails the run, never skips it
else:
    ray = pytest.importorskip("ray")

from controller.executors.ray import NAMESPACE, RayExecutor  # noqa: E402
from controller.loop.clock import ManualClock  # noqa: E402
from controller.loop.reconciler import Reconciler  # noqa: E402
from controller.ops.model_cache import ModelCache  # noqa: E402
from controller.policy import Policy, parse_policy  # noqa: E402
from controller.runtime.bootstrap import build_operations, build_reconciler, worker_work
from registry import queries  # noqa: E402
from registry.jobs import JobView  # noqa: E402
from registry.schema import Job  # noqa: E402
from registry.service import Registry  # noqa: E402
from tests.support.loop_support import OPEN_GATES_TOML, START, TASK, open_registry, setup  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
POLICY = """
base = "tiny@1"
executor = "ray"
[[tracks]]
task = "emoji-group"
language = "LANG"
""" + OPEN_GATES_TOML + """[training]
epochs = 1
device = "cpu"
teacher = "en"
num_cpus = 1
max_attempts = 2
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("ray") / "ray.log"
    # a private cluster on 127.0.0.1 for this module, without token authentication: Ray
    # 2.5x turns it on for `ray start` whenever ~/.ray/auth_token exists (any earlier local
    # ray.init() on this machine writes one), and a client without RAY_AUTH_MODE=token then
    # cannot connect. The controller and the cluster must agree; here both say disabled.
    os.environ["RAY_AUTH_MODE"] = "disabled"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
             "--num-cpus", "2", "--port", str(port), "--include-dashboard", "false",
             "--object-store-memory", str(200 * 2**20), "--disable-usage-stats"],
            env=env, stdout=out, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if b"Ray runtime started" in log.read_bytes():
                break
            time.sleep(0.5)
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        os.environ["RAY_ADDRESS"] = address
        while not ray.is_initialized():  # a loaded machine: the GCS may answer late
            try:
                ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
            except ConnectionError:
                assert time.monotonic() < deadline + 120, log.read_text(errors="replace")
                time.sleep(2)
        yield address
    finally:
        os.environ.pop("RAY_ADDRESS", None)
        os.environ.pop("RAY_AUTH_MODE", None)
        if ray.is_initialized():
            ray.shutdown()
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _policy(language: str) -> Policy:
    return parse_policy(POLICY.replace("LANG", language))


def _reconciler(reg: Registry, policy: Policy) -> Reconciler:
    clock = ManualClock(START)
    ops = build_operations(reg, policy, models=ModelCache(reg, "cpu"), clock=clock)
    return build_reconciler(reg, policy, ops=ops, clock=clock,
                            executor=RayExecutor(reg, policy, worker_work))


def _jobs(reg: Registry, kind: str = "train") -> list[JobView]:
    with reg.reading() as s:
        return [JobView.of(j) for j in s.query(Job).where(Job.kind == kind).order_by(Job.id)]


def _phase(reg: Registry, language: str) -> str:
    return str(reg.status(TASK, language)[0]["phase"])


def _tick_until_gating(rec: Reconciler, reg: Registry, language: str,
                       limit_s: float = 400) -> list[list[str]]:
    log = []
    deadline = time.monotonic() + limit_s
    while _phase(reg, language) == "RETRAINING" and time.monotonic() < deadline:
        log.append(rec.tick())
        time.sleep(1)
    assert _phase(reg, language) in ("GATING", "STEADY"), log[-3:]
    return log


def _home(tmp_path: Path, url: str, tiny: Path) -> Registry:
    setup(url, tmp_path / "home", tiny)
    return open_registry(url, tmp_path / "home")


@pytest.mark.slow
def test_job_runs_as_ray_actor_and_track_reaches_gating(ray_cluster: str, sqlite_url: str,
                                                        tmp_path: Path,
                                                        tiny_model_dir: Path) -> None:
    reg = _home(tmp_path, sqlite_url, tiny_model_dir)
    rec = _reconciler(reg, _policy("sw"))
    lines = rec.tick()
    (job,) = _jobs(reg)
    assert job.status == "running" and job.handle == f"ray:xlt-train-{job.id}", lines
    log = _tick_until_gating(rec, reg, "sw")
    assert _phase(reg, "sw") == "GATING", log[-3:]
    (job,) = _jobs(reg)
    assert job.status == "succeeded" and job.attempts == 1
    version = int(job.result["version"])  # type: ignore[index]
    adapter = reg.query(queries.show_adapter, TASK, "sw", version)
    # the weights came back through Ray, not a shared folder: they are in our store
    assert reg.store.verified_path(adapter["artifact_sha256"]).is_file()
    assert _actor_gone(f"xlt-train-{job.id}")  # killed once its result was recorded
    # the gates run on Ray too: a gate actor, its report recorded by the controller
    (gate,) = _jobs(reg, "gate")
    assert gate.handle == f"ray:xlt-gate-{gate.id}", gate
    deadline = time.monotonic() + 300
    while _phase(reg, "sw") == "GATING" and time.monotonic() < deadline:
        rec.tick()
        time.sleep(1)
    (gate,) = _jobs(reg, "gate")
    assert gate.status == "succeeded" and gate.result and gate.result["version"] == version
    assert reg.status(TASK, "sw")[0]["champion"] == version  # gates passed: first champion
    # the blob keeper kept what running jobs needed, and nothing once none runs
    keeper = ray.get_actor("xlt-blobs", namespace=NAMESPACE)
    assert ray.get(keeper.stats.remote(), timeout=60) == {"blobs": 0, "bytes": 0, "jobs": 0}


def _actor_gone(name: str, limit_s: float = 30) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return True
        time.sleep(0.5)
    return False


def _launch_then_die(url: str, home: str) -> None:
    """A controller that launches the training on Ray, then is SIGKILLed."""
    reg = open_registry(url, Path(home))
    rec = _reconciler(reg, _policy("yo"))
    rec.tick()
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.slow
def test_controller_sigkilled_then_restarted_adopts_the_running_actor(
        ray_cluster: str, sqlite_url: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    reg = _home(tmp_path, sqlite_url, tiny_model_dir)
    child = multiprocessing.get_context("spawn").Process(
        target=_launch_then_die, args=(sqlite_url, str(tmp_path / "home")))
    child.start()
    child.join(300)
    assert child.exitcode == -signal.SIGKILL
    (job,) = _jobs(reg)
    assert job.status == "running" and job.handle == f"ray:xlt-train-{job.id}"
    actor = ray_actor(job)
    assert ray.get(actor.state.remote(), timeout=60)[0] == "running"  # still training

    rec = _reconciler(reg, _policy("yo"))  # the restarted controller
    log = _tick_until_gating(rec, reg, "yo")
    assert _phase(reg, "yo") == "GATING", log[-3:]
    jobs = _jobs(reg)
    assert len(jobs) == 1 and jobs[0].attempts == 1, jobs  # adopted, not launched again
    assert jobs[0].handle == job.handle
    adapters = reg.query(queries.list_adapters, TASK, "yo")
    assert len(adapters) == 1, adapters  # one adapter registered
    events = [e["action"] for e in reg.query(queries.history, TASK, "yo")
              if (e["after"] or {}).get("kind") == "train"]
    assert events.count("job_running") == 1 and events.count("job_created") == 1


def ray_actor(job: JobView) -> Any:
    if not ray.is_initialized():
        ray.init(address=os.environ["RAY_ADDRESS"], namespace=NAMESPACE, log_to_driver=False)
    return ray.get_actor((job.handle or "").removeprefix("ray:"), namespace=NAMESPACE)


@pytest.mark.slow
def test_killed_ray_worker_is_retried(ray_cluster: str, sqlite_url: str, tmp_path: Path,
                                      tiny_model_dir: Path) -> None:
    reg = _home(tmp_path, sqlite_url, tiny_model_dir)
    rec = _reconciler(reg, _policy("ha"))
    rec.tick()
    (job,) = _jobs(reg)
    actor = ray_actor(job)
    pid = ray.get(actor.pid.remote(), timeout=120)
    os.kill(pid, signal.SIGKILL)  # the worker process running the training dies
    log = _tick_until_gating(rec, reg, "ha")
    assert _phase(reg, "ha") == "GATING", log[-3:]
    (job,) = _jobs(reg)
    assert job.status == "succeeded" and job.attempts == 1  # Ray's restart, same job
    assert job.result and job.result["ray_restarted"] is True
    assert len(reg.query(queries.list_adapters, TASK, "ha")) == 1
