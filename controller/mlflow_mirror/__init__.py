"""The MLflow mirror: MLflow shows people what the registry decided, fed from the outbox.

- `drain(registry)`: deliver pending outbox rows (in order per track, retried with backoff);
- `sync(registry)`: drain, then reconcile and repair MLflow where it differs;
- `log_training_run(...)`, `log_drift_run(...)`: runs for people to compare, best effort.

MLflow is imported lazily: the registry and the CLI must work when it is slow or absent.
"""

from controller.mlflow_mirror.consumer import DrainReport, drain
from controller.mlflow_mirror.errors import MlflowUiError, MlflowUnavailable
from controller.mlflow_mirror.handlers import Mirror, apply
from controller.mlflow_mirror.naming import encoder_model_name, track_model_name
from controller.mlflow_mirror.reconcile import ReconcileReport, reconcile
from controller.mlflow_mirror.runs import log_drift_run, log_training_run
from controller.mlflow_mirror.sync import SyncReport, sync

__all__ = [
    "DrainReport", "Mirror", "MlflowUiError", "MlflowUnavailable", "ReconcileReport",
    "SyncReport", "apply", "drain", "encoder_model_name", "log_drift_run", "log_training_run",
    "reconcile", "sync", "track_model_name",
]
