"""resolve(task, language, routing_key): which adapter serves a request.

The canary serves a key when hash(routing_key, canary) mod 10000 < weight * 100, else the
champion: sticky per key for one canary. A language without a champion falls back to its
parent tags (sr-Latn -> sr), then to the bare base encoder.

Each resolution names the base to serve on: the served adapter's own base. During a base
upgrade's canary the champion runs on the old base and the canary on the new one, so two
requests of one track can need two bases (DESIGN.md, base upgrades).

`resolve` is one indexed query. `CachedResolver` keeps routes in memory and re-validates
them against the newest event id (every state change appends an event) at most every
`ttl` seconds, so a promotion made by another process is seen within `ttl`.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import aliased

from registry.db import Database
from registry.languages import canonical_language, parent_languages
from registry.names import task_name
from registry.schema import Adapter, BaseEncoder, Event, Track


@dataclass(frozen=True)
class Route:
    """The routing-relevant part of one track (what the cache keeps)."""

    language: str
    base: str  # the track's base
    champion_version: int | None
    champion_sha256: str | None
    canary_id: int | None
    canary_version: int | None
    canary_sha256: str | None
    canary_weight: float
    champion_base: str | None = None  # each adapter's own base (differs during an upgrade)
    canary_base: str | None = None


@dataclass(frozen=True)
class Resolution:
    task: str
    language: str
    served_language: str | None
    version: int | None
    role: str  # champion | canary | base
    via: str  # exact | parent | base
    base: str | None  # the base to serve on: the served adapter's own
    artifact_sha256: str | None
    track_base: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def in_canary(routing_key: str, canary_id: int, weight: float) -> bool:
    digest = hashlib.blake2b(f"{routing_key}\x00{canary_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10000 < weight * 100


_champ, _canary = aliased(Adapter), aliased(Adapter)
_champ_base, _canary_base = aliased(BaseEncoder), aliased(BaseEncoder)
_ROUTES = (
    select(Track.language, BaseEncoder.name, BaseEncoder.version, _champ.version,
           _champ.artifact_sha256, Track.canary_id, _canary.version, _canary.artifact_sha256,
           Track.canary_weight, _champ_base.name, _champ_base.version, _canary_base.name,
           _canary_base.version)
    .join(BaseEncoder, BaseEncoder.id == Track.base_encoder_id)
    .outerjoin(_champ, _champ.id == Track.champion_id)
    .outerjoin(_canary, _canary.id == Track.canary_id)
    .outerjoin(_champ_base, _champ_base.id == _champ.base_encoder_id)
    .outerjoin(_canary_base, _canary_base.id == _canary.base_encoder_id)
    .where(Track.task == bindparam("task"),
           Track.language.in_(bindparam("languages", expanding=True)))
)
_NEWEST_BASE = select(BaseEncoder.name, BaseEncoder.version).order_by(
    BaseEncoder.id.desc()).limit(1)


def load_routes(db: Database, task: str, languages: list[str]) -> dict[str, Route]:
    with db.read_engine.connect() as conn:
        rows = conn.execute(_ROUTES, {"task": task, "languages": languages}).all()
    def ref(name: str | None, version: str | None) -> str | None:
        return f"{name}@{version}" if name else None

    return {r[0]: Route(r[0], f"{r[1]}@{r[2]}", r[3], r[4], r[5], r[6], r[7], r[8] or 0.0,
                        ref(r[9], r[10]), ref(r[11], r[12]))
            for r in rows}


def newest_base(db: Database) -> str | None:
    with db.read_engine.connect() as conn:
        row = conn.execute(_NEWEST_BASE).first()
    return f"{row[0]}@{row[1]}" if row else None


def choose(task: str, language: str, chain: list[str], routes: dict[str, Route],
           routing_key: str, fallback_base: str | None) -> Resolution:
    for i, lang in enumerate(chain):
        route = routes.get(lang)
        if route is None or route.champion_version is None:
            continue
        via = "exact" if i == 0 else "parent"
        if route.canary_id is not None and in_canary(routing_key, route.canary_id,
                                                     route.canary_weight):
            return Resolution(task, language, lang, route.canary_version, "canary", via,
                              route.canary_base or route.base, route.canary_sha256,
                              route.base)
        return Resolution(task, language, lang, route.champion_version, "champion", via,
                          route.champion_base or route.base, route.champion_sha256,
                          route.base)
    base = next((routes[lang].base for lang in chain if lang in routes), fallback_base)
    return Resolution(task, language, None, None, "base", "base", base, None, base)


def resolve(db: Database, task: str, language: str, routing_key: str) -> Resolution:
    task_name(task)  # an unknown task falls back to the bare base: its name is logged
    language = canonical_language(language)
    chain = [language, *parent_languages(language)]
    routes = load_routes(db, task, chain)
    if any(r.champion_version is not None for r in routes.values()):
        return choose(task, language, chain, routes, routing_key, None)
    return choose(task, language, chain, routes, routing_key, newest_base(db))


class CachedResolver:
    def __init__(self, db: Database, ttl: float = 0.5) -> None:
        self.db = db
        self.ttl = ttl
        self._routes: dict[tuple[str, str], tuple[list[str], dict[str, Route], str | None]] = {}
        self._seen_event_id: int | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()

    def _revalidate(self) -> None:
        with self.db.read_engine.connect() as conn:
            newest = conn.execute(select(func.max(Event.id))).scalar()
        if newest != self._seen_event_id:
            self._routes.clear()
            self._seen_event_id = newest
        self._checked_at = time.monotonic()

    def revalidate(self) -> None:
        """Check once (one max(events.id) query) whether any route may have changed; a
        batch calls it before resolving its requests, so the check is per batch."""
        with self._lock:
            self._revalidate()

    def resolve(self, task: str, language: str, routing_key: str) -> Resolution:
        if time.monotonic() - self._checked_at > self.ttl:
            with self._lock:
                self._revalidate()
        key = (task, language)
        entry = self._routes.get(key)
        if entry is None:
            task_name(task)
            lang = canonical_language(language)
            chain = [lang, *parent_languages(lang)]
            routes = load_routes(self.db, task, chain)
            has_champion = any(r.champion_version is not None for r in routes.values())
            entry = (chain, routes, None if has_champion else newest_base(self.db))
            self._routes[key] = entry
        chain, routes, base = entry
        return choose(task, chain[0], chain, routes, routing_key, base)
