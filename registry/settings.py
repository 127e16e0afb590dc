"""Where xlt keeps its state. One code path, two scales: only these URLs differ."""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from pathlib import Path

from registry.errors import InvalidInput


def normalise_database_url(url: str) -> str:
    """Accept the URLs people type and pick the drivers xlt is tested with."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if not (url.startswith("sqlite") or url.startswith("postgresql+psycopg://")):
        raise InvalidInput(
            f"unsupported database URL {url!r}",
            "use sqlite:///PATH or postgresql://USER@HOST:PORT/DB",
        )
    return url


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    mlflow_tracking_uri: str

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def load_settings(home: str | os.PathLike[str] | None = None, database_url: str | None = None,
                  mlflow_tracking_uri: str | None = None) -> Settings:
    """Flags win over the environment (XLT_HOME, XLT_DATABASE_URL, MLFLOW_TRACKING_URI),
    which wins over the embedded defaults under XLT_HOME."""
    home_path = Path(home or os.environ.get("XLT_HOME") or ".xlt").expanduser().resolve()
    db = (database_url or os.environ.get("XLT_DATABASE_URL")
          or f"sqlite:///{home_path / 'registry.db'}")
    mlflow_uri = (mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                  or f"sqlite:///{home_path / 'mlflow.db'}")
    return Settings(home=home_path, database_url=normalise_database_url(db),
                    mlflow_tracking_uri=mlflow_uri)


def default_actor() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in some containers; an event still needs an actor
        return "unknown"
