"""The MLflow mirror against a real, in-process MLflow (SQLite tracking store): versions,
tags, aliases, idempotent replay, order per track, reconcile and repair, the run loggers."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from controller.cli import cli
from controller.mlflow_mirror import (
    Mirror,
    apply,
    drain,
    log_drift_run,
    log_training_run,
    sync,
    track_model_name,
)
from controller.mlflow_mirror import consumer as consumer_module
from registry import queries
from registry.schema import OutboxMessage
from tests.support.mlflow_support import TASK, free_port, make_world

NAME = track_model_name(TASK, "sw")


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised MLflow SQLite store, copied per test: creating one costs ~2 s."""
    from controller.mlflow_mirror.connection import open_client

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    client = open_client(f"sqlite:///{path}")
    client.search_experiments()
    client.search_registered_models()
    assert not path.with_name("mlflow.db-wal").exists()  # a plain copy is then complete
    return path


@pytest.fixture
def mlflow_uri(mlflow_template: Path, tmp_path: Path) -> str:
    dest = tmp_path / "mlflow" / "mlflow.db"
    dest.parent.mkdir()
    shutil.copyfile(mlflow_template, dest)
    return f"sqlite:///{dest}"


@pytest.fixture
def world(registry, tiny_model_dir: Path, tmp_path: Path):
    return make_world(registry, tiny_model_dir, tmp_path)


@pytest.fixture
def sqlite_world(sqlite_url: str, tiny_model_dir: Path, tmp_path: Path):
    """The registry on SQLite only, for tests whose subject is MLflow, not the backend."""
    from registry.service import Registry
    from registry.settings import load_settings

    reg = Registry(load_settings(home=tmp_path / "home", database_url=sqlite_url), "tester")
    return make_world(reg, tiny_model_dir, tmp_path)


def client_for(uri: str):
    from controller.mlflow_mirror.connection import open_client

    return open_client(uri)


def versions_by_tag(client, name: str) -> dict[str, str]:
    """registry version -> MLflow version."""
    return {mv.tags["xlt_version"]: str(mv.version)
            for mv in client.search_model_versions(f"name='{name}'")}


def aliases(client, name: str) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}


def build_history(world) -> None:
    reg = world.registry
    for _ in range(3):
        world.adapter()
    reg.promote(TASK, "sw", 1)
    reg.start_canary(TASK, "sw", 2, 10)
    reg.set_canary_weight(TASK, "sw", 50)
    reg.promote(TASK, "sw", 2, reason="canary passed")
    reg.reject(TASK, "sw", 3, reason="gate failed")


def test_drain_mirrors_versions_tags_and_aliases(world, mlflow_uri: str) -> None:
    reg = world.registry
    build_history(world)
    pending = reg.outbox_backlog()["pending"]
    report = drain(reg, Mirror.open(reg, mlflow_uri))
    assert report.failed == 0 and report.delivered == pending, report
    assert reg.outbox_backlog()["pending"] == 0

    client = client_for(mlflow_uri)
    mapping = versions_by_tag(client, NAME)
    assert set(mapping) == {"1", "2", "3"}
    assert aliases(client, NAME) == {"champion": mapping["2"], "previous": mapping["1"]}
    v2 = client.get_model_version(NAME, mapping["2"])
    adapter = reg.query(queries.show_adapter, TASK, "sw", 2)
    assert v2.tags["status"] == "champion" and v2.tags["base"] == "tiny@1"
    assert v2.tags["teacher"] == "en" and len(v2.tags) <= 6  # few tags, details below
    assert f"accuracy={adapter['metrics']['accuracy']:.4g}" in v2.description
    # the source is the MLflow model logged in the version's training run
    assert v2.source.startswith("models:/m-") and v2.run_id
    assert client.get_run(v2.run_id).data.tags["xlt.kind"] == "training"
    assert world.fingerprint in v2.description and "tiny@1" in v2.description
    assert adapter["artifact_sha256"] in v2.description
    statuses = {k: client.get_model_version(NAME, v).tags["status"] for k, v in mapping.items()}
    assert statuses == {"1": "retired", "2": "champion", "3": "rejected"}
    model = client.get_registered_model(NAME)
    assert model.tags["managed_by"] == "xlt" and model.tags["canary_weight"] == "0"
    # one registered model per base encoder too
    enc = client.search_model_versions("name='xlt.encoder.tiny'")
    assert [mv.tags["xlt_version"] for mv in enc] == ["1"]
    assert enc[0].tags["fingerprint"] == world.fingerprint and enc[0].run_id


def test_replaying_delivered_rows_is_harmless(sqlite_world, mlflow_uri: str) -> None:
    reg = sqlite_world.registry
    build_history(sqlite_world)
    mirror = Mirror.open(reg, mlflow_uri)
    drain(reg, mirror)
    client = client_for(mlflow_uri)
    before = (versions_by_tag(client, NAME), aliases(client, NAME))
    with reg.reading() as s:
        rows = s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
    assert all(r.delivered_at is not None for r in rows)
    outcomes = [apply(Mirror.open(reg, mlflow_uri), r.payload) for r in rows]
    # old track events are recognised by the watermark; encoder rows re-apply idempotently
    assert set(outcomes) <= {"replayed", "applied", "ignored"}
    assert outcomes.count("replayed") >= 6
    assert (versions_by_tag(client, NAME), aliases(client, NAME)) == before
    assert len(client.search_model_versions(f"name='{NAME}'")) == 3
    assert len(client.search_model_versions("name='xlt.encoder.tiny'")) == 1


def test_lost_reply_and_foreign_versions_keep_the_mapping(sqlite_world, mlflow_uri) -> None:
    """MLflow numbers differ from registry numbers after a version made outside the mirror;
    the xlt_version tag keeps the mapping, and a create that happened but whose reply was
    lost is found instead of duplicated."""
    reg = sqlite_world.registry
    client = client_for(mlflow_uri)
    client.create_registered_model(NAME)
    client.create_model_version(NAME, source="file:///nowhere", tags={"note": "by hand"})
    sqlite_world.adapter()
    mirror = Mirror.open(reg, mlflow_uri)
    # the version is created, then the consumer "crashes" before marking the row delivered
    mirror.ensure_adapter_version(1)
    drain(reg, Mirror.open(reg, mlflow_uri))
    sqlite_world.adapter()
    reg.promote(TASK, "sw", 2)
    drain(reg, Mirror.open(reg, mlflow_uri))
    mapping = {mv.tags.get("xlt_version"): str(mv.version)
               for mv in client.search_model_versions(f"name='{NAME}'")}
    assert mapping == {None: "1", "1": "2", "2": "3"}
    assert aliases(client, NAME) == {"champion": "3"}
    report = sync(reg, mlflow_uri).reconcile
    assert [d.kind for d in report.differences] == ["unmapped"]  # reported, never deleted


def test_a_failing_row_holds_back_its_key_only_and_keeps_order(sqlite_world, mlflow_uri,
                                                              monkeypatch) -> None:
    reg = sqlite_world.registry
    sqlite_world.adapter("sw")
    sqlite_world.adapter("yo")
    sqlite_world.adapter("sw")
    reg.promote(TASK, "sw", 1)
    reg.promote(TASK, "yo", 1)
    reg.promote(TASK, "sw", 2)
    applied: list[tuple[str, int]] = []
    real_apply = consumer_module.apply
    broken = {"on": True}

    def flaky(mirror, payload):
        key = f"{payload.get('task')}/{payload.get('language')}"
        if key == f"{TASK}/sw" and payload["action"] == "promote" and broken["on"]:
            raise RuntimeError("boom")
        applied.append((key, payload["event_id"]))
        return real_apply(mirror, payload)

    monkeypatch.setattr(consumer_module, "apply", flaky)
    report = drain(reg, Mirror.open(reg, mlflow_uri), base_delay_s=0.05)
    assert report.failed == 1 and not report.unavailable
    assert report.errors[0]["error"] == "RuntimeError: boom"
    assert report.errors[0]["retry_in_s"] == pytest.approx(0.05)
    sw_after_failure = [e for k, e in applied if k == f"{TASK}/sw"]
    assert (f"{TASK}/yo") in {k for k, _ in applied}  # the other track went on
    with reg.reading() as s:
        failing = s.scalars(select(OutboxMessage).where(OutboxMessage.attempts == 1,
                                                        OutboxMessage.delivered_at.is_(None))
                            ).all()
    assert len(failing) == 1 and failing[0].last_error == "RuntimeError: boom"
    assert all(e < failing[0].event_id for e in sw_after_failure)  # nothing after it
    assert reg.outbox_backlog()["pending"] == 2  # the failing promote and the one behind it
    # while it backs off, a drain delivers nothing of that key
    assert drain(reg, Mirror.open(reg, mlflow_uri)).delivered in (0, 2)
    broken["on"] = False
    deadline = time.monotonic() + 10
    while reg.outbox_backlog()["pending"] and time.monotonic() < deadline:
        time.sleep(0.05)
        drain(reg, Mirror.open(reg, mlflow_uri))
    assert reg.outbox_backlog()["pending"] == 0
    sw = [e for k, e in applied if k == f"{TASK}/sw"]
    assert sw == sorted(sw)  # in order per track, including the retried row
    client = client_for(mlflow_uri)
    assert aliases(client, NAME) == {"champion": versions_by_tag(client, NAME)["2"],
                                     "previous": versions_by_tag(client, NAME)["1"]}


def test_sync_repairs_what_was_changed_by_hand(sqlite_world, mlflow_uri) -> None:
    reg = sqlite_world.registry
    build_history(sqlite_world)
    assert sync(reg, mlflow_uri).reconcile.clean
    client = client_for(mlflow_uri)
    mapping = versions_by_tag(client, NAME)
    # someone moves the champion back in the UI, drops `previous`, edits a status tag,
    # and deletes a version
    client.set_registered_model_alias(NAME, "champion", mapping["1"])
    client.delete_registered_model_alias(NAME, "previous")
    client.set_model_version_tag(NAME, mapping["2"], "status", "retired")
    client.delete_model_version(NAME, mapping["3"])

    dry = sync(reg, mlflow_uri, repair=False).reconcile
    assert {d.kind for d in dry.differences} == {"alias", "status", "missing_version"}
    assert aliases(client, NAME) == {"champion": mapping["1"]}  # a dry run changes nothing

    report = sync(reg, mlflow_uri).reconcile
    kinds = sorted(d.kind for d in report.differences)
    assert kinds == ["alias", "alias", "missing_version", "status"]
    assert all(d.repaired for d in report.differences)
    mapping = versions_by_tag(client, NAME)
    assert aliases(client, NAME) == {"champion": mapping["2"], "previous": mapping["1"]}
    assert client.get_model_version(NAME, mapping["2"]).tags["status"] == "champion"
    assert mapping["3"] not in ("1", "2", "3")  # recreated under a new MLflow number
    repairs = [e for e in reg.query(queries.history, TASK, "sw")
               if e["action"] == "mlflow_repair"]
    assert len(repairs) == 1 and repairs[0]["id"] in report.events
    done = {r["alias"]: r for r in repairs[0]["after"]["repairs"]}
    assert done["champion"]["was"] == mapping["1"] and done["champion"]["registry_version"] == 2
    assert reg.outbox_backlog()["pending"] == 0  # the repair event was mirrored too
    assert sync(reg, mlflow_uri).reconcile.clean


def test_cli_sync_json_and_text(sqlite_world, mlflow_uri, sqlite_url) -> None:
    build_history(sqlite_world)
    home = str(sqlite_world.registry.settings.home)
    runner = CliRunner()
    env = {"MLFLOW_TRACKING_URI": mlflow_uri}
    res = runner.invoke(cli, ["--home", home, "--db", sqlite_url, "mlflow", "sync", "--json"],
                        env=env)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["drain"]["failed"] == 0 and out["reconcile"]["clean"] is True
    client_for(mlflow_uri).delete_registered_model_alias(NAME, "champion")
    res = runner.invoke(cli, ["--home", home, "--db", sqlite_url, "mlflow", "sync"], env=env)
    assert res.exit_code == 0, res.output
    assert "1 differences, 1 repaired" in res.output and "alias champion" in res.output


def test_cli_ui_command(tmp_path, sqlite_url) -> None:
    runner = CliRunner()
    home = str(tmp_path / "home")
    res = runner.invoke(cli, ["--home", home, "mlflow", "ui", "--port", "5123",
                              "--print-command"], env={"MLFLOW_TRACKING_URI": None})
    assert res.exit_code == 0, res.output
    assert "server --backend-store-uri sqlite:///" in res.output
    assert f"{home}/mlflow.db" in res.output and f"{home}/mlartifacts" in res.output
    res = runner.invoke(cli, ["--home", home, "mlflow", "ui"],
                        env={"MLFLOW_TRACKING_URI": "http://mlflow.example:5000"})
    assert res.exit_code == 2 and "is a server already" in res.output


def test_run_loggers(sqlite_world, mlflow_uri, tmp_path) -> None:
    reg = sqlite_world.registry
    adapter = sqlite_world.adapter()
    drain(reg, Mirror.open(reg, mlflow_uri))
    gates = {"gates": [{"name": "accuracy", "value": 0.6, "threshold": 0.5, "passed": True}]}
    run_id = log_training_run(mlflow_uri, adapter, {"lora": {"r": 4}, "epochs": 2},
                              {"accuracy": 0.61, "loss": [1.0, 0.5, 0.25]},
                              reg.store.blob_path(adapter.artifact_sha256), gates)
    assert run_id
    client = client_for(mlflow_uri)
    run = client.get_run(run_id)
    assert run.data.params == {"lora.r": "4", "epochs": "2"}
    assert run.data.metrics["accuracy"] == pytest.approx(0.61)
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [1.0, 0.5, 0.25]
    assert run.data.tags["xlt_version"] == "1" and run.data.tags["status"] == "registered"
    assert run.data.tags["gate.accuracy.passed"] == "true"
    assert run.data.tags["xlt.kind"] == "evaluation"  # a gates run is not the training run
    assert run.info.status == "FINISHED"
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == f"xlt/{TASK}/sw"
    root = Path(mlflow_uri.removeprefix("sqlite:///")).parent / "mlartifacts"
    assert exp.artifact_location.startswith(root.as_uri())  # never ./mlruns in the cwd
    assert [f.path for f in client.list_artifacts(run_id)] == ["gate_report.json"]
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    # the training run logged afterwards is the one the version links (made by the mirror)
    mv = client.get_model_version(NAME, versions_by_tag(client, NAME)["1"])
    train_id = log_training_run(mlflow_uri, adapter, {"epochs": 2}, {"accuracy": 0.61})
    assert train_id == mv.run_id != run_id
    assert client.get_run(train_id).data.params["epochs"] == "2"

    report_json = tmp_path / "drift.json"
    report_json.write_text(json.dumps({"verdict": "drift"}))
    report_html = tmp_path / "drift.html"
    report_html.write_text("<html>drift</html>")
    from controller.drift.projection import draw_projection

    rng = np.random.default_rng(0)
    picture = draw_projection(tmp_path / "drift.png", "sw", rng.normal(size=(50, 8)),
                              rng.normal(1, 1, size=(40, 8)), ["latin"] * 50,
                              ["latin"] * 20 + ["cyrillic"] * 20, None, None)
    drift_id = log_drift_run(TASK, "sw", report_json, report_html,
                             {"embedding": {"score": 0.4, "drifted": True}, "share": 0.1},
                             verdict="drift", target=mlflow_uri, pictures=[picture])
    assert drift_id
    drun = client.get_run(drift_id)
    assert drun.data.metrics == {"embedding.score": 0.4, "embedding.drifted": 1.0, "share": 0.1}
    assert sorted(f.path for f in client.list_artifacts(drift_id, "drift")) == [
        "drift/drift.html", "drift/drift.json", "drift/drift.png"]


def test_run_loggers_tolerate_mlflow_down(sqlite_world, caplog) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    adapter = sqlite_world.adapter()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert log_training_run(down, adapter, {"epochs": 1}, {"accuracy": 0.5}) is None
        assert log_drift_run(TASK, "sw", None, None, {"score": 0.1}, target=down) is None
    assert time.monotonic() - started < 10
    assert "could not log the training run" in caplog.text


def test_gates_canary_analysis_and_drift_annotate_versions(sqlite_world, mlflow_uri) -> None:
    reg = sqlite_world.registry
    sqlite_world.adapter()
    sqlite_world.adapter()
    reg.promote(TASK, "sw", 1)
    reg.record_gate_result(TASK, "sw", 2, [
        {"name": "accuracy", "value": 0.61, "threshold": 0.5, "passed": True},
        {"name": "forgetting (en)", "value": 0.01, "threshold": 0.02, "passed": True}])
    reg.mark_gated(TASK, "sw", 2)
    reg.start_canary(TASK, "sw", 2, 10)
    reg.record_canary_analysis(TASK, "sw", 1, 10, {"accuracy": 0.6}, "pass")
    reg.record_drift_report(TASK, "sw", verdict="drift", reference={"dataset": "x"},
                            signals={"script_mix": {"drifted": True, "score": 0.3}})
    job = reg.create_job("train", {"epochs": 1}, "local", TASK, "sw")
    reg.update_job(job.id, "running")
    assert drain(reg, Mirror.open(reg, mlflow_uri)).failed == 0
    client = client_for(mlflow_uri)
    mapping = versions_by_tag(client, NAME)
    v2 = client.get_model_version(NAME, mapping["2"])
    tags = v2.tags
    assert tags["status"] == "canary" and tags["gates"] == "passed"
    assert "| forgetting (en) | 0.01 | 0.02 | pass |" in v2.description
    assert tags["canary"] == "step 1 at 10%: pass" and "| 1 | 10 | pass |" in v2.description
    model = client.get_registered_model(NAME)
    assert aliases(client, NAME) == {"champion": mapping["1"], "canary": mapping["2"]}
    assert model.tags["drift.verdict"] == "drift" and model.tags["canary_weight"] == "10"
    assert json.loads(model.tags["job.train"])["status"] == "running"


def test_global_uri_leaves_no_tracking_uri_for_subprocesses(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; after the mirror's temporary
    switch, a later `xlt` subprocess must still log to its own XLT_HOME store, not to the
    working directory's ./mlflow.db (the leak once made `xlt train` log to the wrong store)."""
    import mlflow

    from controller.mlflow_mirror.connection import global_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    mlflow.set_tracking_uri(None)
    with global_uri(f"sqlite:///{tmp_path / 'a.db'}"):
        assert os.environ["MLFLOW_TRACKING_URI"].endswith("a.db")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert "MLFLOW_REGISTRY_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    with global_uri(f"sqlite:///{tmp_path / 'b.db'}"):
        pass
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5999"
