"""The Ray executor: each job (a training, a gate evaluation, a drift check) is a
detached, named Ray actor on a cluster.

Launch: an actor `xlt-<kind>-<job>` (namespace `xlt`) with the resources the policy asks
for its kind ([training] or [jobs.gate] / [jobs.drift]: num_cpus, num_gpus, memory_mb)
starts the work in its constructor and returns at once; the job row records the handle
`ray:xlt-<kind>-<job>`. The actor is detached, so
it outlives the controller: a restarted controller polls it by name and adopts it, and a
launch whose record was lost (the controller died in between) finds the actor by name
instead of starting a second one. A killed worker process is restarted by Ray up to
`[training] max_attempts - 1` times (Ray re-runs the constructor: the training starts
again); an actor that is gone for good is a lost job (queued again or failed, as any).

No shared filesystem: the controller sends the blobs the job reads (the base encoder's
files, the adapters it loads, the task's datasets, the track's cached drift references)
through a detached blob keeper actor; the actor writes them into a private artifact store
and runs the job as any worker does (controller.ops.live.LiveOperations.run_job) against
the registry database (which the cluster must reach: PostgreSQL in production). It hands
back the result, every blob it added (a training's adapter weights, a drift check's new
reference) and the report files it wrote; the controller verifies each blob's sha256 and
writes them into its own artifact store and reports folder before the result is
recorded. The keeper drops a blob once no launched job holds it.

Where the cluster is: policy `[training] ray_address`, else RAY_ADDRESS, else a local
cluster started by Ray (which ends with the controller: use a running cluster to survive
controller restarts). `ray://host:10001` connects through Ray Client."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.executors.base import Poll, Progress, WorkFn, handle_poll
from registry.jobs import JobView
from registry.service import Registry

log = logging.getLogger("xlt.controller")
# (the worker's private registry, the job's device) -> what runs the job's kinds
WorkFactory = Callable[[Registry, str | None], WorkFn]
NAMESPACE = "xlt"
KEEPER = "xlt-blobs"


def actor_name(job_id: int, kind: str = "train") -> str:
    return f"xlt-{kind}-{job_id}"


class RayExecutor:
    name = "ray"

    def __init__(self, registry: Registry, policy: Any, work_for: WorkFactory) -> None:
        self.registry = registry
        self.policy = policy
        # what a Ray worker runs a job with, built there from its private registry (the
        # composition root passes it: controller.runtime.bootstrap.worker_work); Ray sends
        # a module-level function by reference, so the workers import it themselves
        self.work_for = work_for
        self._connected = False

    def _ray(self) -> Any:
        import ray

        if not self._connected:
            address = self.policy.training.ray_address or os.environ.get("RAY_ADDRESS")
            if not ray.is_initialized():
                ray.init(address=address, namespace=NAMESPACE, log_to_driver=False,
                         ignore_reinit_error=True, include_dashboard=False)
            self._connected = True
        return ray

    def gpu_count(self) -> int:
        return 0  # Ray places GPU jobs itself (num_gpus), no cuda:N from the controller

    # -- launch --------------------------------------------------------------------------
    def launch(self, job: JobView, device: str | None) -> str:
        self._ray()  # connected before the actor class is made
        name = actor_name(job.id, job.kind)
        wants = self._resources(job.kind)
        options: dict[str, Any] = {
            "name": name, "namespace": NAMESPACE, "lifetime": "detached",
            "get_if_exists": True,  # a launch whose record was lost: adopt that actor
            "num_cpus": wants.num_cpus, "num_gpus": wants.num_gpus,
            "max_restarts": max(0, wants.max_attempts - 1), "max_concurrency": 2,
            # a `state` call in flight while the worker restarts waits for the new one
            "max_task_retries": -1}
        if wants.memory_mb:
            options["memory"] = wants.memory_mb * 2**20
        shas = self._blobs_for(job)
        self._send_blobs(job.id, shas)
        JobActor.options(**options).remote(  # type: ignore[attr-defined]
            job.id, job.kind, job.params, self.registry.db.url, shas, self.work_for)
        return f"ray:{name}"

    def _resources(self, kind: str) -> Any:
        if kind == "train":
            return self.policy.training
        return self.policy.jobs.gate if kind == "gate" else self.policy.jobs.drift

    def _keeper(self) -> Any:
        return BlobKeeper.options(name=KEEPER, namespace=NAMESPACE, lifetime="detached",
                                  get_if_exists=True, num_cpus=0).remote()

    def _send_blobs(self, job_id: int, shas: list[str]) -> None:
        """Into the cluster's blob keeper (a detached actor): objects this process put
        would die with it, and a job must outlive its controller. The job holds them
        until its outcome is taken (`_release`)."""
        ray = self._ray()
        keeper = self._keeper()
        for sha in ray.get(keeper.hold.remote(job_id, shas), timeout=120):
            data = self.registry.store.verified_path(sha).read_bytes()
            ray.get(keeper.put.remote(sha, data), timeout=300)

    def _release(self, job_id: int) -> None:
        """The job is over (or gone): the keeper frees the blobs no other job holds."""
        try:
            self._ray().get(self._keeper().release.remote(job_id), timeout=60)
        except Exception as exc:  # the next release or launch of the keeper catches up
            log.warning("blob keeper: releasing job %s failed: %s", job_id, exc)

    def _blobs_for(self, job: JobView) -> list[str]:
        """The artifact blobs the job reads: the base's tree, the adapters it loads (a
        training's parent; a gate's candidate and champion; a drift check's champion), the
        task's registered datasets, and for a drift check the track's cached references."""
        from registry import queries

        p = job.params
        task, language = p["task"], p["language"]
        track = self.registry.status(task, language)[0]
        encoder = self.registry.query(queries.show_encoder, p.get("base") or track["base"])
        manifest = encoder["artifact_sha256"]
        shas = [manifest, *self.registry.store.read_json(manifest)["files"].values()]
        versions = {"train": [p.get("continue_from")],
                    "gate": [p.get("version"), p.get("champion")],
                    "drift": [track["champion"]]}.get(job.kind, [])
        for version in versions:
            if version is not None:
                shas.append(self.registry.query(queries.show_adapter, task, language,
                                                int(version))["artifact_sha256"])
        shas += [d["sha256"] for d in self.registry.query(queries.task_datasets, task)
                 if str(d["uri"]).startswith("store:")]
        if job.kind == "drift":
            shas += self.registry.query(_reference_shas, task, language)
        return list(dict.fromkeys(shas))

    # -- poll ----------------------------------------------------------------------------
    def poll(self, job: JobView) -> Poll:
        if not (job.handle or "").startswith("ray:"):
            return handle_poll(job.handle)
        ray = self._ray()
        from ray.exceptions import GetTimeoutError, RayActorError

        try:
            actor = ray.get_actor(job.handle.removeprefix("ray:"),  # type: ignore[union-attr]
                                  namespace=NAMESPACE)
        except ValueError:
            self._release(job.id)
            return Poll(Progress.LOST)
        try:
            state, payload = ray.get(actor.state.remote(), timeout=60)
        except GetTimeoutError:
            return Poll(Progress.RUNNING)  # busy or restarting
        except RayActorError:  # died: gone for good once its restarts are spent
            try:
                actor = ray.get_actor(job.handle.removeprefix("ray:"),  # type: ignore[union-attr]
                                      namespace=NAMESPACE)
                state, payload = ray.get(actor.state.remote(), timeout=60)
            except GetTimeoutError:
                return Poll(Progress.RUNNING)
            except (ValueError, RayActorError):
                self._release(job.id)
                return Poll(Progress.LOST)
        if state == "running":
            return Poll(Progress.RUNNING)
        if state == "failed":
            ray.kill(actor)
            self._release(job.id)
            return Poll(Progress.FINISHED, error=str(payload))
        result, blobs, files = payload
        for sha, data in blobs.items():
            self._store_blob(sha, data)
        if files:
            result = self._store_reports(result, files)
        ray.kill(actor)  # its outcome is ours now
        self._release(job.id)
        return Poll(Progress.FINISHED, result=result)

    def _store_reports(self, result: dict[str, Any], files: dict[str, bytes]
                       ) -> dict[str, Any]:
        """A drift check's report files into our reports folder, at the same relative
        paths; the report's paths then name our copies."""
        from registry.names import safe_path

        root = Path(self.registry.settings.reports_dir)
        paths = {}
        for key, (rel, data) in files.items():
            dest = safe_path(root, *Path(rel).parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            paths[key] = str(dest)
        report = {**result["report"], "report_paths": paths}
        return {**result, "report": report}

    def _store_blob(self, sha: str, data: bytes) -> None:
        if hashlib.sha256(data).hexdigest() != sha:
            raise ValueError(f"the bytes from Ray do not hash to {sha[:12]}")
        dest = self.registry.store.blob_path(sha)
        if dest.exists():
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, dest)

    def wait(self, timeout: float) -> None:
        return None  # the controller polls; nothing of a Ray task lives in this process


def _reference_shas(session: Any, task: str, language: str) -> list[str]:
    from sqlalchemy import select

    from registry.schema import ReferenceCache

    return list(session.scalars(select(ReferenceCache.artifact_sha256).where(
        ReferenceCache.task == task, ReferenceCache.language == language)))


def _run_remote(job_id: int, kind: str, params: dict[str, Any], database_url: str,
                shas: list[str], work_for: WorkFactory
                ) -> tuple[dict[str, Any], dict[str, bytes], dict[str, tuple[str, bytes]]]:
    """In the Ray worker: a private artifact store with the blobs sent, the job run as
    any worker runs it, against the registry database; back come the result, the blobs
    it added, and the report files it wrote (relative to its reports folder)."""
    from registry.settings import load_settings

    # one folder per job on the node: a restarted worker finds what a killed one left
    # (a training's registered adapter and its bytes) instead of starting over
    registry_key = hashlib.sha256(database_url.encode()).hexdigest()[:12]
    home = Path(tempfile.gettempdir()) / f"xlt-ray-{registry_key}-job-{job_id}"
    home.mkdir(parents=True, exist_ok=True)
    reg = Registry(load_settings(home=home, database_url=database_url), actor="ray-worker")
    import ray

    keeper = ray.get_actor(KEEPER, namespace=NAMESPACE)
    for sha in shas:
        data = ray.get(keeper.get.remote(sha))
        if hashlib.sha256(data).hexdigest() != sha:
            raise ValueError(f"blob {sha[:12]} arrived corrupt")
        path = reg.store.blob_path(sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    work = work_for(reg, params.get("device"))
    result = work(kind, {**params, "job_id": job_id})
    if kind == "train":
        result = {**result, "ray_restarted": bool(
            ray.get_runtime_context().was_current_actor_reconstructed)}
        from registry import queries

        row = reg.query(queries.show_adapter, params["task"], params["language"],
                        int(result["version"]))
        result["artifact_sha256"] = row["artifact_sha256"]
    sent = set(shas)
    blobs = {p.name: p.read_bytes() for p in (reg.store.root / "blobs").glob("*/*")
             if p.is_file() and p.name not in sent}
    files: dict[str, tuple[str, bytes]] = {}
    root = Path(reg.settings.reports_dir)
    for key, path in ((result.get("report") or {}).get("report_paths") or {}).items():
        if path and Path(path).is_file():
            files[key] = (str(Path(path).relative_to(root)), Path(path).read_bytes())
    return result, blobs, files


class _JobActor:
    """Runs the job in a thread started by the constructor, so `state` answers meanwhile."""

    def __init__(self, job_id: int, kind: str, params: dict[str, Any], database_url: str,
                 shas: list[str], work_for: WorkFactory) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self._state: tuple[str, Any] = ("running", None)
        self._args = (job_id, kind, params, database_url, shas, work_for)
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            self._state = ("done", _run_remote(*self._args))
        except Exception as exc:  # the controller records it on the job row
            log.exception("ray %s job failed", self._args[1])
            self._state = ("failed", f"{type(exc).__name__}: {exc}")

    def state(self) -> tuple[str, Any]:
        return self._state

    def pid(self) -> int:
        return os.getpid()


class _BlobKeeper:
    """The artifact blobs jobs read (base trees, adapters, datasets), by sha256, each kept
    while a launched job holds it."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        self._holds: dict[int, set[str]] = {}

    def hold(self, job_id: int, shas: list[str]) -> list[str]:
        """The job needs these; returns the ones the keeper lacks (to be `put`)."""
        self._holds[job_id] = set(shas)
        return [sha for sha in shas if sha not in self._blobs]

    def release(self, job_id: int) -> int:
        """The job is over: drop what no other job holds; returns the blobs kept."""
        self._holds.pop(job_id, None)
        needed = set().union(*self._holds.values()) if self._holds else set()
        for sha in [s for s in self._blobs if s not in needed]:
            del self._blobs[sha]
        return len(self._blobs)

    def stats(self) -> dict[str, int]:
        return {"blobs": len(self._blobs), "bytes": sum(map(len, self._blobs.values())),
                "jobs": len(self._holds)}

    def put(self, sha: str, data: bytes) -> None:
        self._blobs[sha] = data

    def get(self, sha: str) -> bytes:
        return self._blobs[sha]


class _Lazy:
    """`X.options(...)` of a Ray actor class, with ray imported only when it is used."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self._remote: Any = None

    def options(self, **kwargs: Any) -> Any:
        if self._remote is None:
            import ray

            self._remote = ray.remote(self.cls)
        return self._remote.options(**kwargs)


JobActor = _Lazy(_JobActor)
BlobKeeper = _Lazy(_BlobKeeper)
