"""Concurrent outbox drains: each row is claimed by one drain (FOR UPDATE SKIP LOCKED on
PostgreSQL, a lease on SQLite), a key's rows are delivered in order, and four drains at
once against a real MLflow server create every model version exactly once."""

from __future__ import annotations

import multiprocessing as mp
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from registry.schema import OutboxMessage, utcnow
from tests.support.mlflow_support import TASK, MlflowServer, make_world

LANGS = ("sw", "yo", "hi", "am")
DRAINS = 4


def _keys(rows: list[Any]) -> list[str]:
    return [r.ordering_key for r in rows]


def test_claims_are_disjoint_ordered_and_leased(registry: Any, tiny_model_dir: Path,
                                                tmp_path: Path) -> None:
    world = make_world(registry, tiny_model_dir, tmp_path)
    for lang in ("sw", "sw", "yo"):
        world.adapter(lang)
    total = registry.outbox_backlog()["pending"]
    a = registry.outbox_claim("drain-a", 100)
    b = registry.outbox_claim("drain-b", 100)
    # one row per key (the key's first undelivered row), and never the same row twice
    assert len(set(_keys(a))) == len(a) and a
    assert b == []  # every key's head is leased to drain-a; the rows behind it wait
    first_sw = next(r for r in a if r.ordering_key == f"{TASK}/sw")
    registry.outbox_delivered(first_sw.id)
    b = registry.outbox_claim("drain-b", 100)
    assert [r.ordering_key for r in b] == [first_sw.ordering_key]  # the next row of that key
    assert b[0].id > first_sw.id
    # a drain that stops gives its rows back; a dead drain's lease runs out
    assert registry.outbox_release("drain-b") == 1
    with registry.unit_of_work() as uow:
        uow.session.execute(update(OutboxMessage).where(OutboxMessage.claimed_by == "drain-a")
                            .values(claimed_until=utcnow() - timedelta(seconds=1)))
    c = registry.outbox_claim("drain-c", 100)
    assert len(c) == len(a)  # every key again has a claimable head
    for row in c:
        registry.outbox_delivered(row.id)
    assert registry.outbox_backlog()["pending"] == total - 1 - len(c)


def _drain_child(home: str, db_url: str, uri: str, barrier: Any, out: Any) -> None:
    from controller.mlflow_mirror import Mirror, drain
    from registry.service import Registry
    from registry.settings import load_settings

    reg = Registry(load_settings(home=home, database_url=db_url), f"drain-{os.getpid()}")
    mirror = Mirror.open(reg, uri)
    mirror.target.client.search_registered_models()  # connect before the race starts
    barrier.wait(120)
    report = drain(reg, mirror, batch_size=3)  # small batches: the drains interleave
    out.put(report.as_dict())


@pytest.mark.slow
def test_four_concurrent_drains_create_each_version_once(registry: Any, tiny_model_dir: Path,
                                                          tmp_path: Path) -> None:
    from controller.mlflow_mirror import track_model_name
    from controller.mlflow_mirror.connection import open_client

    world = make_world(registry, tiny_model_dir, tmp_path)
    for lang in LANGS:
        for _ in range(3):
            world.adapter(lang)
        registry.promote(TASK, lang, 1)
        registry.start_canary(TASK, lang, 2, 10)
        registry.promote(TASK, lang, 2, reason="canary passed")
    rows = registry.outbox_backlog()["pending"]
    server = MlflowServer(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "mlflow").start()
    try:
        ctx = mp.get_context("spawn")
        barrier, out = ctx.Barrier(DRAINS), ctx.Queue()
        procs = [ctx.Process(target=_drain_child,
                             args=(str(registry.settings.home), registry.db.url, server.url,
                                   barrier, out)) for _ in range(DRAINS)]
        for p in procs:
            p.start()
        reports = [out.get(timeout=300) for _ in procs]
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        client = open_client(server.url)
        for lang in LANGS:
            versions = client.search_model_versions(f"name='{track_model_name(TASK, lang)}'")
            by_xlt = sorted((int(mv.tags["xlt_version"]), int(mv.version)) for mv in versions)
            # each registry version exactly once, created in registry order
            assert by_xlt == [(1, 1), (2, 2), (3, 3)], (lang, by_xlt)
            model = client.get_registered_model(track_model_name(TASK, lang))
            assert str(model.aliases.get("champion")) == "2", model.aliases
    finally:
        server.stop()
    assert registry.outbox_backlog()["pending"] == 0
    # every row delivered by exactly one drain, none replayed, none failed
    assert sum(r["delivered"] for r in reports) == rows, reports
    assert sum(r["replayed"] for r in reports) == 0 and sum(r["failed"] for r in reports) == 0
    assert sum(1 for r in reports if r["delivered"]) >= 2, reports  # the drains did overlap
