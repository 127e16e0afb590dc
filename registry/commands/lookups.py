"""Lookups used inside commands; they raise NotFound with a hint instead of returning None."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.errors import NotFound
from registry.languages import canonical_language
from registry.names import encoder_ref
from registry.schema import Adapter, BaseEncoder


def parse_encoder_ref(ref: str) -> tuple[str, str]:
    """(name, version) of NAME@VERSION, each a slug (registry.names)."""
    return encoder_ref(ref)


def encoder_by_ref(session: Session, ref: str) -> BaseEncoder:
    name, version = parse_encoder_ref(ref)
    enc = session.scalars(select(BaseEncoder).where(BaseEncoder.name == name,
                                                    BaseEncoder.version == version)).one_or_none()
    if enc is None:
        raise NotFound(f"no base encoder {ref}", "register it with `xlt encoder register`")
    return enc


def adapter_by_version(session: Session, task: str, language: str, version: int) -> Adapter:
    language = canonical_language(language)
    adapter = session.scalars(select(Adapter).where(
        Adapter.task == task, Adapter.language == language, Adapter.version == version)
    ).one_or_none()
    if adapter is None:
        raise NotFound(f"no adapter {task}/{language}@v{version}",
                       "list versions with `xlt adapter list`")
    return adapter
