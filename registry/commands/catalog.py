"""Registering base encoders, datasets and adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from registry.artifacts import ArtifactStore, walk_tree
from registry.audit import track_state
from registry.commands.lookups import adapter_by_version, encoder_by_ref
from registry.domain import REGISTERED
from registry.errors import (
    AlreadyExists,
    IncompatibleAdapter,
    InvalidInput,
    NotFound,
)
from registry.fingerprint import model_dir_fingerprint
from registry.languages import canonical_language
from registry.loadability import base_headers, base_linear_layers, check_loadable
from registry.names import encoder_name, encoder_version, language_tag, task_name
from registry.schema import Adapter, BaseEncoder, Dataset, Task, Track
from registry.uow import UnitOfWork, check_revision
from registry.weights import check_adapter_shapes, xlt_metadata


def register_encoder(uow: UnitOfWork, store: ArtifactStore, name: str, version: str,
                     model_dir: str | Path, source: str | None = None,
                     provenance: dict[str, Any] | None = None) -> BaseEncoder:
    """`source` (default: the directory's path) says where the weights came from;
    `provenance` (e.g. package, file sha256, licence) goes into the register event's
    `after` (shown by `xlt history`). Builtin
    bases also keep it inside the stored tree (xlt_provenance.json), content-addressed."""
    encoder_name(name)
    encoder_version(version)
    s = uow.session
    if s.scalars(select(BaseEncoder).where(BaseEncoder.name == name,
                                           BaseEncoder.version == version)).first():
        raise AlreadyExists(f"base encoder {name}@{version} is already registered",
                            "register a new version instead")
    walk_tree(Path(model_dir))  # links refused before anything reads the files
    fingerprint, inputs = model_dir_fingerprint(model_dir)
    with store.staging() as staged:
        files = store.stage_tree(staged, model_dir)  # validated; published below
        staged.commit()
    sha = store.put_json({"kind": "tree", "files": files})
    enc = BaseEncoder(name=name, version=version, fingerprint=fingerprint,
                      fingerprint_inputs=inputs, artifact_sha256=sha,
                      source=source or str(Path(model_dir).resolve()), created_by=uow.actor)
    s.add(enc)
    s.flush()
    after: dict[str, Any] = {"encoder": enc.ref, "fingerprint": fingerprint}
    if provenance:
        after["provenance"] = provenance
    uow.event("register_encoder", after=after, payload={"encoder_id": enc.id})
    return enc


def ensure_track(uow: UnitOfWork, task: str, language: str, base: str) -> Track:
    """The track of (task, language), created on base `base` if it does not exist yet."""
    task_name(task)
    return _get_or_create_track(uow, task, canonical_language(language),
                                encoder_by_ref(uow.session, base))


def _get_or_create_track(uow: UnitOfWork, task: str, language: str, base: BaseEncoder) -> Track:
    s = uow.session
    track = s.scalars(select(Track).where(Track.task == task, Track.language == language)
                      .with_for_update()).one_or_none()
    if track is not None:
        return track
    try:
        with s.begin_nested():
            track = Track(task=task, language=language, base_encoder_id=base.id,
                          canary_weight=0.0, revision=0, phase="STEADY", phase_data={})
            s.add(track)
            s.flush()
    except IntegrityError:
        # another writer created it between our read and insert (PostgreSQL only)
        track = s.scalars(select(Track).where(Track.task == task, Track.language == language)
                          .with_for_update()).one()
        return track
    uow.event("create_track", track=track, after=track_state(track),
              reason=f"track created on {base.ref}")
    return track


def _check_task_labels(s: Any, task: str, labels: int, name: str,
                       names: Any = None) -> None:
    """A task has one label set: a registered task's (its row), else that of the task's
    adapters already registered (the newest one that records its head)."""
    row = s.scalars(select(Task).where(Task.name == task)).first()
    if row is not None:
        if labels != len(row.labels) or (isinstance(names, list) and names
                                          and list(names) != list(row.labels)):
            shown = f"labels {names}" if isinstance(names, list) else f"{labels} labels"
            raise IncompatibleAdapter(
                f"{name} has a head of {shown}, but task {task} has the {len(row.labels)} "
                f"labels {row.labels}", "train the head on the task's label set, in its "
                "order, or register it under another task")
        return
    for recorded in s.scalars(select(Adapter.config).where(Adapter.task == task)
                              .order_by(Adapter.id.desc()).limit(20)):
        shape = (recorded or {}).get("head_shape")
        if isinstance(shape, list) and len(shape) == 2:
            if shape[1] != labels:
                raise IncompatibleAdapter(
                    f"{name} has a head of {labels} labels, but task {task} has {shape[1]} "
                    "(its registered adapters' heads)",
                    "train the head on the task's label set, or register it under another "
                    "task name")
            return


def register_adapter(uow: UnitOfWork, store: ArtifactStore, *, task: str, language: str,
                     base: str, weights: str | Path, config: dict[str, Any] | None = None,
                     teacher_language: str | None = None, dataset_ids: list[int] | None = None,
                     metrics: dict[str, Any] | None = None,
                     hyperparams: dict[str, Any] | None = None,
                     parent_version: int | None = None, kind: str = "lora",
                     expected_revision: int | None = None) -> Adapter:
    task_name(task)
    language = language_tag(language)
    teacher = canonical_language(teacher_language) if teacher_language else None
    s = uow.session
    encoder = encoder_by_ref(s, base)  # contract check 1: the base must exist
    with store.staging() as staged:
        # by content, whatever the file is called: x.SAFETENSORS, x.bin, x
        header = store.stage_weights(staged, weights)
        name = Path(weights).name
        meta = xlt_metadata(header, name)
        # a load reads the file's own metadata, never the registry row: the checks are of
        # what the file says, and a given config may add to it but not contradict it
        file_config = meta.get("config", {})
        given = config or {}
        clash = sorted(k for k in given if k in file_config and given[k] != file_config[k])
        if clash:
            raise InvalidInput(f"config {clash[0]} {given[clash[0]]!r} contradicts {name}, "
                               f"which records {file_config[clash[0]]!r}",
                               "leave it out of --config: the file's value is what a load "
                               "uses")
        config = {**file_config, **given}
        check_adapter_shapes(header, file_config, name)
        recorded = meta.get("base_fingerprint")
        if not recorded:
            raise IncompatibleAdapter(
                f"{name} records no base fingerprint, so its base cannot be checked",
                "save it with controller.training.artifact.save_adapter (which records the "
                "base's fingerprint in the file, where a load checks it)")
        if recorded != encoder.fingerprint:
            raise IncompatibleAdapter(
                f"{name} was trained on base fingerprint {str(recorded)[:12]}, "
                f"but {encoder.ref} has fingerprint {encoder.fingerprint[:12]}",
                "register it against the base it was trained on",
            )
        # register proves loadability: tensors and config against the base's layers
        check_loadable(header, file_config,
                       base_linear_layers(base_headers(store, encoder.artifact_sha256)),
                       encoder.fingerprint_inputs or {}, name)
        _check_task_labels(s, task, file_config["head_shape"][1], name,
                           file_config.get("labels"))
        ids = list(dataset_ids or [])
        if ids:
            found = set(s.scalars(select(Dataset.id).where(Dataset.id.in_(ids))))
            missing = sorted(set(ids) - found)
            if missing:
                raise NotFound(f"datasets {missing} are not registered",
                               "register training data with `xlt dataset register` first")
            foreign = s.scalars(select(Dataset).where(
                Dataset.id.in_(ids), Dataset.task.is_not(None), Dataset.task != task)).first()
            if foreign is not None:
                raise IncompatibleAdapter(f"dataset {foreign.ref} is data of task "
                                          f"{foreign.task!r}, not {task!r}",
                                          "train on the task's own datasets")
        track = _get_or_create_track(uow, task, language, encoder)
        check_revision(track, expected_revision)
        parent_id = None
        if parent_version is not None:
            parent_id = adapter_by_version(s, task, language, parent_version).id
        version = (s.scalar(select(func.max(Adapter.version)).where(
            Adapter.task == task, Adapter.language == language)) or 0) + 1
        sha = staged.sha("weights")
        staged.commit()  # every check passed: publish the blob
    adapter = Adapter(task=task, language=language, version=version,
                      base_encoder_id=encoder.id, base_fingerprint=encoder.fingerprint,
                      kind=kind, config=config, teacher_language=teacher, dataset_ids=ids,
                      metrics=metrics or {}, hyperparams=hyperparams or {},
                      parent_adapter_id=parent_id, artifact_sha256=sha, status=REGISTERED,
                      created_by=uow.actor)
    s.add(adapter)
    s.flush()
    uow.event("register_adapter", track=track, adapter_id=adapter.id,
              after={"version": version, "status": REGISTERED, "base": encoder.ref,
                     "teacher": teacher, "metrics": metrics or {}})
    return adapter
