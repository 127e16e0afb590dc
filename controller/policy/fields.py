"""What every policy table is made of: the strict model base, the field checks the tables
share (language tags, base refs, cross-fitting folds) and the evidence a verdict may use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict

from registry.commands.lookups import parse_encoder_ref
from registry.errors import InvalidInput
from registry.languages import canonical_language


def canonical_languages(values: list[str]) -> list[str]:
    """BCP-47 tags canonicalised for a policy field; a bad tag is the field's error."""
    return [field_error(canonical_language, v) for v in values]


def field_error(check: Callable[[str], str], value: str) -> str:
    """`check(value)`, its InvalidInput as the ValueError pydantic reports with the
    field's path."""
    try:
        return check(value)
    except InvalidInput as exc:
        raise ValueError(str(exc)) from exc


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def base_ref(value: str) -> str:
    """A base encoder reference as a policy names it: NAME@VERSION (the registry's rule);
    a bad one is the field's error."""
    try:
        parse_encoder_ref(value)
    except InvalidInput as exc:
        detail = "" if "NAME@VERSION" in exc.message else f" of valid names ({exc.message})"
        raise ValueError(f"base {value!r} is not NAME@VERSION{detail}") from exc
    return value


Evidence = Literal["labels", "estimate", "agreement"]
ALL_EVIDENCE: tuple[Evidence, ...] = ("labels", "estimate", "agreement")


def check_folds(folds: int) -> int:
    if folds == 1:
        raise ValueError("cross-fitting needs at least 2 folds (or 0 for dev only)")
    return folds
