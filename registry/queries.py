"""Read models: plain dicts for the CLI's tables and --json. Reads never take write locks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from registry.commands.lookups import adapter_by_version, encoder_by_ref
from registry.errors import NotFound
from registry.languages import canonical_language
from registry.schema import Adapter, BaseEncoder, BaseUpgrade, Dataset, Event, Task, Track
from registry.upgrades import UpgradeState


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def encoder_dict(e: BaseEncoder) -> dict[str, Any]:
    return {"id": e.id, "ref": e.ref, "name": e.name, "version": e.version,
            "fingerprint": e.fingerprint, "fingerprint_inputs": e.fingerprint_inputs,
            "artifact_sha256": e.artifact_sha256, "source": e.source,
            "created_at": _iso(e.created_at), "created_by": e.created_by}


def adapter_dict(a: Adapter, base_ref: str | None = None) -> dict[str, Any]:
    return {"id": a.id, "task": a.task, "language": a.language, "version": a.version,
            "status": a.status, "base": base_ref, "base_fingerprint": a.base_fingerprint,
            "kind": a.kind, "config": a.config, "teacher_language": a.teacher_language,
            "dataset_ids": a.dataset_ids, "metrics": a.metrics, "hyperparams": a.hyperparams,
            "parent_adapter_id": a.parent_adapter_id, "artifact_sha256": a.artifact_sha256,
            "created_at": _iso(a.created_at), "created_by": a.created_by}


def dataset_dict(d: Dataset) -> dict[str, Any]:
    return {"id": d.id, "ref": d.ref, "name": d.name, "language": d.language, "split": d.split,
            "version": d.version, "sha256": d.sha256, "rows": d.rows, "uri": d.uri,
            "source": d.source, "licence": d.licence, "consent": d.consent,
            "collected_at": _iso(d.collected_at), "created_at": _iso(d.created_at),
            "task": d.task, "kind": d.kind, "meta": d.meta or {}}


def event_dict(e: Event) -> dict[str, Any]:
    return {"id": e.id, "at": _iso(e.at), "actor": e.actor, "action": e.action,
            "task": e.task, "language": e.language, "adapter_id": e.adapter_id,
            "before": e.before, "after": e.after, "reason": e.reason}


def list_encoders(s: Session) -> list[dict[str, Any]]:
    return [encoder_dict(e) for e in s.scalars(select(BaseEncoder).order_by(BaseEncoder.id))]


def show_encoder(s: Session, ref: str) -> dict[str, Any]:
    return encoder_dict(encoder_by_ref(s, ref))


def _base_refs(s: Session) -> dict[int, str]:
    return {e.id: e.ref for e in s.scalars(select(BaseEncoder))}


def list_adapters(s: Session, task: str | None = None, language: str | None = None,
                  status: str | None = None) -> list[dict[str, Any]]:
    q = select(Adapter).order_by(Adapter.task, Adapter.language, Adapter.version)
    if task:
        q = q.where(Adapter.task == task)
    if language:
        q = q.where(Adapter.language == canonical_language(language))
    if status:
        q = q.where(Adapter.status == status)
    bases = _base_refs(s)
    return [adapter_dict(a, bases.get(a.base_encoder_id)) for a in s.scalars(q)]


def show_adapter(s: Session, task: str, language: str, version: int | None) -> dict[str, Any]:
    if version is None:
        track = track_row(s, task, language)
        if track.champion_id is None:
            raise NotFound(f"track {task}/{track.language} has no champion",
                           "give --version")
        adapter = s.get(Adapter, track.champion_id)
        assert adapter is not None
    else:
        adapter = adapter_by_version(s, task, language, version)
    return adapter_dict(adapter, _base_refs(s).get(adapter.base_encoder_id))


def list_datasets(s: Session, name: str | None = None,
                  language: str | None = None) -> list[dict[str, Any]]:
    q = select(Dataset).order_by(Dataset.name, Dataset.language, Dataset.split, Dataset.id)
    if name:
        q = q.where(Dataset.name == name)
    if language:
        q = q.where(Dataset.language == canonical_language(language))
    return [dataset_dict(d) for d in s.scalars(q)]


def task_dict(t: Task) -> dict[str, Any]:
    return {"id": t.id, "name": t.name, "labels": list(t.labels),
            "description": t.description, "created_at": _iso(t.created_at),
            "created_by": t.created_by}


def list_tasks(s: Session) -> list[dict[str, Any]]:
    """Every task with its label count, languages with data, and tracks."""
    out = []
    for t in s.scalars(select(Task).order_by(Task.name)):
        langs = sorted(set(s.scalars(select(Dataset.language).where(Dataset.task == t.name))))
        tracks = track_languages(s, t.name)
        out.append({**task_dict(t), "data_languages": langs, "tracks": tracks})
    return out


def get_task(s: Session, name: str) -> dict[str, Any]:
    """A task's row (its labels); NotFound naming the registered ones."""
    from registry.commands.tasks import task_row

    return task_dict(task_row(s, name))


def task_datasets(s: Session, task: str, kind: str | None = None,
                  active_only: bool = True) -> list[dict[str, Any]]:
    """The task's datasets; `active_only`: the newest of each (language, kind, split,
    source language), which is what training and evaluation read."""
    q = select(Dataset).where(Dataset.task == task).order_by(Dataset.id.desc())
    if kind:
        q = q.where(Dataset.kind == kind)
    seen: set[tuple[Any, ...]] = set()
    out = []
    for d in s.scalars(q):
        key = (d.language, d.kind, d.split, (d.meta or {}).get("source_language"))
        if active_only and key in seen:
            continue
        seen.add(key)
        out.append(dataset_dict(d))
    return sorted(out, key=lambda r: (r["language"], r["kind"] or "", r["split"], r["id"]))


def show_task(s: Session, name: str) -> dict[str, Any]:
    """A task: its labels, its datasets per language and split, and its tracks."""
    from registry.commands.tasks import references

    task = get_task(s, name)
    data: dict[str, dict[str, Any]] = {}
    for d in task_datasets(s, name):
        split = d["split"] if d["kind"] == "labelled" else d["kind"]
        if d["kind"] == "parallel":
            split = f"parallel from {d['meta'].get('source_language')}"
        data.setdefault(d["language"], {})[split] = {
            "dataset": d["ref"], "id": d["id"], "rows": d["rows"], "sha256": d["sha256"]}
    tracks = [{k: r[k] for k in ("language", "base", "champion", "canary", "phase")}
              for r in status(s, name)]
    return {**task, "datasets": data, "tracks": tracks, "references": references(s, name)}


def track_row(s: Session, task: str, language: str) -> Track:
    language = canonical_language(language)
    track = s.scalars(select(Track).where(Track.task == task,
                                          Track.language == language)).one_or_none()
    if track is None:
        raise NotFound(f"no track for {task}/{language}", "see `xlt status` for the tracks")
    return track


def status(s: Session, task: str | None = None,
           language: str | None = None) -> list[dict[str, Any]]:
    """One row per track: base, champion, canary and weight, previous, phase, revision.

    One query whatever the catalogue's size: each track joins only the adapters it points
    at (champion, canary, previous) and its base, never the whole adapters table."""
    champion, canary, previous = aliased(Adapter), aliased(Adapter), aliased(Adapter)
    q = (select(Track.task, Track.language, BaseEncoder.name, BaseEncoder.version,
                champion.version, canary.version, Track.canary_weight, previous.version,
                Track.phase, Track.phase_data, Track.revision, Track.updated_at,
                Track.unservable_on)
         .join(BaseEncoder, BaseEncoder.id == Track.base_encoder_id)
         .outerjoin(champion, champion.id == Track.champion_id)
         .outerjoin(canary, canary.id == Track.canary_id)
         .outerjoin(previous, previous.id == Track.previous_champion_id)
         .order_by(Track.task, Track.language))
    if task:
        q = q.where(Track.task == task)
    if language:
        q = q.where(Track.language == canonical_language(language))
    rows = []
    for (t_task, t_lang, base_name, base_version, champ, can, weight, prev, phase, data,
         revision, updated, unservable) in s.execute(q):
        base = f"{base_name}@{base_version}"
        rows.append({
            "task": t_task, "language": t_lang, "base": base, "champion": champ,
            "canary": can, "canary_weight": weight, "previous": prev,
            "phase": phase, "phase_data": data, "revision": revision,
            "updated_at": _iso(updated),
            # only while it names the track's current base (a base upgrade lifts it)
            "not_servable_on": unservable if unservable and unservable == base else None,
        })
    return rows


def track_languages(s: Session, task: str) -> list[str]:
    """The languages with a track of `task` (no adapter is read)."""
    return list(s.scalars(select(Track.language).where(Track.task == task)
                          .order_by(Track.language)))


def active_upgrades(s: Session) -> list[UpgradeState]:
    """The upgrades in flight (at most one per track), typed; finished ones are not read."""
    from registry.commands.upgrade import upgrade_state
    from registry.upgrades import ACTIVE

    q = (select(BaseUpgrade).where(BaseUpgrade.status.in_([str(x) for x in ACTIVE]))
         .order_by(BaseUpgrade.id))
    return [upgrade_state(s, row) for row in s.scalars(q)]


def history(s: Session, task: str | None = None, language: str | None = None,
            limit: int | None = None) -> list[dict[str, Any]]:
    q = select(Event).order_by(Event.id)
    if task:
        q = q.where(Event.task == task)
    if language:
        q = q.where(Event.language == canonical_language(language))
    events = [event_dict(e) for e in s.scalars(q)]
    return events[-limit:] if limit else events


def upgrades(s: Session, ref: str | None = None, task: str | None = None
             ) -> list[UpgradeState]:
    """Every track's newest upgrade (to base `ref` when given), typed."""
    from registry.commands.upgrade import upgrade_state

    q = select(BaseUpgrade).order_by(BaseUpgrade.id)
    if ref is not None:
        q = q.where(BaseUpgrade.to_encoder_id == encoder_by_ref(s, ref).id)
    newest: dict[int, BaseUpgrade] = {}
    for row in s.scalars(q):
        newest[row.track_id] = row
    states = [upgrade_state(s, row) for row in newest.values()]
    return sorted((u for u in states if task is None or u.task == task),
                  key=lambda u: (u.task, u.language))


def impact(s: Session, ref: str) -> list[dict[str, Any]]:
    """If every track moved to base `ref`: per track, which of its live adapters (champion,
    canary, previous champion) stay compatible and which must be retrained, and where the
    track's upgrade to `ref` stands (None when none was requested)."""
    target = encoder_by_ref(s, ref)
    progress = {(u.task, u.language): u.to_dict() for u in upgrades(s, ref)}
    bases = _base_refs(s)
    rows = []
    for t in s.scalars(select(Track).order_by(Track.task, Track.language)):
        live = [("champion", t.champion_id), ("canary", t.canary_id),
                ("previous", t.previous_champion_id)]
        compatible, retrain = [], []
        for role, adapter_id in live:
            if adapter_id is None:
                continue
            a = s.get(Adapter, adapter_id)
            assert a is not None
            entry = {"version": a.version, "role": role, "base_fingerprint": a.base_fingerprint}
            (compatible if a.base_fingerprint == target.fingerprint else retrain).append(entry)
        rows.append({"task": t.task, "language": t.language,
                     "current_base": bases.get(t.base_encoder_id), "target_base": target.ref,
                     "target_fingerprint": target.fingerprint,
                     "compatible": compatible, "retrain": retrain,
                     "upgrade": progress.get((t.task, t.language))})
    return rows
