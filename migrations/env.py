"""Alembic environment: runs against the URL that registry.migrate (or alembic.ini) sets."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool

from registry.schema import Base
from registry.settings import normalise_database_url

config = context.config
target_metadata = Base.metadata


def database_url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("XLT_DATABASE_URL")
    if not url:
        home = os.environ.get("XLT_HOME", ".xlt")
        url = f"sqlite:///{os.path.abspath(home)}/registry.db"
    return normalise_database_url(url)


def run_migrations_offline() -> None:
    context.configure(url=database_url(), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        # batch mode lets later migrations alter SQLite tables (copy-and-move)
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=True, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
