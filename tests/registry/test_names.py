"""One grammar for task, language and encoder names (registry.names), checked at every
entry: the Python API, the CLI, the HTTP service's registry calls and the policy. A bad
name is one line, exit 2, and nothing written -- on SQLite and PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, update

from registry.errors import InvalidInput, InvalidName
from registry.names import (
    encoder_ref,
    find_bad_names,
    language_tag,
    safe_path,
    task_name,
)
from registry.schema import InferenceEvent, Track
from tests.registry.test_artifact_refusals import refused, snapshot
from tests.support.tiny import write_adapter_file

BAD_TASKS = ["../x", "/tmp/abs", "a/b", "..", ".", "", "emoji\ngroup", "emoji-group\n",
             "Emoji", "a b", "-x", "x-", "a..b", "a\x00b", "x" * 65, "caf\u00e9"]
GOOD_TASKS = ["emoji-group", "t", "sentiment_v2", "a.b", "x" * 64, "2024"]


@pytest.mark.parametrize("value", BAD_TASKS)
def test_grammar_refuses(value: str) -> None:
    with pytest.raises(InvalidName, match="is not a valid name"):
        task_name(value)


@pytest.mark.parametrize("value", GOOD_TASKS)
def test_grammar_accepts(value: str) -> None:
    assert task_name(value) == value


def test_encoder_refs_and_languages() -> None:
    assert encoder_ref("me5-small@1") == ("me5-small", "1")
    for ref in ("../x@1", "/tmp/abs@1", "x@../1", "x@", "@1", "x", "x@1@2", "X@1"):
        with pytest.raises(InvalidName):
            encoder_ref(ref)
    assert language_tag("sr_Latn") == "sr-Latn"
    for tag in ("../sw", "sw/..", "s w"):
        with pytest.raises(InvalidInput):
            language_tag(tag)


def test_safe_path_stays_under_its_root(tmp_path: Path) -> None:
    assert safe_path(tmp_path, "a", "b.json") == tmp_path / "a" / "b.json"
    for parts in (("..", "x"), ("/etc/passwd",), ("a/../../x",), ("",), (".",)):
        with pytest.raises(InvalidName):
            safe_path(tmp_path, *parts)
    (tmp_path / "out").symlink_to("/tmp")  # a link inside the root that leaves it
    with pytest.raises(InvalidName, match="would be outside"):
        safe_path(tmp_path, "out", "x")
    assert not (tmp_path / "x").exists()


@pytest.fixture
def world(registry: Any, tiny_model_dir: Path) -> Any:
    registry.init()
    registry.fingerprint = registry.register_encoder("tiny", "1", tiny_model_dir).fingerprint
    return registry


@pytest.mark.parametrize("task", ["../x", "/tmp/abs", "a\nb", "../../etc"])
def test_register_refuses_bad_task_and_writes_nothing(world: Any, tmp_path: Path,
                                                      task: str) -> None:
    f = write_adapter_file(tmp_path / "a.safetensors", world.fingerprint)
    refused(world, InvalidName, "task name", lambda: world.register_adapter(
        task=task, language="sw", base="tiny@1", weights=f))
    refused(world, InvalidName, "task name",
            lambda: world.ensure_track(task, "sw", "tiny@1"))
    assert not (tmp_path / "x").exists() and not Path("/tmp/abs").exists()


@pytest.mark.parametrize("name,version", [("../x", "1"), ("/tmp/abs", "1"), ("x", "../1"),
                                          ("a\nb", "1")])
def test_register_encoder_refuses_bad_names(world: Any, tiny_model_dir: Path, name: str,
                                            version: str) -> None:
    refused(world, InvalidName, "base encoder",
            lambda: world.register_encoder(name, version, tiny_model_dir))


def test_writers_and_resolve_refuse_bad_tasks(world: Any) -> None:
    """What the HTTP service calls (resolve, log_predictions, record_feedback) and the
    controller's records: an unknown task resolves to the bare base and would be logged."""
    with pytest.raises(InvalidName):
        world.resolve("../x", "sw", "key")
    with pytest.raises(InvalidName):
        world.cached_resolver().resolve("../x", "sw", "key")
    row = {"task": "../x", "language": "sw", "text": "hi", "prediction": "a"}
    refused(world, InvalidName, "task name", lambda: world.log_predictions([row]))
    refused(world, InvalidName, "task name", lambda: world.log_inference_events([row]))
    refused(world, InvalidName, "task name", lambda: world.record_feedback("../x", {1: "a"}))
    refused(world, InvalidName, "task name",
            lambda: world.create_job("train", {}, "inline", task="../x", language="sw"))
    refused(world, InvalidName, "task name", lambda: world.record_drift_report(
        "../x", "sw", verdict="stable", signals={}, reference={}))
    refused(world, InvalidName, "task name",
            lambda: world.request_upgrade("tiny@1", "../x"))


def test_http_predict_with_a_bad_task_is_400(world: Any) -> None:
    """Through the served app: the registry's refusal is the 400 answer, nothing logged."""
    from fastapi.testclient import TestClient

    from controller.serve.app import create_app
    from controller.serve.auth import Authenticator
    from controller.serve.engine import Engine

    token = "a-client-token-of-32-characters!"
    engine = Engine(world)
    auth = Authenticator([(token, frozenset({"predict"}))])
    with TestClient(create_app(engine, warm=False, auth=auth)) as client:
        r = client.post("/v1/predict", json={"task": "../x", "language": "sw",
                                             "texts": ["cat"], "routing_key": "k"},
                        headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 400, r.text
    assert "task name '../x' is not a valid name" in r.json()["error"]
    with world.reading() as s:
        assert s.scalar(select(func.count()).select_from(InferenceEvent)) == 0


def test_policy_refuses_bad_task_names(tmp_path: Path) -> None:
    from controller.policy import parse_policy

    for text in ('[[tracks]]\ntask = "../x"\nlanguage = "sw"\n',
                 '[[tracks]]\ntask = "a\\nb"\nlanguage = "sw"\n', 'base = "../x@1"\n',
                 '[upgrade]\nbase = "/tmp/abs@1"\n'):
        with pytest.raises(InvalidInput, match="field (tracks.0.task|base|upgrade.base)"):
            parse_policy(text)
    assert parse_policy('[[tracks]]\ntask = "emoji-group"\nlanguage = "sr_Latn"\n'
                        ).tracks[0].language == "sr-Latn"


def cli(world: Any, *args: str) -> Any:
    from controller.cli import cli as xlt

    return CliRunner().invoke(xlt, ["--home", str(world.settings.home), "--db", world.db.url,
                                    *args])


def test_cli_refuses_dotdot_task_with_nothing_written(world: Any, tmp_path: Path) -> None:
    f = write_adapter_file(tmp_path / "a.safetensors", world.fingerprint)
    before = snapshot(world)
    home_files = sorted(p for p in world.settings.home.rglob("*"))
    outside = sorted(tmp_path.iterdir())
    result = cli(world, "adapter", "register", "--task", "../x", "--lang", "sw", "--base",
                 "tiny@1", "--weights", str(f))
    assert result.exit_code == 2, result.output
    assert result.output == ("xlt: error: task name '../x' is not a valid name; use "
                             "lower-case letters and digits, with single '-', '_' or '.' "
                             "between them, at most 64 characters (e.g. emoji-group)\n")
    assert snapshot(world) == before
    assert sorted(world.settings.home.rglob("*")) == home_files
    assert sorted(tmp_path.iterdir()) == outside
    result = cli(world, "encoder", "register", "/tmp/abs@1", str(tmp_path))
    assert result.exit_code == 2 and "base encoder name '/tmp/abs'" in result.output
    result = cli(world, "drift", "check", "--task", "../x")
    assert result.exit_code == 2 and "task name '../x'" in result.output


def _legacy_bad_track(world: Any, tmp_path: Path, task: str) -> None:
    """A track as an older xlt could record it: registered under a good name, renamed in
    the database (the registry itself no longer accepts the name)."""
    from registry.db import get_engine

    f = write_adapter_file(tmp_path / "legacy.safetensors", world.fingerprint)
    a = world.register_adapter(task="legacy", language="sw", base="tiny@1", weights=f)
    world.promote("legacy", "sw", a.version)  # the first champion
    from registry.schema import Adapter

    with get_engine(world.db.url).begin() as conn:
        conn.execute(update(Track).where(Track.task == "legacy").values(task=task))
        conn.execute(update(Adapter).where(Adapter.task == "legacy").values(task=task))


def test_drift_check_refuses_an_existing_bad_track_and_db_check_finds_it(
        world: Any, tmp_path: Path) -> None:
    _legacy_bad_track(world, tmp_path, "../../escape")
    with world.reading() as s:
        found = find_bad_names(s)
    assert {(b.table, b.column, b.value) for b in found} >= {
        ("tracks", "task", "../../escape"), ("adapters", "task", "../../escape")}
    before = sorted(tmp_path.rglob("*"))
    result = cli(world, "drift", "check")
    assert result.exit_code == 2, result.output
    assert "track '../../escape'/'sw'" in result.output and "xlt db check" in result.output
    assert sorted(tmp_path.rglob("*")) == before  # no report anywhere, inside or outside
    result = cli(world, "db", "check")
    assert result.exit_code == 2, result.output
    assert "tracks.task '../../escape' (1 rows)" in result.output


def test_db_check_is_quiet_on_a_clean_registry(world: Any, tmp_path: Path) -> None:
    world.register_adapter(task="emoji-group", language="sw", base="tiny@1",
                           weights=write_adapter_file(tmp_path / "a.safetensors",
                                                      world.fingerprint))
    result = cli(world, "db", "check")
    assert result.exit_code == 0, result.output
    assert "names: ok" in result.output
    assert os.path.isdir(world.settings.home)
