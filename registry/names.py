"""Names that become keys and path components: one grammar, checked at every entry.

Task names, base-encoder names and base-encoder versions are *slugs*::

    slug  = word *( sep word )          ; 1 to 64 characters in all
    word  = 1*( "a"-"z" / "0"-"9" )
    sep   = "-" / "_" / "."

so ``emoji-group``, ``sentiment_v2``, ``me5-small``, ``1``, ``2024.06`` are names and
``../x``, ``/tmp/abs``, ``a/b``, ``.``, ``-x``, ``x-``, ``Emoji``, ``a b``, ``x\\n`` and the
empty string are not. A base-encoder reference is ``slug "@" slug`` (``minilm@1``).
Language tags are BCP-47, canonicalised by registry.languages (``sr_Latn`` -> ``sr-Latn``)
and then held to ``tag = alnum *( "-" alnum )`` with ``alnum = 1*( A-Z / a-z / 0-9 )``, at
most 35 characters.

Why this grammar: every such name is exactly one path component on any file system (no
separator, no ``.``/``..``, no control character or space, nothing that starts like an
option), and slugs are lower case so two names never collide on a case-insensitive disk.

The validators raise InvalidName (exit 2) with the grammar in the hint. The registry's
writers call them (so the Python API, the CLI, the HTTP service and the controller's
policy all go through them); `safe_path` builds a path only from validated components and
refuses one that would leave its root; `find_bad_names` lists names recorded before this
rule (shown by `xlt db check`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from registry.errors import InvalidInput, InvalidName

MAX_SLUG = 64
MAX_TAG = 35
SLUG_RE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")
TAG_RE = re.compile(r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*")
SLUG_HINT = ("use lower-case letters and digits, with single '-', '_' or '.' between "
             f"them, at most {MAX_SLUG} characters (e.g. emoji-group)")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@lru_cache(maxsize=4096)
def _slug(kind: str, value: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_SLUG or not SLUG_RE.fullmatch(value):
        raise InvalidName(f"{kind} {_shown(value)} is not a valid name", SLUG_HINT)
    return value


def slug(kind: str, value: Any) -> str:
    """`value` if it is a slug; InvalidName naming `kind` otherwise."""
    if not isinstance(value, str):
        raise InvalidName(f"{kind} {_shown(value)} is not a valid name", SLUG_HINT)
    return _slug(kind, value)


def task_name(value: Any) -> str:
    return slug("task name", value)


def encoder_name(value: Any) -> str:
    return slug("base encoder name", value)


def encoder_version(value: Any) -> str:
    return slug("base encoder version", value)


def encoder_ref(value: Any) -> tuple[str, str]:
    """(name, version) of ``NAME@VERSION``, both slugs."""
    name, sep, version = (value if isinstance(value, str) else "").partition("@")
    if not sep:
        raise InvalidName(f"base encoder reference {_shown(value)} is not NAME@VERSION",
                          "write it like minilm@1")
    return encoder_name(name), encoder_version(version)


def language_tag(value: Any) -> str:
    """The canonical BCP-47 form of `value`, which is also one path component."""
    from registry.languages import canonical_language

    if not isinstance(value, str):
        raise InvalidName(f"language tag {_shown(value)} is not a string",
                          "give a BCP-47 tag such as sw, yo or sr-Latn")
    tag = canonical_language(value)
    if len(tag) > MAX_TAG or not TAG_RE.fullmatch(tag):  # langcodes' output, checked anyway
        raise InvalidName(f"language tag {_shown(value)} is not a valid name",
                          "give a BCP-47 tag such as sw, yo or sr-Latn")
    return tag


def safe_path(root: str | os.PathLike[str], *parts: str) -> Path:
    """`root / parts...`, where each part is one plain path component and the result,
    links resolved, stays under `root`; InvalidName otherwise (nothing is created)."""
    base = Path(root)
    for part in parts:
        if (not isinstance(part, str) or not part or part in (".", "..") or "\x00" in part
                or "/" in part or (os.sep != "/" and os.sep in part)
                or (os.altsep is not None and os.altsep in part)):
            raise InvalidName(f"{_shown(part)} is not a plain file name",
                              "names that become paths must be one component (see "
                              "registry.names)")
    path = base.joinpath(*parts)
    resolved_root = base.resolve()
    resolved = path.resolve()
    if resolved != resolved_root and resolved_root not in resolved.parents:
        raise InvalidName(f"{path} would be outside {resolved_root}",
                          "a link inside the folder points elsewhere; remove it")
    return path


# -- names recorded before the rule -----------------------------------------------------
@dataclass(frozen=True)
class BadName:
    table: str
    column: str
    value: str
    rows: int
    why: str

    def line(self) -> str:
        return f"{self.table}.{self.column} {_shown(self.value)} ({self.rows} rows): {self.why}"


def _problem(kind: str, value: Any) -> str | None:
    try:
        if kind == "task":
            task_name(value)
        elif kind == "language":
            if language_tag(value) != value:
                return f"not in canonical form (would be {language_tag(value)!r})"
        elif kind == "encoder":
            encoder_name(value)
        elif kind == "version":
            encoder_version(value)
    except InvalidInput as exc:
        return str(exc)
    return None


def find_bad_names(session: Any) -> list[BadName]:
    """Every distinct task, language and encoder name/version recorded in the registry
    that the grammar above refuses, with how many rows carry it."""
    from sqlalchemy import func, select

    from registry import schema

    checks = [(schema.Track, "task", "task"), (schema.Track, "language", "language"),
              (schema.Adapter, "task", "task"), (schema.Adapter, "language", "language"),
              (schema.InferenceEvent, "task", "task"),
              (schema.InferenceEvent, "language", "language"),
              (schema.DriftReport, "task", "task"),
              (schema.DriftReport, "language", "language"),
              (schema.ReferenceCache, "task", "task"),
              (schema.ReferenceCache, "language", "language"),
              (schema.Job, "task", "task"), (schema.Job, "language", "language"),
              (schema.BaseEncoder, "name", "encoder"),
              (schema.BaseEncoder, "version", "version")]
    out = []
    for model, column, kind in checks:
        col = getattr(model, column)
        for value, count in session.execute(select(col, func.count()).where(col.is_not(None))
                                            .group_by(col)):
            why = _problem(kind, value)
            if why is not None:
                out.append(BadName(model.__tablename__, column, value, int(count), why))
    return out
