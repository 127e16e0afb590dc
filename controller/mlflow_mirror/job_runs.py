"""The MLflow runs of the controller's jobs, logged by the mirror from the outbox: a
training run when a train job succeeds, a gate run when a gate report is recorded, a drift
run when a drift report is. Workers log nothing themselves, so the MLflow view is the same
whichever executor ran the job (a thread, a subprocess, a Ray actor with no MLflow store)
and survives MLflow being down (the outbox row waits and is delivered later). A run MLflow
refused raises, so the row is retried; the track model's event watermark keeps a delivered
row from logging twice."""

from __future__ import annotations

from typing import Any

from registry import queries
from registry.schema import DriftReport, Job


class RunNotLogged(RuntimeError):
    """MLflow did not take the run: the outbox row is retried with backoff."""


def log_job_run(mirror: Any, action: str, payload: dict[str, Any],
                after: dict[str, Any]) -> None:
    task, language = payload["task"], payload["language"]
    uri = mirror.target.tracking_uri
    reg = mirror.registry
    if action == "job_succeeded" and after.get("kind") == "train":
        _training_run(reg, uri, task, language, after)
    elif action == "gate" and after.get("version") is not None:
        from controller.mlflow_mirror.runs import log_training_run

        adapter = reg.query(queries.show_adapter, task, language, int(after["version"]))
        _check(log_training_run(uri, adapter, {"split": "test+variants",
                                                "kind": "evaluation"},
                                dict(after.get("metrics") or {}),
                                gate_report=list(after.get("gates") or []),
                                run_name=f"gates v{after['version']}"), "gate")
    elif action == "drift_check" and after.get("report_id") is not None:
        _drift_run(reg, uri, task, language, int(after["report_id"]))


def _training_run(reg: Any, uri: str, task: str, language: str,
                  after: dict[str, Any]) -> None:
    from controller.mlflow_mirror.runs import log_training_run

    version = (after.get("result") or {}).get("version")
    if version is None:
        return
    with reg.reading() as s:
        job = s.get(Job, int(after["job_id"]))
        params = dict(job.params or {}) if job is not None else {}
    adapter = reg.query(queries.show_adapter, task, language, int(version))
    metrics = {k: v for k, v in (adapter.get("metrics") or {}).items()
               if isinstance(v, int | float) and not isinstance(v, bool)}
    _check(log_training_run(uri, adapter, {k: v for k, v in params.items()
                                           if isinstance(v, int | float | str)},
                            metrics, artifact=reg.store.blob_path(adapter["artifact_sha256"])),
           "training")


def _drift_run(reg: Any, uri: str, task: str, language: str, report_id: int) -> None:
    from controller.mlflow_mirror.runs import log_drift_run

    with reg.reading() as s:
        row = s.get(DriftReport, report_id)
        if row is None:
            return
        paths, signals = dict(row.report_paths or {}), dict(row.signals or {})
        reference, verdict = dict(row.reference or {}), row.verdict
    if reference.get("job_id") is None:
        return  # `xlt drift check` logged its run itself
    scores = {name: sig.get("score") for name, sig in signals.items() if isinstance(sig, dict)}
    _check(log_drift_run(task, language, paths.get("json"), paths.get("html"), scores,
                         verdict=verdict, target=uri, report_id=report_id,
                         pictures=[paths["projection"]] if paths.get("projection") else [],
                         datasets=list(reference.get("datasets") or [])), "drift")


def _check(run_id: str | None, kind: str) -> None:
    if run_id is None:
        raise RunNotLogged(f"MLflow did not take the {kind} run (see the warning above); "
                           "the outbox retries it")
