"""Tasks and their data: `xlt task create`, `xlt task relabel`, `xlt dataset register`.

A task is a name and an ordered label set. Its datasets are files a team already has,
validated row by row while they stream (registry.datafiles) and stored normalised (gzip
JSONL, content-addressed) with their provenance. Nothing is written unless the whole file
passed: the rows are staged, and the database rows and the store's blobs are committed
together at the end.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from registry.artifacts import ArtifactStore, Staged, sha256_file, storage_error
from registry.datafiles import GzipJsonlWriter, bad_row, detect_format, iter_rows, read_stored
from registry.errors import AlreadyExists, InvalidInput, NotFound, RefusedChange
from registry.names import language_tag, task_name
from registry.schema import Adapter, Dataset, Task
from registry.uow import UnitOfWork

KINDS = ("labelled", "parallel", "unlabelled")
SPLITS = ("train", "dev", "test")
# the columns each kind needs (after --text-column / --label-column / ... mapping)
REQUIRED = {"labelled": ("text", "label"), "parallel": ("source_text", "text"),
            "unlabelled": ("text",)}
MAX_LABELS = 1000
MAX_TEXT_CHARS = 100_000


def check_labels(labels: Any) -> list[str]:
    if isinstance(labels, str):
        labels = [x.strip() for x in labels.split(",")]
    if not isinstance(labels, list | tuple) or not all(isinstance(x, str) for x in labels):
        raise InvalidInput("a task's labels must be a list of names",
                           "pass --labels a,b,c")
    labels = [x.strip() for x in labels]
    if len(labels) < 2 or len(labels) > MAX_LABELS:
        raise InvalidInput(f"a task needs 2 to {MAX_LABELS} labels, got {len(labels)}",
                           "pass --labels a,b,c")
    if any(not x for x in labels):
        raise InvalidInput("a label is empty", "remove the empty name from --labels")
    dupes = sorted(x for x, n in Counter(labels).items() if n > 1)
    if dupes:
        raise InvalidInput(f"label {dupes[0]!r} is given twice", "name each label once")
    return labels


def task_row(uow_or_session: Any, name: str) -> Task:
    s = getattr(uow_or_session, "session", uow_or_session)
    task = s.scalars(select(Task).where(Task.name == name)).first()
    if task is None:
        known = ", ".join(s.scalars(select(Task.name).order_by(Task.name))) or "none yet"
        raise NotFound(f"no task {name!r}",
                       f"create it with `xlt task create {name} --labels ...` "
                       f"(registered tasks: {known})")
    return task


def create_task(uow: UnitOfWork, name: str, labels: Any, description: str = "") -> Task:
    name = task_name(name)
    labels = check_labels(labels)
    s = uow.session
    if s.scalars(select(Task).where(Task.name == name)).first():
        raise AlreadyExists(f"task {name!r} already exists",
                            "pick another name, or `xlt task show` it")
    task = Task(name=name, labels=labels, description=description.strip(),
                created_by=uow.actor)
    s.add(task)
    s.flush()
    uow.event("create_task", after={"task": name, "labels": labels})
    return task


def references(s: Any, name: str) -> dict[str, int]:
    """How many datasets and adapters refer to the task (its label set is fixed if any)."""
    return {
        "datasets": int(s.scalar(select(func.count()).select_from(Dataset)
                                 .where(Dataset.task == name)) or 0),
        "adapters": int(s.scalar(select(func.count()).select_from(Adapter)
                                 .where(Adapter.task == name)) or 0),
    }


def relabel_task(uow: UnitOfWork, name: str, labels: Any) -> Task:
    task = task_row(uow, task_name(name))
    labels = check_labels(labels)
    refs = references(uow.session, task.name)
    if refs["datasets"] or refs["adapters"]:
        raise RefusedChange(
            f"task {task.name!r} has {refs['datasets']} dataset(s) and {refs['adapters']} "
            f"adapter(s) trained or labelled with its label set; it cannot change",
            "create a new task with the new labels (a head's outputs are the old labels)")
    before = list(task.labels)
    task.labels = labels
    uow.event("relabel_task", before={"labels": before}, after={"task": task.name,
                                                                  "labels": labels})
    return task


@dataclass
class DatasetSpec:
    """What `xlt dataset register` was asked to do, before it looks at the file."""

    task: str
    path: Path
    kind: str = "labelled"
    split: str = "train"
    language: str | None = None
    language_column: str | None = None
    source_language: str | None = None
    columns: dict[str, str] = field(default_factory=dict)  # our name -> the file's column
    fmt: str | None = None
    name: str | None = None
    version: str | None = None
    source: str | None = None
    licence: str = ""
    consent: str = ""
    collected_at: datetime | None = None

    def check(self) -> None:
        self.task = task_name(self.task)
        if self.kind not in KINDS:
            raise InvalidInput(f"unknown dataset kind {self.kind!r}",
                               f"use one of {', '.join(KINDS)}")
        if self.split not in SPLITS:
            raise InvalidInput(f"unknown split {self.split!r}",
                               f"use one of {', '.join(SPLITS)}")
        if self.kind != "labelled" and self.split != "train":
            raise InvalidInput(f"{self.kind} data is training data, not a {self.split} split",
                               "register it with --split train (the default)")
        if (self.language is None) == (self.language_column is None):
            raise InvalidInput("say which language the rows are in",
                               "pass --language TAG, or --language-column COLUMN for a "
                               "file holding several languages")
        if self.language is not None:
            self.language = language_tag(self.language)
        if self.kind == "parallel":
            if not self.source_language:
                raise InvalidInput("parallel pairs need the pivot language of source_text",
                                   "pass --source-language TAG (e.g. en)")
            self.source_language = language_tag(self.source_language)
        elif self.source_language:
            raise InvalidInput("--source-language is for parallel pairs only",
                               "drop it, or register with --kind parallel")
        for field_name, value in (("licence", self.licence), ("consent", self.consent)):
            if not value or not value.strip():
                raise InvalidInput(f"dataset {field_name} is empty",
                                   "every dataset needs provenance: pass --licence and "
                                   "--consent (and --source)")
        unknown = set(self.columns) - {"text", "label", "id", "source_text"}
        if unknown:
            raise InvalidInput(f"unknown column mapping {sorted(unknown)[0]!r}",
                               "map text, label, id or source_text")


@dataclass
class _Out:
    """One language's normalised rows, being written to staging."""

    tmp: Path
    fh: Any
    writer: GzipJsonlWriter
    ids: set[bytes] = field(default_factory=set)
    labels: Counter[str] = field(default_factory=Counter)


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=12).digest()


def _source_sha(path: Path) -> str:
    if path.is_dir():
        h = hashlib.sha256()
        for file in sorted(p for p in path.iterdir() if p.is_file()):
            h.update(f"{file.name}\0{sha256_file(file)}\n".encode())
        return h.hexdigest()
    return sha256_file(path)


def _active(s: Any, task: str, language: str, kind: str, split: str) -> Dataset | None:
    return s.scalars(select(Dataset).where(
        Dataset.task == task, Dataset.language == language, Dataset.kind == kind,
        Dataset.split == split).order_by(Dataset.id.desc())).first()


def _texts_of(store: ArtifactStore, ds: Dataset | None) -> set[bytes]:
    if ds is None:
        return set()
    return {_digest(row["text"].strip()) for row in read_stored(store.verified_path(ds.sha256))}


def _text(path: Path, n: int, row: dict[str, Any], column: str, shown: str) -> str:
    value = row.get(column)
    if not isinstance(value, str):
        raise bad_row(path, n, f"{shown} is {'missing' if value is None else 'not text'}",
                      f"give every row a non-empty {column!r}")
    value = value.strip()
    if not value:
        raise bad_row(path, n, f"{shown} is empty", "drop the row or fill in its text")
    if "\x00" in value:
        raise bad_row(path, n, f"{shown} holds a NUL character", "remove it")
    if len(value) > MAX_TEXT_CHARS:
        raise bad_row(path, n, f"{shown} has {len(value)} characters",
                      f"at most {MAX_TEXT_CHARS} per text")
    return value


def register_task_dataset(uow: UnitOfWork, store: ArtifactStore, spec: DatasetSpec
                          ) -> list[Dataset]:
    """Validate `spec.path` row by row and register it: one dataset per language found.

    Checks, each refused with the file, row and problem: required columns, labels in the
    task's set, non-empty UTF-8 text, unique ids per language, no test row whose text is in
    that language's train split (and no train row whose text is in its test split), rows
    of another task (a `task` column) and a file already registered for another task."""
    spec.check()
    s = uow.session
    task = task_row(uow, spec.task)
    labels = set(task.labels)
    path = Path(spec.path)
    fmt = (spec.fmt or detect_format(path)) if path.exists() else spec.fmt
    source_sha = None
    if path.exists():
        source_sha = _source_sha(path)
        other = s.scalars(select(Dataset).where(Dataset.task.is_not(None),
                                                Dataset.task != task.name)).all()
        clash = next((d for d in other if (d.meta or {}).get("source_sha256") == source_sha),
                     None)
        if clash is not None:
            raise RefusedChange(f"{path} is registered as {clash.ref} of task {clash.task!r}",
                                f"a file belongs to one task; is {task.name!r} the right one?")
    col = {name: spec.columns.get(name, name) for name in ("text", "label", "id",
                                                             "source_text")}
    needed = REQUIRED[spec.kind]
    outs: dict[str, _Out] = {}
    leak_split = {"test": "train", "train": "test"}.get(spec.split)
    against: dict[str, set[bytes]] = {}  # language -> texts of its other split
    tags: dict[str, str] = {}  # the file's language values, canonicalised once each
    staging = store.staging_dir()
    try:
        for n, row in iter_rows(path, fmt):
            missing = [col[c] for c in needed if col[c] not in row]
            if spec.language_column and spec.language_column not in row:
                missing.append(spec.language_column)
            if missing:
                have = ", ".join(sorted(map(str, row))) or "none"
                raise bad_row(path, n, f"has no column {missing[0]!r} (columns: {have})",
                              f"{spec.kind} data needs {', '.join(needed)}; map yours with "
                              f"--text-column, --label-column, --source-text-column")
            if "task" in row and row["task"] not in (None, task.name):
                raise bad_row(path, n, f"belongs to task {row['task']!r}, not {task.name!r}",
                              "register it under its own task")
            if spec.language_column:
                raw = str(row[spec.language_column])
                if raw not in tags:
                    try:
                        tags[raw] = language_tag(raw)
                    except InvalidInput as exc:
                        raise bad_row(path, n, f"has a bad language: {exc.message}",
                                      exc.hint or "use BCP-47 tags") from None
                language = tags[raw]
            else:
                language = spec.language  # type: ignore[assignment]
            text = _text(path, n, row, col["text"], f"{col['text']!r}")
            out_row: dict[str, Any] = {"text": text}
            raw_id = row.get(col["id"])
            if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
                item = f"row-{n}"
            elif isinstance(raw_id, str | int) and not isinstance(raw_id, bool):
                item = str(raw_id).strip()
            else:
                raise bad_row(path, n, f"{col['id']!r} is not a string or integer",
                              "give ids as text or numbers")
            out_row["id"] = item
            if spec.kind == "labelled":
                label = row.get(col["label"])
                label = str(label).strip() if isinstance(label, str | int) else label
                if label not in labels:
                    raise bad_row(path, n, f"label {label!r} is not in task {task.name!r}'s "
                                  f"labels ({', '.join(task.labels)})",
                                  "fix the row, or map the right column with --label-column")
                out_row["label"] = label
            if spec.kind == "parallel":
                out_row["source_text"] = _text(path, n, row, col["source_text"],
                                               f"{col['source_text']!r}")
            out = outs.get(language)
            if out is None:
                fd, tmp = tempfile.mkstemp(dir=staging, prefix=".tmp-data-")
                fh = _HashingFile(os.fdopen(fd, "wb"))
                out = outs[language] = _Out(Path(tmp), fh, GzipJsonlWriter(fh))
                if spec.kind == "labelled" and leak_split:
                    against[language] = _texts_of(
                        store, _active(s, task.name, language, "labelled", leak_split))
            key = _digest(item)
            if key in out.ids:
                raise bad_row(path, n, f"repeats id {item!r} ({language})",
                              "give every row of a language its own id")
            out.ids.add(key)
            if spec.kind == "labelled":
                digest = _digest(text)
                if digest in against.get(language, ()):
                    raise bad_row(path, n, f"text {text[:60]!r} is also in {language}'s "
                                  f"{leak_split} split", "a held-out row must not be "
                                  "trained on: drop it from one of the splits")
                out.labels[out_row["label"]] += 1
            out.writer.write(out_row)
        if not outs:
            raise bad_row(path, None, "has no rows", "give a file with at least one row")
        staged = Staged(store)
        try:
            for language, out in outs.items():
                out.writer.close()
                out.fh.close()
                staged.files[language] = (out.tmp, out.fh.hexdigest())
            created = []
            for language, out in sorted(outs.items()):
                created.append(_add_row(uow, spec, task.name, language, staged.sha(language),
                                        out, fmt or "", source_sha or ""))
            s.flush()
            staged.commit()
        finally:
            staged.discard()
    except OSError as exc:
        raise storage_error(exc, staging, "write") from exc
    finally:
        for out in outs.values():
            out.fh.close()
            out.tmp.unlink(missing_ok=True)
    return created


def _add_row(uow: UnitOfWork, spec: DatasetSpec, task: str, language: str, sha: str,
             out: _Out, fmt: str, source_sha: str) -> Dataset:
    s = uow.session
    name = spec.name or (task if spec.kind == "labelled" else f"{task}-{spec.kind}")
    name = task_name(name)
    if spec.version is not None:
        version = str(spec.version)
        if s.scalars(select(Dataset).where(Dataset.name == name, Dataset.language == language,
                                           Dataset.split == spec.split,
                                           Dataset.version == version)).first():
            raise AlreadyExists(f"dataset {name}/{language}/{spec.split}@{version} is "
                                f"already registered", "leave --version out for the next one")
    else:
        versions = s.scalars(select(Dataset.version).where(
            Dataset.name == name, Dataset.language == language, Dataset.split == spec.split))
        version = str(1 + max((int(v) for v in versions if str(v).isdigit()), default=0))
    meta: dict[str, Any] = {"source_sha256": source_sha, "source_format": fmt,
                            "source_file": Path(spec.path).name,
                            "columns": {k: v for k, v in spec.columns.items()}}
    if spec.kind == "labelled":
        meta["label_counts"] = dict(sorted(out.labels.items()))
    if spec.source_language:
        meta["source_language"] = spec.source_language
    ds = Dataset(name=name, language=language, split=spec.split, version=version,
                 sha256=sha, rows=out.writer.rows, uri=f"store:{sha}",
                 source=spec.source or str(Path(spec.path).resolve()),
                 licence=spec.licence.strip(), consent=spec.consent.strip(),
                 collected_at=spec.collected_at or datetime.now(UTC), created_by=uow.actor,
                 task=task, kind=spec.kind, meta=meta)
    s.add(ds)
    s.flush()
    uow.event("register_dataset", language=language, task=task,
              after={"dataset": ds.ref, "kind": spec.kind, "sha256": sha,
                     "rows": ds.rows, "source_sha256": source_sha},
              payload={"dataset_id": ds.id})
    return ds


class _HashingFile:
    """A binary file that hashes what is written to it (the blob's name)."""

    def __init__(self, fh: Any) -> None:
        self._fh = fh
        self._h = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self._h.update(data)
        return self._fh.write(data)

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def hexdigest(self) -> str:
        return self._h.hexdigest()
