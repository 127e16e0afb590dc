"""Turning one outbox row into MLflow calls.

Every handler is idempotent. Track events carry the track's state after the change; the
aliases are set from it, so MLflow walks through the same states as the registry, in order.
A registered-model tag (xlt_event_id) remembers the newest event applied, so a replayed older
row is skipped instead of moving an alias backwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from controller.mlflow_mirror import content, reads
from controller.mlflow_mirror.job_runs import log_job_run
from controller.mlflow_mirror.naming import (
    ALIAS_FIELDS,
    WATERMARK_TAG,
    encoder_model_name,
    safe_key,
    tag_value,
    track_model_name,
)
from controller.mlflow_mirror.target import MlflowTarget
from registry.service import Registry

# events that concern a track and create its registered model if missing
TRACK_ACTIONS = {"create_track", "register_adapter", "canary_start", "canary_weight",
                 "canary_abort", "promote", "rollback", "reject", "gated", "phase", "gate",
                 "canary_analysis", "mlflow_repair"}
# events that only annotate an existing track model (a drift check may precede any track)
ANNOTATIONS = {"drift_check", "job_created", "job_running", "job_succeeded", "job_failed"}


@dataclass
class Mirror:
    """A registry and the MLflow it feeds; caches live for one drain or sync."""

    registry: Registry
    target: MlflowTarget
    _adapters: dict[int, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, registry: Registry, tracking_uri: str | None = None) -> Mirror:
        return cls(registry, MlflowTarget(tracking_uri or registry.settings.mlflow_tracking_uri))

    def adapter(self, adapter_id: int) -> dict[str, Any]:
        if adapter_id not in self._adapters:
            view = self.registry.query(reads.adapter_view, adapter_id)
            if view is None:
                raise LookupError(f"adapter id {adapter_id} is not in the registry")
            self._adapters[adapter_id] = view
        return self._adapters[adapter_id]

    def remember(self, views: list[dict[str, Any]]) -> None:
        self._adapters.update({a["id"]: a for a in views})

    def forget(self, adapter_ids: set[int]) -> None:
        """Drop cached views whose status may have changed."""
        for adapter_id in adapter_ids:
            self._adapters.pop(adapter_id, None)

    def blob_links(self, sha: str) -> tuple[str, str]:
        """(content address, file:// link) of an artifact in the registry's store, for the
        description (the model version's source is its MLflow model)."""
        path = self.registry.store.blob_path(sha)
        return f"xlt://sha256/{sha}", content.blob_uri(path)

    # -- objects -------------------------------------------------------------------------
    def ensure_track_model(self, task: str, language: str,
                           state: dict[str, Any] | None = None) -> Any:
        tags = content.track_tags({"task": task, "language": language, **(state or {})})
        tags = {k: v for k, v in tags.items() if v}  # never blank what a fuller source wrote
        return self.target.ensure_model(track_model_name(task, language),
                                        content.track_description(task, language), tags)

    def ensure_adapter_version(self, adapter_id: int) -> str:
        """The adapter's model version: its source is the MLflow model logged in its
        training run (run_id), so the version loads and serves from MLflow alone."""
        from controller.mlflow_mirror.models import adapter_model

        a = self.adapter(adapter_id)
        _, link = self.blob_links(a["artifact_sha256"])
        name = track_model_name(a["task"], a["language"])
        self.ensure_track_model(a["task"], a["language"])
        if self.target.find_version(name, str(a["version"])) is None:
            encoder = self.registry.query(reads.encoder_by_ref, a["base"])
            run_id, source = adapter_model(self.target.client, self.target.tracking_uri,
                                           self.registry, a, encoder)
        else:
            run_id, source = None, ""  # exists: only tags and description are brought up
        return self.target.ensure_version(
            name, str(a["version"]), source, content.adapter_tags(a),
            content.adapter_description(a, link), run_id=run_id)

    def adapter_version(self, adapter_id: int) -> str:
        """The MLflow version of a registry adapter, created if it is missing."""
        a = self.adapter(adapter_id)
        found = self.target.find_version(track_model_name(a["task"], a["language"]),
                                         str(a["version"]))
        return found if found is not None else self.ensure_adapter_version(adapter_id)

    def ensure_encoder_version(self, encoder: dict[str, Any]) -> str:
        """The base's model version, its source the base's own MLflow model (logged once;
        every adapter model of this base refers to it)."""
        from controller.mlflow_mirror.models import encoder_model

        name = encoder_model_name(encoder["name"])
        self.target.ensure_model(name, content.encoder_model_description(encoder["name"]),
                                 dict(content.MANAGED))
        _, link = self.blob_links(encoder["artifact_sha256"])
        run_id, source = None, ""
        if self.target.find_version(name, encoder["version"]) is None:
            run_id, source = encoder_model(self.target.client, self.target.tracking_uri,
                                           self.registry, encoder)
        return self.target.ensure_version(name, encoder["version"], source,
                                          content.encoder_tags(encoder, link),
                                          content.encoder_description(encoder, link),
                                          run_id=run_id)

    def refresh_status(self, name: str, adapter_ids: set[int]) -> None:
        """Put each adapter's current registry state (status, gates, canary steps, reasons)
        on its version's tags and description."""
        self.forget(adapter_ids)
        for adapter_id in sorted(adapter_ids):
            version = self.adapter_version(adapter_id)
            a = self.adapter(adapter_id)
            _, link = self.blob_links(a["artifact_sha256"])
            self.target.set_version_tags(name, version, content.adapter_tags(a))
            self.target.set_description(name, version, content.adapter_description(a, link))

    def apply_aliases(self, name: str, state: dict[str, Any],
                      current: dict[str, str]) -> dict[str, tuple[str | None, str | None]]:
        """Set champion/canary/previous from a track state; returns what changed."""
        changed = {}
        for alias, fld in ALIAS_FIELDS.items():
            adapter_id = state.get(fld)
            want = self.adapter_version(adapter_id) if adapter_id is not None else None
            if self.target.set_alias(name, alias, want, current):
                changed[alias] = (current.get(alias), want)
        return changed


def _moved(before: dict[str, Any] | None, after: dict[str, Any]) -> set[int]:
    """Adapters that gained or lost a role (champion, canary, previous) in this change; only
    their status can have changed, so a `phase` event costs no MLflow call here."""
    before = before or {}
    ids: set[int] = set()
    for fld in ALIAS_FIELDS.values():
        if before.get(fld) != after.get(fld):
            ids |= {x for x in (before.get(fld), after.get(fld)) if x is not None}
    return ids


def apply(mirror: Mirror, payload: dict[str, Any]) -> str:
    """Apply one outbox payload; returns a word for the report (applied, replayed, ignored)."""
    action = payload.get("action") or ""
    if action == "register_encoder":
        encoder = mirror.registry.query(reads.encoder_view, payload.get("encoder_id") or 0)
        if encoder is None:
            return "ignored"
        mirror.ensure_encoder_version(encoder)
        return "applied"
    task, language = payload.get("task"), payload.get("language")
    if not task or not language or action not in TRACK_ACTIONS | ANNOTATIONS:
        return "ignored"  # datasets, global notes: nothing to mirror
    name = track_model_name(task, language)
    after = payload.get("after") if isinstance(payload.get("after"), dict) else {}
    if action in ANNOTATIONS:
        model = mirror.target.get_model(name)
        if model is None:
            return "ignored"
    else:
        state = after if "champion_id" in after else None
        model = mirror.ensure_track_model(task, language, state)
    event_id = int(payload.get("event_id") or 0)
    if int(model.tags.get(WATERMARK_TAG) or 0) >= event_id > 0:
        return "replayed"
    _apply_track_event(mirror, name, action, payload, after, model)
    log_job_run(mirror, action, payload, after)  # a job's run, whichever executor ran it
    mirror.target.set_model_tags(name, {WATERMARK_TAG: str(event_id)})
    return "applied"


def _apply_track_event(mirror: Mirror, name: str, action: str, payload: dict[str, Any],
                       after: dict[str, Any], model: Any) -> None:
    adapter_id = payload.get("adapter_id")
    if action == "register_adapter" and adapter_id is not None:
        mirror.ensure_adapter_version(adapter_id)
    elif "champion_id" in after:  # a change of the track: canary, promote, rollback, ...
        current = {k: str(v) for k, v in (model.aliases or {}).items()}
        mirror.apply_aliases(name, after, current)
        before = payload.get("before") if isinstance(payload.get("before"), dict) else None
        involved = _moved(before, after) | ({adapter_id} if adapter_id else set())
        mirror.refresh_status(name, involved)
    elif action in ("gated", "reject", "gate", "canary_analysis") and adapter_id is not None:
        # the version page (description) is re-rendered from the registry: the gate report,
        # every canary step so far, and the status with its reason
        mirror.refresh_status(name, {adapter_id})
    elif action == "drift_check":
        mirror.target.set_model_tags(name, {
            "drift.verdict": tag_value(after.get("verdict")),
            "drift.report_id": tag_value(after.get("report_id")),
            "drift.drifted": tag_value(after.get("drifted"))})
    elif action.startswith("job_") and after.get("kind"):
        status = after.get("status") or action.removeprefix("job_")
        mirror.target.set_model_tags(name, {safe_key(f"job.{after['kind']}"): tag_value(
            {"job_id": after.get("job_id"), "status": status, "error": after.get("error")})})
