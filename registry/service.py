"""The registry's public face: one object per (database, artifact store, actor).

Every method that changes state is one unit of work (registry.uow). Reads use a reader
session. The controller and the CLI call only this class (and registry.routing).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import inspect
from sqlalchemy.orm import Session

from registry import migrate, queries
from registry.artifacts import ArtifactStore, sha256_file
from registry.commands import (
    catalog,
    deployment,
    outbox,
    records,
    servability,
    tasks,
    traffic,
    upgrade,
)
from registry.commands.lookups import adapter_by_version, encoder_by_ref
from registry.db import Database
from registry.errors import ArtifactError, DatabaseNotReady
from registry.names import find_bad_names
from registry.routing import CachedResolver, Resolution, resolve
from registry.schema import Adapter, BaseEncoder, Dataset
from registry.settings import Settings, default_actor, load_settings
from registry.uow import Fence, UnitOfWork

T = TypeVar("T")


class Registry:
    def __init__(self, settings: Settings, actor: str | None = None,
                 alert_receivers: tuple[str, ...] = ()) -> None:
        self.settings = settings
        self.actor = actor or default_actor()
        self.db = Database(settings.database_url)
        self.store = ArtifactStore(settings.artifacts_dir)
        # names of the policy's webhook receivers: each alert event gets a delivery row each
        self.alert_receivers: tuple[str, ...] = tuple(alert_receivers)

    @classmethod
    def open(cls, home: str | Path | None = None, database_url: str | None = None,
             actor: str | None = None, alert_receivers: tuple[str, ...] = ()) -> Registry:
        return cls(load_settings(home=home, database_url=database_url), actor, alert_receivers)

    # -- setup -------------------------------------------------------------------------
    def init(self) -> str | None:
        """Create XLT_HOME and bring the schema to head; safe to run again."""
        self.settings.home.mkdir(parents=True, exist_ok=True)
        self.settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
        migrate.upgrade(self.db.url)
        return migrate.current_revision(self.db.url)

    def require_ready(self) -> None:
        sqlite_file = self.db.url.removeprefix("sqlite:///")
        if self.db.is_sqlite and sqlite_file and not Path(sqlite_file).exists():
            # connecting would create an empty file: refuse before touching anything
            raise DatabaseNotReady(f"no xlt registry at {sqlite_file}",
                                   "run `xlt init` first (or pass --home / --db)")
        with self.db.read_engine.connect() as conn:
            if not inspect(conn).has_table("tracks"):
                raise DatabaseNotReady(f"no xlt registry in {self.db.url}",
                                       "run `xlt init` first")
        migrate.require_current(self.db.url)

    def bound(self, *, actor: str | None = None,
              alert_receivers: tuple[str, ...] | None = None) -> Registry:
        """This registry (same database and store) writing as `actor`, delivering alerts
        to `alert_receivers`: a view for one writer, instead of changing a shared one."""
        view = copy.copy(self)
        view.actor = actor or self.actor
        if alert_receivers is not None:
            view.alert_receivers = tuple(alert_receivers)
        return view

    def check(self) -> dict[str, Any]:
        """What `xlt db check` reports beyond the schema: names recorded before the name
        grammar (registry.names) and staging left by killed processes (removed here; a
        live process's folder is kept)."""
        with self.reading() as s:
            bad = find_bad_names(s)
        return {"bad_names": bad, "staging": self.store.sweep_staging()}

    # -- plumbing ----------------------------------------------------------------------
    def unit_of_work(self, actor: str | None = None, fence: Fence | None = None) -> UnitOfWork:
        """The one place a transaction is built: with this registry's alert receivers, so
        an alert commits with its delivery rows whoever writes it (fenced or not)."""
        return UnitOfWork(self.db, actor or self.actor, self.alert_receivers, fence)

    @contextmanager
    def reading(self) -> Iterator[Session]:
        session = self.db.reader()
        try:
            with session.begin():
                yield session
        finally:
            session.close()

    def _write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self.unit_of_work() as uow:
            return fn(uow, *args, **kwargs)

    # -- catalog -----------------------------------------------------------------------
    def register_encoder(self, name: str, version: str, model_dir: str | Path,
                         source: str | None = None,
                         provenance: dict[str, Any] | None = None) -> BaseEncoder:
        with self.unit_of_work() as uow:
            return catalog.register_encoder(uow, self.store, name, version, model_dir,
                                            source, provenance)

    # -- tasks and their data ----------------------------------------------------------
    def create_task(self, name: str, labels: Any, description: str = "") -> Any:
        return self._write(tasks.create_task, name, labels, description)

    def relabel_task(self, name: str, labels: Any) -> Any:
        return self._write(tasks.relabel_task, name, labels)

    def register_task_dataset(self, spec: tasks.DatasetSpec) -> list[Dataset]:
        """Validate a team's file and register it (one dataset per language in it)."""
        with self.unit_of_work() as uow:
            return tasks.register_task_dataset(uow, self.store, spec)

    def dataset_file(self, dataset: dict[str, Any]) -> Path:
        """A registered dataset's stored file, verified by sha256 before it is read."""
        uri = str(dataset["uri"])
        if uri.startswith("store:"):
            return self.store.verified_path(dataset["sha256"])
        path = Path(uri)  # registered before the store held datasets: the file in place
        if not path.is_file() or sha256_file(path) != dataset["sha256"]:
            raise ArtifactError(f"dataset {dataset['ref']}'s file {path} is missing or "
                                f"changed", "register the dataset again")
        return path

    def ensure_track(self, task: str, language: str, base: str) -> Any:
        return self._write(catalog.ensure_track, task, language, base)

    def register_adapter(self, **kwargs: Any) -> Adapter:
        with self.unit_of_work() as uow:
            return catalog.register_adapter(uow, self.store, **kwargs)

    # -- deployment --------------------------------------------------------------------
    def start_canary(self, task: str, language: str, version: int, weight: float,
                     expected_revision: int | None = None, reason: str | None = None) -> Any:
        return self._write(deployment.start_canary, task, language, version, weight,
                           expected_revision, reason)

    def set_canary_weight(self, task: str, language: str, weight: float,
                          expected_revision: int | None = None, reason: str | None = None
                          ) -> Any:
        return self._write(deployment.set_canary_weight, task, language, weight,
                           expected_revision, reason)

    def abort_canary(self, task: str, language: str, expected_revision: int | None = None,
                     reason: str | None = None) -> Any:
        return self._write(deployment.abort_canary, task, language, expected_revision, reason)

    def promote(self, task: str, language: str, version: int,
                expected_revision: int | None = None, reason: str | None = None) -> Any:
        return self._write(deployment.promote, task, language, version, expected_revision,
                           reason)

    def rollback(self, task: str, language: str, to_version: int | None = None,
                 expected_revision: int | None = None, reason: str | None = None) -> Any:
        return self._write(deployment.rollback, task, language, to_version, expected_revision,
                           reason)

    def mark_gated(self, task: str, language: str, version: int, reason: str | None = None
                   ) -> Adapter:
        return self._write(deployment.mark_gated, task, language, version, reason)

    def reject(self, task: str, language: str, version: int, reason: str | None = None
               ) -> Adapter:
        return self._write(deployment.reject, task, language, version, reason)

    def set_phase(self, task: str, language: str, phase: str,
                  phase_data: dict[str, Any] | None = None,
                  expected_revision: int | None = None, reason: str | None = None) -> Any:
        return self._write(deployment.set_phase, task, language, phase, phase_data,
                           expected_revision, reason)

    def request_upgrade(self, base: str, task: str, languages: list[str] | None = None,
                        reason: str | None = None) -> dict[str, str]:
        return self._write(upgrade.request_upgrade, base, task, languages, reason)

    def advance_upgrade(self, task: str, language: str, status: str,
                        candidate_version: int | None = None, reason: str | None = None
                        ) -> dict[str, Any] | None:
        return self._write(deployment.advance_upgrade, task, language, status,
                           candidate_version, reason)

    def mark_not_servable(self, task: str, language: str, reason: str,
                          detail: dict[str, Any] | None = None,
                          expected_revision: int | None = None) -> Any:
        return self._write(servability.mark_not_servable, task, language, reason, detail,
                           expected_revision)

    def clear_not_servable(self, task: str, language: str, reason: str,
                           expected_revision: int | None = None) -> Any:
        return self._write(servability.clear_not_servable, task, language, reason,
                           expected_revision)

    # -- records -----------------------------------------------------------------------
    def create_job(self, kind: str, params: dict[str, Any], executor: str,
                   task: str | None = None, language: str | None = None) -> Any:
        return self._write(records.create_job, kind, params, executor, task, language)

    def update_job(self, job_id: int, status: str, result: dict[str, Any] | None = None,
                   error: str | None = None, handle: str | None = None,
                   device: str | None = None, worker: str | None = None) -> Any:
        return self._write(records.update_job, job_id, status, result, error, handle, device,
                           worker)

    def record_gate_result(self, task: str, language: str, version: int,
                           gates: list[dict[str, Any]]) -> Any:
        return self._write(records.record_gate_result, task, language, version, gates)

    def record_canary_analysis(self, task: str, language: str, step: int, weight: float,
                               metrics: dict[str, Any], verdict: str) -> Any:
        return self._write(records.record_canary_analysis, task, language, step, weight,
                           metrics, verdict)

    def record_drift_report(self, task: str, language: str, **kwargs: Any) -> Any:
        return self._write(records.record_drift_report, task, language, **kwargs)

    def put_reference_cache(self, task: str, language: str, reference_key: str,
                            artifact_sha256: str, stats: dict[str, Any]) -> Any:
        return self._write(records.put_reference_cache, task, language, reference_key,
                           artifact_sha256, stats)

    def log_inference_events(self, rows: list[dict[str, Any]]) -> int:
        return self._write(records.log_inference_events, rows)

    def log_predictions(self, rows: list[dict[str, Any]]) -> list[int]:
        """Like log_inference_events, returning the new rows' ids (prediction ids)."""
        return self._write(traffic.log_predictions, rows)

    def record_feedback(self, task: str, labels: dict[int, str]) -> int:
        return self._write(traffic.record_feedback, task, labels)

    def note(self, action: str, *, task: str | None = None, language: str | None = None,
             adapter_id: int | None = None, after: dict[str, Any] | None = None,
             reason: str | None = None) -> Any:
        """An event that changes no registry row (e.g. the MLflow mirror repaired an alias)."""
        with self.unit_of_work() as uow:
            return uow.event(action, task=task, language=language, adapter_id=adapter_id,
                             after=after, reason=reason)

    # -- outbox (drained by the MLflow mirror) ------------------------------------------
    def outbox_pending(self, limit: int = 100) -> list[Any]:
        return self._write(outbox.pending, limit)

    def outbox_claim(self, consumer: str, limit: int = 100) -> list[Any]:
        return self._write(outbox.claim, consumer, limit)

    def outbox_release(self, consumer: str) -> int:
        return self._write(outbox.release, consumer)

    def outbox_delivered(self, outbox_id: int) -> None:
        self._write(outbox.mark_delivered, outbox_id)

    def outbox_failed(self, outbox_id: int, error: str, base_delay_s: float = 1.0) -> float:
        return self._write(outbox.mark_failed, outbox_id, error, base_delay_s)

    def outbox_backlog(self) -> dict[str, Any]:
        return self._write(outbox.backlog)

    # -- loading (the contract's third check is the caller's: compare the loaded model's
    #    fingerprint with the recorded one, see controller.training.artifact) ------------
    def encoder_dir(self, ref: str) -> tuple[BaseEncoder, Path]:
        with self.reading() as s:
            enc = encoder_by_ref(s, ref)
        return enc, self.store.materialize_tree(enc.artifact_sha256)

    def adapter_weights(self, task: str, language: str, version: int) -> tuple[Adapter, Path]:
        with self.reading() as s:
            adapter = adapter_by_version(s, task, language, version)
        return adapter, self.store.verified_path(adapter.artifact_sha256)


    # -- reads -------------------------------------------------------------------------
    def query(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a function of registry.queries in a read transaction."""
        with self.reading() as s:
            return fn(s, *args, **kwargs)

    def status(self, task: str | None = None,
               language: str | None = None) -> list[dict[str, Any]]:
        return self.query(queries.status, task, language)

    def resolve(self, task: str, language: str, routing_key: str) -> Resolution:
        return resolve(self.db, task, language, routing_key)

    def cached_resolver(self, ttl: float = 0.5) -> CachedResolver:
        return CachedResolver(self.db, ttl)
