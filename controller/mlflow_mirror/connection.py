"""Opening MLflow clients that fail fast, and telling "MLflow is down" from other errors.

The outbox is the retry mechanism (with backoff per row), so the mirror must not sit in
MLflow's own HTTP retry loop: by default a request to a dead server is retried 7 times with
exponential backoff, several minutes per call.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing mlflow costs ~2 s; callers that never reach it should not pay
    from mlflow import MlflowClient

# MLflow reads these on every request, so setting them around our calls is enough
FAST_FAIL_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
UNAVAILABLE_CODES = {"TEMPORARILY_UNAVAILABLE", "SERVICE_UNDER_MAINTENANCE"}
UNAVAILABLE_HTTP = {502, 503, 504}
# MLflow's tracking/registry URIs are process-wide: two threads of one process (an inline
# training logging its model while the outbox drain logs another) must not swap them under
# each other, or one logs into the other's store (or the default ./mlflow.db)
_GLOBAL_URI_LOCK = threading.RLock()


@contextmanager
def fast_fail() -> Iterator[None]:
    """Fail MLflow HTTP calls at once unless the user set these variables themselves."""
    with _GLOBAL_URI_LOCK:  # the environment is process-wide too
        saved = {key: os.environ.get(key) for key in FAST_FAIL_ENV}
        for key, value in FAST_FAIL_ENV.items():
            os.environ.setdefault(key, value)
        try:
            yield
        finally:
            for key, old in saved.items():
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old


@contextmanager
def global_uri(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's process-wide URIs at one store for a call, then put them back: some
    MLflow 3 paths (the fluent log_model; resolving a `models:/m-...` source when creating a
    model version) read the global URI, whatever the client was opened on.

    mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI for subprocesses, and
    get_tracking_uri answers the default (./mlflow.db) when none was set; restoring with those
    would leave every later `xlt` subprocess logging to the working directory's store. So the
    raw settings and the environment are saved and put back exactly."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    with _GLOBAL_URI_LOCK:
        old_tracking = getattr(tracking_utils, "_tracking_uri", None)
        old_registry = getattr(registry_utils, "_registry_uri", None)
        saved = {key: os.environ.get(key)
                 for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(old_tracking)
            registry_utils._registry_uri = old_registry  # set_registry_uri(None) keeps the env
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def open_client(tracking_uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    # the registry lives in the same store as the runs, whatever MLFLOW_REGISTRY_URI says
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def is_unavailable(exc: BaseException) -> bool:
    """True when the error says MLflow (or its backing store) cannot be reached at all, so
    every further call in this drain would fail the same way."""
    import requests
    from sqlalchemy.exc import OperationalError

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, requests.exceptions.ConnectionError | requests.exceptions.Timeout
                      | ConnectionError | TimeoutError | OperationalError):
            return True
        code = getattr(cur, "error_code", None)
        if code in UNAVAILABLE_CODES:
            return True
        status = getattr(getattr(cur, "response", None), "status_code", None)
        if status in UNAVAILABLE_HTTP:
            return True
        cur = cur.__cause__ or cur.__context__
    text = str(exc)
    return "Max retries exceeded" in text or "Connection refused" in text


def short_reason(exc: BaseException) -> str:
    """A few words for a one-line CLI error; MLflow's own messages run to several hundred."""
    import requests

    cur: BaseException | None = exc
    while cur is not None:
        if isinstance(cur, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cur, requests.exceptions.Timeout | TimeoutError):
            return "timed out"
        cur = cur.__cause__ or cur.__context__
    return describe(exc)[:200]


def describe(exc: BaseException) -> str:
    """One line for the outbox's last_error and for reports."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:1000]
