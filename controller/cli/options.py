"""Reusable click options; validation happens here so commands get clean values."""

from __future__ import annotations

from typing import Any

import click

from registry.errors import InvalidLanguage
from registry.languages import canonical_language
from registry.names import task_name


def _language(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is None:
        return None
    try:
        if isinstance(value, tuple):
            return tuple(canonical_language(v) for v in value)
        return canonical_language(value)
    except InvalidLanguage as exc:
        raise click.BadParameter(str(exc)) from exc


def task_value(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Callback of every --task: the name grammar of registry.names (InvalidName: one line,
    exit 2, before anything is opened)."""
    return None if value is None else task_name(value)


def task_option(required: bool = True) -> Any:
    return click.option("--task", required=required, callback=task_value,
                        help="Task name, e.g. emoji-group.")


def lang_option(required: bool = True, multiple: bool = False) -> Any:
    return click.option("--lang", "language", required=required, multiple=multiple,
                        callback=_language, help="BCP-47 language tag, e.g. sw or sr-Latn.")


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
revision_option = click.option(
    "--revision", "expected_revision", type=click.IntRange(min=0), default=None,
    help="Refuse unless the track is at this revision (from `xlt status`).")
reason_option = click.option("--reason", default=None, help="Why, recorded in the event.")


def lang_list(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Callback for a repeatable --lang option."""
    return _language(ctx, param, tuple(value or ()))
