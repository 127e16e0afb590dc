"""docs/policy.md against controller/policy/: every field of the policy's models has a row
(its dotted TOML key, its default, its meaning), no row names a field the models lack, and
each documented default is the model's. A field added without its row fails here.

The convention (stated at the top of docs/policy.md): `default` is a TOML literal in
backticks, or `required` (no default) or `unset` (None). The walk starts at `Policy`: a
nested model's fields are rows under its table (`training.epochs`), a list of models is a
row of its own plus rows for the entries' fields (`tracks`, `tracks.language`), an
optional model is a row (`upgrade`, default unset) plus its fields' rows, a dict of models
is one row (`base_gates`). A model class already documented under a shallower key
(DriftThresholds under `drift`) is one row where it appears again (`tracks.drift`).
"""

from __future__ import annotations

import re
import tomllib
import types
import typing
from collections import deque
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from controller.policy import Policy

PAGE = Path(__file__).resolve().parents[2] / "docs" / "policy.md"
ROW = re.compile(r"^\|\s*`([A-Za-z0-9_.]+)`\s*\|\s*(.*?)\s*\|\s*(.*?)\s*\|\s*$")
REQUIRED, UNSET = "required", "unset"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The model classes an annotation holds directly or through `X | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in _models_in(a)]
    return []


def _list_model(annotation: Any) -> type[BaseModel] | None:
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        models = _models_in(item)
        return models[0] if models else None
    return None


def walk(root: type[BaseModel] = Policy) -> dict[str, Any]:
    """Every documented key of the policy with its default (REQUIRED when there is none)."""
    fields: dict[str, Any] = {}
    seen: set[type[BaseModel]] = {root}
    queue: deque[tuple[str, type[BaseModel]]] = deque([("", root)])
    while queue:
        prefix, model = queue.popleft()
        for name, info in model.model_fields.items():
            key = prefix + name
            default = (REQUIRED if info.is_required()
                       else info.get_default(call_default_factory=True))
            item = _list_model(info.annotation)
            nested = _models_in(info.annotation)
            if item is not None:  # [[tracks]], [[alerts.webhooks]]: a row and the entries'
                fields[key] = default
                if item not in seen:
                    seen.add(item)
                    queue.append((key + ".", item))
            elif nested and not isinstance(default, BaseModel):  # optional table: a row
                fields[key] = default
                if nested[0] not in seen:
                    seen.add(nested[0])
                    queue.append((key + ".", nested[0]))
            elif nested:  # a table with defaults ([training]): its fields are the rows
                if nested[0] in seen:
                    fields[key] = default
                else:
                    seen.add(nested[0])
                    queue.append((key + ".", nested[0]))
            else:
                fields[key] = default
    return fields


def documented(text: str) -> dict[str, str]:
    """The rows of the page's `field | default | meaning` tables: key -> default cell."""
    rows: dict[str, str] = {}
    in_table = False
    for line in text.splitlines():
        if re.match(r"^\|\s*field\s*\|\s*default\s*\|\s*meaning\s*\|\s*$", line):
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
            continue
        m = ROW.match(line)
        if in_table and m:
            assert m.group(1) not in rows, f"{m.group(1)} is documented twice"
            assert m.group(3), f"{m.group(1)} has no meaning"
            rows[m.group(1)] = m.group(2)
    return rows


def parse_default(cell: str) -> Any:
    if cell == REQUIRED:
        return cell
    if cell == UNSET:
        return None
    m = re.fullmatch(r"`(.+)`", cell)
    assert m, f"default {cell!r} is neither a backticked TOML literal nor {REQUIRED}/{UNSET}"
    return tomllib.loads(f"v = {m.group(1)}")["v"]


def comparable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [comparable(v) for v in value]
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items()}
    return value


def test_every_field_is_documented_and_no_other() -> None:
    fields, rows = walk(), documented(PAGE.read_text(encoding="utf-8"))
    missing = sorted(set(fields) - set(rows))
    unknown = sorted(set(rows) - set(fields))
    assert not missing, f"docs/policy.md lacks rows for {missing}"
    assert not unknown, f"docs/policy.md documents fields the policy lacks: {unknown}"


def test_documented_defaults_are_the_models() -> None:
    fields, rows = walk(), documented(PAGE.read_text(encoding="utf-8"))
    wrong = []
    for key, cell in rows.items():
        if key not in fields:
            continue
        want, got = comparable(fields[key]), parse_default(cell)
        if type(got) is not type(want) or got != want:  # 6 is not 6.0, true is not 1
            wrong.append(f"{key}: documented {cell}, model {want!r}")
    assert not wrong, ("docs/policy.md defaults differ from controller/policy/:\n"
                       + "\n".join(wrong))


def test_walk_reaches_every_table() -> None:
    keys = walk()
    for key in ("training.epochs", "tracks.language", "alerts.webhooks.url", "upgrade.base",
                "drift.min_events", "tracks.drift", "base_gates", "metrics.port"):
        assert key in keys
