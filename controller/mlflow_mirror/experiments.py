"""Experiments and runs looked up or created by name and tags: the ground that the run
logger (runs.py) and the model logger (models.py) share."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from controller.mlflow_mirror.naming import EXPERIMENT_KIND, local_artifact_root, safe_key

if TYPE_CHECKING:
    from mlflow import MlflowClient


def experiment_description(name: str) -> str:
    parts = name.split("/")
    if len(parts) == 3:
        return (f"Training, evaluation (gates) and drift runs of task {parts[1]} in language "
                f"{parts[2]}, logged by xlt. Each training run holds the adapter version's "
                f"MLflow model; the registered model xlt.{parts[1]}.{parts[2]} lists them.")
    return f"Runs logged by xlt ({name})."


def ensure_experiment(client: MlflowClient, tracking_uri: str, name: str,
                      description: str | None = None) -> str:
    """The experiment's id, created if missing, tagged for MLflow's classic ML view and
    described (an experiment made by an older xlt gets the tags on first use)."""
    from mlflow.exceptions import MlflowException

    tags = {"managed_by": "xlt", **EXPERIMENT_KIND,
            "mlflow.note.content": description or experiment_description(name)}
    found = client.get_experiment_by_name(name)
    if found is None:
        root = local_artifact_root(tracking_uri)
        location = (root / safe_key(name).replace("/", "_")).as_uri() if root else None
        try:
            return client.create_experiment(name, artifact_location=location, tags=tags)
        except MlflowException:  # created meanwhile by another process
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    for key, value in tags.items():
        if found.tags.get(key) != value:
            client.set_experiment_tag(found.experiment_id, key, value)
    return str(found.experiment_id)


def find_run(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> Any | None:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    found = client.search_runs([experiment_id], filter_string=query, max_results=5,
                               order_by=["attributes.start_time ASC"])
    return found[0] if found else None
