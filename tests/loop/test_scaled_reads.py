"""Reads that scale with the work, not the catalogue (real SQLite and PostgreSQL): a tick
over steady tracks issues the same number of statements for 5 tracks as for 60; status
reads only the adapters tracks point at; a batch revalidates its routes once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event, select

from controller.data import cldr
from controller.loop.clock import ManualClock
from controller.policy import Policy
from controller.runtime.bootstrap import build_operations, build_reconciler
from registry import queries
from registry.schema import Track
from registry.service import Registry
from tests.support.task_data import TEST_LANGUAGES
from tests.support.tiny import write_adapter_file

TASK = "emoji-group"
NOW = 1_800_000_000.0


@contextmanager
def statements(reg: Registry) -> Iterator[list[str]]:
    seen: list[str] = []
    engines = {reg.db.read_engine, reg.db.engine}

    def record(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        seen.append(statement)

    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)


def _steady_tracks(reg: Registry, task: str, languages: list[str]) -> None:
    for lang in languages:
        reg.ensure_track(task, lang, "tiny@1")
    with reg.unit_of_work() as uow:  # their drift checks are done and not due again
        for track in uow.session.scalars(select(Track)):
            track.phase_data = {"last_check_at": NOW, "cooldown_until": NOW * 2}


def _tick_statements(reg: Registry, task: str, n: int) -> list[str]:
    languages = [f"hi-x-t{i:03d}" for i in range(n)]
    _steady_tracks(reg, task, languages)
    policy = Policy.model_validate({"base": "tiny@1", "check_interval_s": 10**9,
                                    "tracks": [{"task": task, "language": lang}
                                               for lang in languages]})
    clock = ManualClock(NOW + 1)
    rec = build_reconciler(reg, policy, ops=build_operations(reg, policy, clock=clock), clock=clock)
    rec.tick()  # warm (first connection, dialect checks)
    with statements(reg) as seen:
        lines = rec.tick()
    assert lines.count(f"{task}/{languages[0]}: steady") == 1, lines
    return [s for s in seen if not s.upper().startswith(("BEGIN", "COMMIT", "ROLLBACK"))]


def test_steady_tick_reads_the_same_for_5_or_60_tracks(registry: Registry,
                                                        tiny_model_dir: Path) -> None:
    registry.init()
    cldr.register_task(registry, TEST_LANGUAGES)  # the demo task's data
    registry.register_encoder("tiny", "1", tiny_model_dir)
    few = _tick_statements(registry, "few", 5)
    many = _tick_statements(registry, "many", 60)  # the 5 of "few" are still there
    assert len(many) == len(few) <= 4, many  # tracks, upgrades in flight, queued jobs


def test_status_joins_only_the_adapters_tracks_point_at(registry: Registry,
                                                        tiny_model_dir: Path,
                                                        tmp_path: Path) -> None:
    registry.init()
    cldr.register_task(registry, TEST_LANGUAGES)  # the demo task's data
    enc = registry.register_encoder("tiny", "1", tiny_model_dir)
    for seed in range(1, 4):  # three versions of sr, two of them not live
        f = write_adapter_file(tmp_path / f"sr{seed}.safetensors", enc.fingerprint, seed)
        registry.register_adapter(task=TASK, language="sr", base="tiny@1", weights=f)
    registry.promote(TASK, "sr", 1)
    registry.promote(TASK, "sr", 3)
    registry.ensure_track(TASK, "yo", "tiny@1")
    with statements(registry) as seen:
        rows = registry.status(TASK)
    assert [s for s in seen if "FROM" in s.upper()] and len(
        [s for s in seen if "SELECT" in s.upper()]) == 1, seen
    assert [(r["language"], r["champion"], r["previous"], r["base"]) for r in rows] == [
        ("sr", 3, 1, "tiny@1"), ("yo", None, None, "tiny@1")]
    assert registry.status(TASK, "yo")[0]["language"] == "yo"
    assert registry.query(queries.track_languages, TASK) == ["sr", "yo"]


def test_cached_resolver_revalidates_once_per_batch(registry: Registry,
                                                    tiny_model_dir: Path,
                                                    tmp_path: Path) -> None:
    registry.init()
    cldr.register_task(registry, TEST_LANGUAGES)  # the demo task's data
    enc = registry.register_encoder("tiny", "1", tiny_model_dir)
    for seed in (1, 2):
        f = write_adapter_file(tmp_path / f"sr{seed}.safetensors", enc.fingerprint, seed)
        registry.register_adapter(task=TASK, language="sr", base="tiny@1", weights=f)
    registry.promote(TASK, "sr", 1)
    resolver = registry.cached_resolver(ttl=float("inf"))
    with statements(registry) as seen:
        resolver.revalidate()
        versions = {resolver.resolve(TASK, "sr", f"user-{k}").version for k in range(50)}
    assert versions == {1}
    assert sum("max(" in s.lower() for s in seen) == 1, seen  # one check for 50 requests
    registry.promote(TASK, "sr", 2)
    assert resolver.resolve(TASK, "sr", "user-1").version == 1  # until the next batch
    resolver.revalidate()
    assert resolver.resolve(TASK, "sr", "user-1").version == 2
