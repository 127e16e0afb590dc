"""Shared fixtures: the registry on real SQLite and real PostgreSQL, tiny models.

PostgreSQL tests run against XLT_TEST_PG_URL (default: the local server, trust auth). Each
test gets a fresh database cloned from a migrated template. Without a server they are
skipped locally; with CI=true a missing server fails the run instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.support.task_data import TEST_LANGUAGES

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PG_ADMIN_URL = os.environ.get("XLT_TEST_PG_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _pg_url(dbname: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{dbname}"


def _admin():  # AUTOCOMMIT: CREATE/DROP DATABASE cannot run in a transaction
    # pre-ping: a test may restart the server (tests/runtime/test_leader_faults_pg.py)
    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    from registry import migrate

    name = f"xlt_tmpl_{uuid.uuid4().hex[:8]}"
    try:
        admin = _admin()
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI but unreachable at {PG_ADMIN_URL}: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL}: {exc}")
    migrate.upgrade(_pg_url(name))
    from registry.db import dispose_engines

    dispose_engines()  # a template must have no open connections
    yield name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    name = f"xlt_t_{uuid.uuid4().hex[:10]}"
    admin = _admin()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    yield _pg_url(name)
    from registry.db import dispose_engines

    dispose_engines()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    from registry import migrate

    url = f"sqlite:///{tmp_path / 'registry.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A migrated, empty registry database on each backend."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def registry(db_url: str, tmp_path: Path):
    from registry.service import Registry
    from registry.settings import load_settings

    return Registry(load_settings(home=tmp_path / "home", database_url=db_url), actor="tester")


@pytest.fixture
def tiny_registry(registry, tmp_path: Path):
    """An initialised registry (SQLite and PostgreSQL) with a tiny random BERT as tiny@1,
    for training through the registry where model quality is not under test."""
    from controller.data import cldr
    from tests.support.tinymodel import make_tiny_bert

    registry.init()
    registry.register_encoder("tiny", "1", make_tiny_bert(tmp_path / "tiny"))
    cldr.register_task(registry, TEST_LANGUAGES)  # the demo task, by the public path
    return registry


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tiny import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_model_dir_v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same architecture, one more vocabulary word: a different fingerprint."""
    from tests.support.tiny import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert-v2"), extra_words=["emoji"])
