"""The Ray executor: each training job is a detached, named Ray actor on a cluster.

Launch: an actor `xlt-train-<job>` (namespace `xlt`) with the resources the policy asks for
([training] num_cpus, num_gpus, memory_mb) starts training in its constructor and returns
at once; the job row records the handle `ray:xlt-train-<job>`. The actor is detached, so
it outlives the controller: a restarted controller polls it by name and adopts it, and a
launch whose record was lost (the controller died in between) finds the actor by name
instead of starting a second one. A killed worker process is restarted by Ray up to
`[training] max_attempts - 1` times (Ray re-runs the constructor: the training starts
again); an actor that is gone for good is a lost job (queued again or failed, as any).

No shared filesystem: the controller sends the blobs the training reads (the base
encoder's files, the parent adapter) through Ray's object store; the actor writes them
into a private artifact store, trains with the ordinary pipeline against the registry
database (which the cluster must reach: PostgreSQL in production), registers the adapter
row, and hands the adapter's weights back as bytes; the controller verifies their sha256
and writes them into its own artifact store before the track moves to GATING.

Where the cluster is: policy `[training] ray_address`, else RAY_ADDRESS, else a local
cluster started by Ray (which ends with the controller: use a running cluster to survive
controller restarts). `ray://host:10001` connects through Ray Client."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from controller.executors.base import Poll, Progress, handle_poll
from registry.jobs import JobView
from registry.service import Registry

log = logging.getLogger("xlt.controller")
NAMESPACE = "xlt"
KEEPER = "xlt-blobs"


def actor_name(job_id: int) -> str:
    return f"xlt-train-{job_id}"


class RayExecutor:
    name = "ray"

    def __init__(self, registry: Registry, policy: Any) -> None:
        self.registry = registry
        self.policy = policy
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
        name = actor_name(job.id)
        training = self.policy.training
        options: dict[str, Any] = {
            "name": name, "namespace": NAMESPACE, "lifetime": "detached",
            "get_if_exists": True,  # a launch whose record was lost: adopt that actor
            "num_cpus": training.num_cpus, "num_gpus": training.num_gpus,
            "max_restarts": max(0, training.max_attempts - 1), "max_concurrency": 2,
            # a `state` call in flight while the worker restarts waits for the new one
            "max_task_retries": -1}
        if training.memory_mb:
            options["memory"] = training.memory_mb * 2**20
        shas = self._blobs_for(job)
        self._send_blobs(shas)
        TrainingActor.options(**options).remote(  # type: ignore[attr-defined]
            job.id, job.params, self.registry.db.url, shas)
        return f"ray:{name}"

    def _send_blobs(self, shas: list[str]) -> None:
        """Into the cluster's blob keeper (a detached actor): objects this process put
        would die with it, and a training must outlive its controller."""
        ray = self._ray()
        keeper = BlobKeeper.options(name=KEEPER, namespace=NAMESPACE, lifetime="detached",
                                    get_if_exists=True, num_cpus=0).remote()
        for sha in ray.get(keeper.missing.remote(shas), timeout=120):
            data = self.registry.store.verified_path(sha).read_bytes()
            ray.get(keeper.put.remote(sha, data), timeout=300)

    def _blobs_for(self, job: JobView) -> list[str]:
        """The artifact blobs the training reads: the base's tree, the parent adapter and
        the task's registered datasets (stored in the artifact store, by sha256)."""
        from registry import queries

        task, language = job.params["task"], job.params["language"]
        base = job.params.get("base") or self.registry.status(task, language)[0]["base"]
        encoder = self.registry.query(queries.show_encoder, base)
        manifest = encoder["artifact_sha256"]
        shas = [manifest, *self.registry.store.read_json(manifest)["files"].values()]
        parent = job.params.get("continue_from")
        if parent is not None:
            shas.append(self.registry.query(queries.show_adapter, task, language,
                                            int(parent))["artifact_sha256"])
        shas += [d["sha256"] for d in self.registry.query(queries.task_datasets, task)
                 if str(d["uri"]).startswith("store:")]
        return shas

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
                return Poll(Progress.LOST)
        if state == "running":
            return Poll(Progress.RUNNING)
        if state == "failed":
            ray.kill(actor)
            return Poll(Progress.FINISHED, error=str(payload))
        result, blob = payload
        self._store_blob(result["artifact_sha256"], blob)
        ray.kill(actor)  # its result is in the registry now
        return Poll(Progress.FINISHED, result=result)

    def _store_blob(self, sha: str, data: bytes) -> None:
        if hashlib.sha256(data).hexdigest() != sha:
            raise ValueError(f"the adapter bytes from Ray do not hash to {sha[:12]}")
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


def _train_remote(job_id: int, params: dict[str, Any], database_url: str,
                  shas: list[str]) -> tuple[dict[str, Any], bytes]:
    """In the Ray worker: a private artifact store with the blobs sent, the ordinary
    training pipeline against the registry database, the adapter's bytes back."""
    from controller.data.access import TaskData
    from controller.training.pipeline import train_adapter
    from registry import queries
    from registry.settings import load_settings

    # one folder per job on the node: a restarted worker finds the adapter a killed one
    # registered (and its bytes) instead of training a second one
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
    task, language = params["task"], params["language"]
    # an earlier run of this job registered its adapter (then died): hand that one back
    for a in reg.query(queries.list_adapters, task, language, "registered"):
        if a["hyperparams"].get("job_id") == job_id and reg.store.blob_path(
                a["artifact_sha256"]).exists():
            return _outcome(reg, a["version"], a["artifact_sha256"], reused=True)
    languages = list(params.get("data_languages") or [language])
    if not params.get("data_languages") and (
            params.get("drift_report_id") is not None or params.get("with_variants")):
        languages += TaskData(reg, task).variants(language)
    keys = ("teacher", "epochs", "seed", "continue_from", "base", "shuffle_pairs",
            "target_labels", "target_label_weight", "drift_report_id", "inputs_fingerprint",
            "upgrade_id", "limit_pairs", "top_blocks", "calibration_folds", "lexical",
            "lexical_refit", "max_rows_per_epoch")
    trained = train_adapter(reg, task, language, data_languages=languages, job_id=job_id,
                            device=params.get("device", "auto"),
                            **{k: params[k] for k in keys if params.get(k) is not None})
    row = reg.query(queries.show_adapter, task, language, trained["version"])
    return _outcome(reg, trained["version"], row["artifact_sha256"],
                    accuracy=trained["metrics"].get("accuracy"),
                    train_seconds=round(trained["train_seconds"], 2))


def _outcome(reg: Registry, version: int, sha: str, **extra: Any
             ) -> tuple[dict[str, Any], bytes]:
    import ray

    restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
    result = {"version": int(version), "artifact_sha256": sha, "ray_restarted": restarted,
              **extra}
    return result, reg.store.blob_path(sha).read_bytes()


class _TrainingActor:
    """Trains in a thread started by the constructor, so `state` answers meanwhile."""

    def __init__(self, job_id: int, params: dict[str, Any], database_url: str,
                 shas: list[str]) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self._state: tuple[str, Any] = ("running", None)
        self._args = (job_id, params, database_url, shas)
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            self._state = ("done", _train_remote(*self._args))
        except Exception as exc:  # the controller records it on the job row
            log.exception("ray training failed")
            self._state = ("failed", f"{type(exc).__name__}: {exc}")

    def state(self) -> tuple[str, Any]:
        return self._state

    def pid(self) -> int:
        return os.getpid()


class _BlobKeeper:
    """The artifact blobs trainings read (base trees, parent adapters), by sha256."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}

    def missing(self, shas: list[str]) -> list[str]:
        return [sha for sha in shas if sha not in self._blobs]

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


TrainingActor = _Lazy(_TrainingActor)
BlobKeeper = _Lazy(_BlobKeeper)
