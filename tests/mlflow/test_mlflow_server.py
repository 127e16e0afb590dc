"""The mirror against a real `mlflow server` (a subprocess on a loopback port, backed by
PostgreSQL), including an outage: the registry keeps working, the outbox grows, nothing is
lost, and the drain catches up in order once the server is back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, select, text

from controller.cli import cli
from controller.mlflow_mirror import Mirror, MlflowUnavailable, drain, sync, track_model_name
from controller.mlflow_mirror import consumer as consumer_module
from controller.mlflow_mirror.connection import open_client
from registry.schema import OutboxMessage
from tests.support.mlflow_support import TASK, MlflowServer, make_world

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
SW, YO = track_model_name(TASK, "sw"), track_model_name(TASK, "yo")


@pytest.fixture
def mlflow_pg(pg_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for MLflow's own tables, on the registry's server."""
    name = f"xlt_mlflow_{uuid.uuid4().hex[:10]}"
    admin = create_engine(pg_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield pg_url.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def server(mlflow_pg: str, tmp_path: Path) -> Iterator[MlflowServer]:
    srv = MlflowServer(mlflow_pg, tmp_path / "mlflow-server").start()
    yield srv
    srv.stop()


@pytest.fixture
def world(pg_url: str, tiny_model_dir: Path, tmp_path: Path):
    from registry.service import Registry
    from registry.settings import load_settings

    reg = Registry(load_settings(home=tmp_path / "home", database_url=pg_url), "tester")
    return make_world(reg, tiny_model_dir, tmp_path)


def mapping(client, name: str) -> dict[str, str]:
    return {mv.tags["xlt_version"]: str(mv.version)
            for mv in client.search_model_versions(f"name='{name}'")}


def test_outage_registry_keeps_working_and_mirror_catches_up_in_order(
        world, server: MlflowServer, pg_url: str, monkeypatch) -> None:
    reg = world.registry
    world.adapter("sw")
    reg.promote(TASK, "sw", 1)
    first = drain(reg, Mirror.open(reg, server.url))
    assert first.failed == 0 and reg.outbox_backlog()["pending"] == 0
    client = open_client(server.url)
    assert client.get_registered_model(SW).aliases == {"champion": "1"}
    # on a server too the source is the logged MLflow model (artifacts on the server)
    mv = client.get_model_version(SW, "1")
    assert mv.source.startswith("models:/m-") and mv.run_id

    server.stop()
    # MLflow is down: registry commands still succeed, the outbox grows
    world.adapter("sw")
    reg.start_canary(TASK, "sw", 2, 10)
    reg.set_canary_weight(TASK, "sw", 50)
    reg.promote(TASK, "sw", 2)
    world.adapter("yo")
    reg.promote(TASK, "yo", 1)
    pending = reg.outbox_backlog()["pending"]
    assert pending == 7  # sw: register, canary, weight, promote; yo: track, register, promote
    started = time.monotonic()
    down = drain(reg, Mirror.open(reg, server.url), base_delay_s=0.5)
    assert time.monotonic() - started < 15  # fails fast, no MLflow-side retry loop
    assert down.unavailable and down.failed == 1 and down.delivered == 0
    assert down.errors[0]["retry_in_s"] == pytest.approx(0.5)
    assert reg.outbox_backlog() == {"pending": pending, "failing": 1,
                                    "oldest_id": down.errors[0]["outbox_id"]}
    with pytest.raises(MlflowUnavailable, match="unreachable"):
        sync(reg, server.url, base_delay_s=0.5)
    res = CliRunner().invoke(cli, ["--home", str(reg.settings.home), "--db", pg_url, "mlflow",
                                   "sync"], env={"MLFLOW_TRACKING_URI": server.url})
    assert res.exit_code == 2 and "unreachable" in res.output and "Traceback" not in res.output
    assert reg.outbox_backlog()["pending"] == pending  # nothing lost
    with reg.reading() as s:
        backing_off = s.scalars(select(OutboxMessage).where(
            OutboxMessage.delivered_at.is_(None), OutboxMessage.attempts > 0)).all()
    assert all(r.next_attempt_at is not None and r.last_error for r in backing_off)

    server.start()
    seen: list[tuple[str, int]] = []
    real_apply = consumer_module.apply

    def recording(mirror, payload):
        seen.append((f"{payload.get('task')}/{payload.get('language')}", payload["event_id"]))
        return real_apply(mirror, payload)

    monkeypatch.setattr(consumer_module, "apply", recording)
    deadline = time.monotonic() + 30  # the backoff is at most a few seconds here
    while reg.outbox_backlog()["pending"] and time.monotonic() < deadline:
        drain(reg, Mirror.open(reg, server.url), base_delay_s=0.5)
        time.sleep(0.2)
    assert reg.outbox_backlog()["pending"] == 0
    for key in {k for k, _ in seen}:
        ids = [e for k, e in seen if k == key]
        assert ids == sorted(ids), key  # order per track kept through the retries
    client = open_client(server.url)
    sw = mapping(client, SW)
    assert set(sw) == {"1", "2"}
    assert client.get_registered_model(SW).aliases == {"champion": sw["2"],
                                                       "previous": sw["1"]}
    assert client.get_registered_model(YO).aliases == {"champion": mapping(client, YO)["1"]}
    from registry import queries

    last_sw = reg.query(queries.history, TASK, "sw")[-1]["id"]
    assert client.get_registered_model(SW).tags["xlt_event_id"] == str(last_sw)
    assert sync(reg, server.url).reconcile.clean


def test_alias_moved_in_server_is_repaired_and_recorded(world, server: MlflowServer) -> None:
    reg = world.registry
    world.adapter("sw")
    world.adapter("sw")
    reg.promote(TASK, "sw", 1)
    reg.promote(TASK, "sw", 2)
    assert sync(reg, server.url).reconcile.clean
    client = open_client(server.url)
    client.set_registered_model_alias(SW, "champion", "1")  # by hand, as in the UI
    report = sync(reg, server.url).reconcile
    assert [(d.kind, d.repaired) for d in report.differences] == [("alias", True)]
    assert client.get_registered_model(SW).aliases == {"champion": "2", "previous": "1"}
    from registry import queries

    notes = [e for e in reg.query(queries.history, TASK, "sw") if e["action"] == "mlflow_repair"]
    assert len(notes) == 1 and notes[0]["after"]["repairs"][0]["was"] == "1"
