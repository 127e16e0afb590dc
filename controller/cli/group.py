"""The `xlt` group: global options, and the one place where errors become exit codes.

Errors are mapped to exit codes and one-line messages here, in one place:
2 = wrong input (usage, validation, not found), 3 = a refused state change, 1 = internal.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click
from sqlalchemy.exc import OperationalError

from controller.cli.context import AppContext
from registry.errors import XltError


class XltGroup(click.Group):
    """Turns domain errors into one line on stderr and the family's exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except XltError as exc:
            fail(str(exc), exc.exit_code)
        except OperationalError as exc:
            fail(database_error(exc), 2)
        except OSError as exc:  # the machine refused a file operation outside the store
            fail(f"cannot use {exc.filename or 'a file'}: {exc.strerror or exc}; check that "
                 "its disk has space and it is writable", 2)
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if os.environ.get("XLT_DEBUG"):
                raise
            fail(f"internal error: {type(exc).__name__}: {exc} "
                 "(set XLT_DEBUG=1 to see the traceback, and report it)", 1)


def database_error(exc: OperationalError) -> str:
    """One line for a database that refused: a server's, or a SQLite file's (whose cause
    is its disk or its path, never a server)."""
    first = (str(exc.orig).strip().splitlines() or ["unknown error"])[0]
    if type(exc.orig).__module__.startswith("sqlite3"):
        path = None  # the exception has no URL: the file is the context's registry's
        ctx = click.get_current_context(silent=True)
        obj = ctx.find_object(AppContext) if ctx is not None else None
        if obj is not None and obj._registry is not None:
            path = obj._registry.db.url.removeprefix("sqlite:///")
        where = f"SQLite registry {path}" if path else "the SQLite registry"
        return (f"{where}: {first}; check that its disk has space and that the file and its "
                "folder are writable")
    return (f"database error: {first}; check --db / XLT_DATABASE_URL and that the server "
            "is running")


def quiet_libraries() -> None:
    """Nothing is downloaded; library progress bars and deprecation chatter are not ours."""
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def fail(message: str, code: int) -> None:
    click.echo(f"xlt: error: {message}", err=True)
    sys.exit(code)


@click.group(cls=XltGroup)
@click.option("--db", "database_url", envvar="XLT_DATABASE_URL", default=None,
              help="Registry database URL (default: SQLite under XLT_HOME).")
@click.option("--home", envvar="XLT_HOME", default=None, type=click.Path(file_okay=False),
              help="Where xlt keeps its files (default ./.xlt).")
@click.option("--actor", default=None, help="Who acts, recorded in events (default: OS user).")
@click.version_option(package_name="xlt")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, home: str | None,
        actor: str | None) -> None:
    """xlt: a model registry and continual-update controller for cross-lingual transfer."""
    quiet_libraries()
    ctx.obj = AppContext(home=home, database_url=database_url, actor=actor)
