"""Compare MLflow with the registry and put MLflow back where it differs.

The registry is the truth. For each track: the registered model exists, every registry
version has exactly one model version (found by its xlt_version tag) with the current status,
and the aliases champion / canary / previous point where the track says. A repaired alias
(someone moved it in the UI) is recorded as an `mlflow_repair` event. Tracks with outbox rows
still pending are left to the consumer: repairing them now would race their own events.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from controller.mlflow_mirror import reads
from controller.mlflow_mirror.handlers import Mirror
from controller.mlflow_mirror.naming import (
    ALIAS_FIELDS,
    VERSION_TAG,
    WATERMARK_TAG,
    encoder_model_name,
    track_model_name,
)


@dataclass
class Difference:
    model: str
    kind: str  # missing_model, missing_version, duplicate_version, status, alias, unmapped
    detail: str
    repaired: bool = False


@dataclass
class ReconcileReport:
    checked_tracks: int = 0
    checked_versions: int = 0
    differences: list[Difference] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # tracks with outbox rows pending
    events: list[int] = field(default_factory=list)  # ids of mlflow_repair events

    @property
    def clean(self) -> bool:
        return not self.differences

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "clean": self.clean}


def reconcile(mirror: Mirror, *, repair: bool = True) -> ReconcileReport:
    report = ReconcileReport()
    reg = mirror.registry
    mirror.target.forget_versions()  # people may have deleted versions since the drain
    pending = reg.query(reads.pending_keys)
    for track in reg.query(reads.tracks):
        key = f"{track['task']}/{track['language']}"
        if key in pending:
            report.skipped.append(key)
            continue
        report.checked_tracks += 1
        _track(mirror, track, report, repair)
    for encoder in reg.query(reads.encoders):
        _encoder(mirror, encoder, report, repair)
    return report


def _note(report: ReconcileReport, diff: Difference, repair: bool) -> Difference:
    diff.repaired = repair
    report.differences.append(diff)
    return diff


def _track(mirror: Mirror, track: dict[str, Any], report: ReconcileReport,
           repair: bool) -> None:
    task, language = track["task"], track["language"]
    name = track_model_name(task, language)
    target = mirror.target
    if target.get_model(name) is None:
        _note(report, Difference(name, "missing_model", "registered model is missing"), repair)
        if not repair:
            return
    if repair:
        mirror.ensure_track_model(task, language, track)
    lineage = mirror.registry.query(reads.lineage, task, language)
    mirror.remember(lineage)
    by_version: dict[str, list[Any]] = {}
    for mv in target.versions(name):
        by_version.setdefault(mv.tags.get(VERSION_TAG, ""), []).append(mv)
    for a in lineage:
        report.checked_versions += 1
        found = by_version.pop(str(a["version"]), [])
        if not found:
            _note(report, Difference(name, "missing_version",
                                     f"registry v{a['version']} has no model version"), repair)
            if repair:
                mirror.ensure_adapter_version(a["id"])
            continue
        for extra in found[1:]:  # a retried create that had in fact succeeded
            _note(report, Difference(name, "duplicate_version",
                                     f"model version {extra.version} duplicates registry "
                                     f"v{a['version']} (kept {found[0].version})"), repair)
            if repair:
                target.delete_version(name, str(extra.version))
        status = found[0].tags.get("status")
        if status != a["status"]:
            _note(report, Difference(name, "status", f"v{a['version']} status is {status} in "
                                     f"MLflow, {a['status']} in the registry"), repair)
            if repair:  # status tag and the description's status, gates and history
                mirror.refresh_status(name, {a["id"]})
    for tag, mvs in by_version.items():  # versions made by hand: reported, never deleted
        _note(report, Difference(name, "unmapped", f"model versions "
                                 f"{[str(m.version) for m in mvs]} have {VERSION_TAG}="
                                 f"{tag or '(none)'}, not a registry version"), False)
    _aliases(mirror, name, track, report, repair)
    if repair and track.get("last_event_id"):
        model = target.get_model(name)
        if int((model.tags if model else {}).get(WATERMARK_TAG) or 0) < track["last_event_id"]:
            target.set_model_tags(name, {WATERMARK_TAG: str(track["last_event_id"])})


def _aliases(mirror: Mirror, name: str, track: dict[str, Any], report: ReconcileReport,
             repair: bool) -> None:
    have = mirror.target.aliases(name)
    repairs = []
    for alias, fld in ALIAS_FIELDS.items():
        adapter_id = track.get(fld)
        if adapter_id is None:
            want, registry_version = None, None
        else:
            registry_version = mirror.adapter(adapter_id)["version"]
            want = (mirror.adapter_version(adapter_id) if repair else
                    mirror.target.find_version(name, str(registry_version)))
        if have.get(alias) == want:
            continue
        _note(report, Difference(name, "alias", f"alias {alias} is on model version "
                                 f"{have.get(alias) or '(none)'}, the registry says "
                                 f"{want or '(none)'} (registry "
                                 f"{'v' + str(registry_version) if registry_version else 'none'})"),
              repair)
        if repair:
            mirror.target.set_alias(name, alias, want, have)
            repairs.append({"alias": alias, "was": have.get(alias), "now": want,
                            "registry_version": registry_version})
    if repairs:
        event = mirror.registry.note(
            "mlflow_repair", task=track["task"], language=track["language"],
            after={"model": name, "repairs": repairs},
            reason="MLflow aliases differed from the registry track; put back by xlt mlflow sync")
        report.events.append(event.id)


def _encoder(mirror: Mirror, encoder: dict[str, Any], report: ReconcileReport,
             repair: bool) -> None:
    name = encoder_model_name(encoder["name"])
    report.checked_versions += 1
    if mirror.target.get_model(name) is not None and \
            mirror.target.find_version(name, encoder["version"]) is not None:
        return
    _note(report, Difference(name, "missing_version",
                             f"base encoder {encoder['ref']} has no model version"), repair)
    if repair:
        mirror.ensure_encoder_version(encoder)
