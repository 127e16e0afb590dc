"""Errors of the MLflow mirror, reported by the CLI as one line."""

from __future__ import annotations

from registry.errors import XltError


class MlflowUnavailable(XltError):
    """MLflow could not be reached; nothing is lost, the outbox keeps the rows. Exit code 2,
    like an unreachable registry database: check the URL and that the server runs."""

    exit_code = 2


class MlflowUiError(XltError):
    """The MLflow UI cannot be started as asked (remote store, port taken, no mlflow)."""

    exit_code = 2
