"""Training and drift runs in MLflow, for people to compare; called by controller.training and
controller.drift.

Best effort by design: the registry (adapter rows, drift reports, the outbox) is the reliable
record, so an unreachable MLflow costs a warning and a None, never the caller's work.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.mlflow_mirror.connection import describe, fast_fail, open_client
from controller.mlflow_mirror.experiments import ensure_experiment, find_run
from controller.mlflow_mirror.models import adapter_model
from controller.mlflow_mirror.naming import (
    MAX_TAG_VALUE,
    VERSION_TAG,
    experiment_name,
    safe_key,
    tag_value,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from registry.service import Registry

log = logging.getLogger(__name__)
MAX_PARAM_VALUE = 6000  # MLflow's limit for a param value



def tracking_uri_of(target: Registry | str | None) -> str:
    """A Registry's configured MLflow, a URI as given, or the environment's default."""
    if target is None:
        from registry.settings import load_settings

        return load_settings().mlflow_tracking_uri
    if isinstance(target, str):
        return target
    return target.settings.mlflow_tracking_uri


def _field(record: Any, *names: str) -> Any:
    for name in names:
        value = record.get(name) if isinstance(record, Mapping) else getattr(record, name, None)
        if value is not None:
            return value
    return None


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts become dotted keys: {"lora": {"r": 16}} -> {"lora.r": 16}."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, full + "."))
        else:
            out[safe_key(full)] = value
    return out


def _metric_steps(value: Any) -> list[float] | None:
    """A number is one step, a list of numbers one step each (e.g. loss per epoch)."""
    if isinstance(value, bool):
        return [float(value)]
    if isinstance(value, int | float):
        return [float(value)] if math.isfinite(value) else None
    if isinstance(value, list | tuple) and value and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return [float(v) for v in value if math.isfinite(v)]
    return None


def _log_values(client: MlflowClient, run_id: str, params: Mapping[str, Any],
                metrics: Mapping[str, Any]) -> None:
    from mlflow.entities import Metric, Param

    now = int(datetime.now(UTC).timestamp() * 1000)
    plist = [Param(k, (v if isinstance(v, str) else tag_value(v))[:MAX_PARAM_VALUE])
             for k, v in flatten(params).items()]
    mlist = [Metric(k, value, now, step) for k, v in flatten(metrics).items()
             for step, value in enumerate(_metric_steps(v) or [])]
    for i in range(0, max(len(plist), len(mlist)), 100):  # MLflow's per-request limits
        client.log_batch(run_id, metrics=mlist[i:i + 100], params=plist[i:i + 100])


def _start(client: MlflowClient, tracking_uri: str, task: str, language: str, run_name: str,
           tags: dict[str, str]) -> str:
    exp = ensure_experiment(client, tracking_uri, experiment_name(task, language))
    clean = {safe_key(k): v[:MAX_TAG_VALUE] for k, v in tags.items()}
    return client.create_run(exp, run_name=run_name, tags=clean).info.run_id


def _abandon(client: MlflowClient | None, run_id: str | None, what: str,
             exc: BaseException) -> None:
    log.warning("mlflow: could not log the %s run (%s); the registry keeps the record",
                what, describe(exc))
    if client is not None and run_id is not None:
        # MLflow is already failing us; the warning above says enough
        with contextlib.suppress(Exception):
            client.set_terminated(run_id, "FAILED")


def log_training_run(target: Registry | str | None, adapter: Any, params: Mapping[str, Any],
                     metrics: Mapping[str, Any], artifact: str | Path | None = None,
                     gate_report: Mapping[str, Any] | list[Any] | None = None, *,
                     run_name: str | None = None, upload_artifact: bool = False
                     ) -> str | None:
    """Log one training (and evaluation) run of an adapter; returns the run id or None.

    `adapter` is a registry Adapter or its dict (`registry.queries.adapter_dict`);
    `metrics` values may be numbers or lists (one step each); `artifact` is the weights'
    path or link, recorded as a tag (uploaded only with upload_artifact=True);
    `gate_report` (the gates' results) is stored as gate_report.json.
    """
    client = run_id = None
    try:
        tracking_uri = tracking_uri_of(target)
        task, language = _field(adapter, "task"), _field(adapter, "language")
        version = _field(adapter, "version")
        kind = "training" if gate_report is None else "evaluation"
        tags = {"xlt.kind": kind, "task": task, "language": language,
                VERSION_TAG: tag_value(version), "status": tag_value(_field(adapter, "status")),
                "base": tag_value(_field(adapter, "base", "base_ref")),
                "fingerprint": tag_value(_field(adapter, "base_fingerprint")),
                "teacher": tag_value(_field(adapter, "teacher_language")),
                "datasets": tag_value(_field(adapter, "datasets", "dataset_ids")),
                "artifact_sha256": tag_value(_field(adapter, "artifact_sha256")),
                "artifact_uri": _link(artifact)}
        with fast_fail():
            client = open_client(tracking_uri)
            run_id = _training_run(client, tracking_uri, adapter, tags) if kind == "training" \
                else _start(client, tracking_uri, task, language,
                            run_name or f"gates {task}/{language} v{version}", tags)
            _log_values(client, run_id, params, metrics)
            _log_datasets(client, run_id, adapter, kind)
            if gate_report is not None:
                client.log_dict(run_id, gate_report, "gate_report.json")
                gates = gate_report.get("gates", []) if isinstance(gate_report, Mapping) \
                    else gate_report
                _log_gates(client, run_id, gates)
            if upload_artifact and artifact is not None and Path(artifact).is_file():
                client.log_artifact(run_id, str(artifact), "weights")
            client.set_terminated(run_id, "FINISHED")
            if kind == "training" and not isinstance(target, str | None):
                _log_model(client, tracking_uri, target, adapter)
        return run_id
    except Exception as exc:  # never fail training because the mirror is down
        _abandon(client, run_id, "training", exc)
        return None


def _log_datasets(client: MlflowClient, run_id: str, adapter: Any, kind: str) -> None:
    """Each registered dataset the adapter's training read, as an MLflow dataset input
    (name, digest = sha256, source, rows, schema), so the run page lists them; a gate
    (evaluation) run names the held-out splits it was judged on."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    hyper = _field(adapter, "hyperparams") or {}
    read = hyper.get("datasets") if isinstance(hyper, Mapping) else None
    inputs = []
    for d in read if isinstance(read, list) else []:
        if not isinstance(d, Mapping) or not d.get("sha256"):
            continue
        held_out = d.get("split") in ("test", "dev")
        if kind in ("evaluation", "drift") and not held_out:
            continue
        columns = {"parallel": ["id", "source_text", "text"], "unlabelled": ["id", "text"]
                   }.get(str(d.get("kind")), ["id", "text", "label"])
        schema = json.dumps({"mlflow_colspec": [{"name": c, "type": "string"}
                                                for c in columns]})
        context = {"evaluation": "evaluation", "drift": "drift-reference"}.get(
            kind, "validation" if held_out else "training")
        inputs.append(DatasetInput(
            Dataset(name=str(d.get("ref")), digest=str(d["sha256"])[:36],
                    source_type="xlt-registry",
                    source=json.dumps({"dataset_id": d.get("id"), "uri": f"store:{d['sha256']}",
                                       "source": d.get("source")}),
                    schema=schema, profile=json.dumps({"num_rows": d.get("rows")})),
            [InputTag("mlflow.data.context", context)]))
    if inputs:
        client.log_inputs(run_id, datasets=inputs)


def _log_gates(client: MlflowClient, run_id: str, gates: Any) -> None:
    metrics: dict[str, Any] = {}
    for gate in gates if isinstance(gates, list) else []:
        if isinstance(gate, Mapping) and gate.get("name"):
            if _metric_steps(gate.get("value")):
                metrics[f"gate.{gate['name']}"] = gate["value"]
            client.set_tag(run_id, safe_key(f"gate.{gate['name']}.passed"),
                           tag_value(bool(gate.get("passed"))))
    if metrics:
        _log_values(client, run_id, {}, metrics)


def _link(artifact: str | Path | None) -> str:
    if artifact is None:
        return ""
    text = str(artifact)
    if "://" in text:
        return text
    return Path(text).resolve().as_uri()


def _training_run(client: MlflowClient, tracking_uri: str, adapter: Any,
                  tags: dict[str, str]) -> str:
    """The adapter's training run: the one the mirror may have made already (it logs the
    model version's model there), else a new one. One run per adapter version."""
    exp = ensure_experiment(client, tracking_uri, experiment_name(tags["task"],
                                                                  tags["language"]))
    run = find_run(client, exp, {k: tags[k] for k in ("xlt.kind", VERSION_TAG,
                                                       "artifact_sha256")})
    if run is None:
        return _start(client, tracking_uri, tags["task"], tags["language"],
                      f"train {tags['task']}/{tags['language']} v{tags[VERSION_TAG]}", tags)
    clean = {safe_key(k): v[:MAX_TAG_VALUE] for k, v in tags.items()}
    for key, value in clean.items():
        if run.data.tags.get(key) != value:
            client.set_tag(run.info.run_id, key, value)
    return str(run.info.run_id)


def _log_model(client: MlflowClient, tracking_uri: str, registry: Registry,
               adapter: Any) -> None:
    """The adapter's MLflow model in its training run (the mirror would log it otherwise,
    at the first outbox drain; logging it here makes the run complete at once)."""
    from controller.mlflow_mirror import reads
    view = registry.query(reads.adapter_view, int(_field(adapter, "id")))
    encoder = registry.query(reads.encoder_by_ref, view["base"])
    adapter_model(client, tracking_uri, registry, view, encoder)


def log_drift_run(task: str, language: str, json_path: str | Path | None,
                  html_path: str | Path | None, scores: Mapping[str, Any], *,
                  verdict: str | None = None, target: Registry | str | None = None,
                  report_id: int | None = None, pictures: Sequence[str | Path] = (),
                  datasets: Sequence[Mapping[str, Any]] = ()) -> str | None:
    """Log one drift check: scores as metrics (nested dicts flattened, booleans 0/1), the
    JSON and HTML reports and the pictures (PNG) as artifacts, and the registered datasets
    its reference was read from as dataset inputs. Returns the run id, or None if MLflow
    failed."""
    client = run_id = None
    try:
        tracking_uri = tracking_uri_of(target)
        tags = {"xlt.kind": "drift", "task": task, "language": language,
                "verdict": tag_value(verdict), "report_id": tag_value(report_id)}
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        with fast_fail():
            client = open_client(tracking_uri)
            run_id = _start(client, tracking_uri, task, language, f"drift {stamp}", tags)
            _log_values(client, run_id, {}, scores)
            _log_datasets(client, run_id, {"hyperparams": {"datasets": list(datasets)}},
                          "drift")
            for path in (json_path, html_path, *pictures):
                if path is not None and Path(path).is_file():
                    client.log_artifact(run_id, str(path), "drift")
            client.set_terminated(run_id, "FINISHED")
        return run_id
    except Exception as exc:  # a drift check must not fail because MLflow is down
        _abandon(client, run_id, "drift", exc)
        return None
