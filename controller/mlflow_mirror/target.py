"""The MLflow side of the mirror: idempotent operations on registered models, versions,
tags and aliases. Every method can run twice with the same effect as once."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from controller.mlflow_mirror.connection import global_uri, open_client
from controller.mlflow_mirror.naming import VERSION_TAG

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel


def _code(exc: BaseException) -> str | None:
    return getattr(exc, "error_code", None)


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


class MlflowTarget:
    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        # (model name, xlt_version) -> MLflow version; lives for one drain or sync only
        self._versions: dict[tuple[str, str], str] = {}

    @cached_property
    def client(self) -> MlflowClient:
        return open_client(self.tracking_uri)

    # -- registered models ---------------------------------------------------------------
    def get_model(self, name: str) -> RegisteredModel | None:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(name)
        except MlflowException as exc:
            if _code(exc) == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def ensure_model(self, name: str, description: str,
                     tags: dict[str, str] | None = None) -> RegisteredModel:
        from mlflow.exceptions import MlflowException

        model = self.get_model(name)
        if model is None:
            try:
                return self.client.create_registered_model(name, tags=tags,
                                                           description=description)
            except MlflowException as exc:  # another consumer created it meanwhile
                if _code(exc) != "RESOURCE_ALREADY_EXISTS":
                    raise
                model = self.get_model(name)
                assert model is not None
        if (model.description or "") != description:
            self.client.update_registered_model(name, description=description)
        self.set_model_tags(name, tags or {}, current=model.tags)
        return model

    def set_model_tags(self, name: str, tags: dict[str, str],
                       current: dict[str, str] | None = None) -> None:
        if current is None:
            model = self.get_model(name)
            current = model.tags if model is not None else {}
        for key, value in tags.items():
            if current.get(key) != value:
                self.client.set_registered_model_tag(name, key, value)

    # -- versions ------------------------------------------------------------------------
    def versions(self, name: str, xlt_version: str | None = None) -> list[ModelVersion]:
        """Model versions of `name` (those mapped to one registry version when given),
        lowest MLflow version first."""
        query = f"name='{_quote(name)}'"
        if xlt_version is not None:
            query += f" and tags.{VERSION_TAG}='{_quote(xlt_version)}'"
        found = list(self.client.search_model_versions(filter_string=query, max_results=10000))
        return sorted(found, key=lambda v: int(v.version))

    def find_version(self, name: str, xlt_version: str) -> str | None:
        """The MLflow version mapped to a registry version. If a crashed or concurrent create
        left duplicates, the lowest one counts (reconcile deletes the rest)."""
        key = (name, xlt_version)
        if key not in self._versions:
            found = self.versions(name, xlt_version)
            if not found:
                return None
            self._versions[key] = str(found[0].version)
        return self._versions[key]

    def ensure_version(self, name: str, xlt_version: str, source: str, tags: dict[str, str],
                       description: str, run_id: str | None = None) -> str:
        """Create the model version for a registry version unless it exists; bring its tags
        and description up to date either way. Returns the MLflow version number."""
        tags = {**tags, VERSION_TAG: xlt_version}
        existing = self.find_version(name, xlt_version)
        if existing is None:
            # a logged model's source needs its id on a server; an embedded store resolves
            # models:/m-... through MLflow's global URI
            model_id = source.removeprefix("models:/") if source.startswith("models:/m-") \
                else None
            with global_uri(self.tracking_uri):
                mv = self.client.create_model_version(name, source=source, run_id=run_id,
                                                      tags=tags, description=description,
                                                      await_creation_for=0,
                                                      model_id=model_id)
            self._versions[(name, xlt_version)] = str(mv.version)
            return str(mv.version)
        mv = self.client.get_model_version(name, existing)
        if (mv.description or "") != description:
            self.client.update_model_version(name, existing, description=description)
        self.set_version_tags(name, existing, tags, current=mv.tags)
        return existing

    def set_description(self, name: str, version: str, description: str) -> None:
        if (self.client.get_model_version(name, version).description or "") != description:
            self.client.update_model_version(name, version, description=description)

    def set_version_tags(self, name: str, version: str, tags: dict[str, str],
                         current: dict[str, str] | None = None) -> None:
        if current is None:
            current = self.client.get_model_version(name, version).tags
        for key, value in tags.items():
            if current.get(key) != value:
                self.client.set_model_version_tag(name, version, key, value)

    def forget_versions(self) -> None:
        """Drop the version mapping cache (before comparing with what MLflow holds now)."""
        self._versions.clear()

    def delete_version(self, name: str, version: str) -> None:
        self.client.delete_model_version(name, version)
        self._versions = {k: v for k, v in self._versions.items()
                          if not (k[0] == name and v == version)}

    # -- aliases -------------------------------------------------------------------------
    def aliases(self, name: str) -> dict[str, str]:
        model = self.get_model(name)
        return {} if model is None else {k: str(v) for k, v in (model.aliases or {}).items()}

    def set_alias(self, name: str, alias: str, version: str | None,
                  current: dict[str, str] | None = None) -> bool:
        """Point `alias` at `version`, or remove it for None. Returns whether it changed."""
        if current is None:
            current = self.aliases(name)
        if current.get(alias) == version:
            return False
        if version is None:
            self.client.delete_registered_model_alias(name, alias)
        else:
            self.client.set_registered_model_alias(name, alias, version)
        return True

    def describe(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri}
