"""Registry commands of the CLI: adapter, dataset, status, promote, rollback, canary,
history, resolve. Each parses, calls the registry, prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from controller.cli.context import AppContext, pass_app
from controller.cli.group import cli
from controller.cli.options import (
    json_option,
    lang_option,
    reason_option,
    revision_option,
    task_option,
)
from controller.cli.output import emit, emit_json, emit_table
from registry import jsonsafe, queries
from registry.errors import InvalidInput


def _json_file(path: str | None, what: str) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {what} from {path}: {exc.strerror or exc}",
                           "give a readable JSON file") from exc
    value = jsonsafe.loads(data, f"{what} file {path}", max_bytes=1_000_000)
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} in {path} is not a JSON object", "write {...}")
    return value


def _track_line(track: Any) -> str:
    return f"{track.task}/{track.language} now at revision {track.revision}"


# -- adapters ---------------------------------------------------------------------------
@cli.group()
def adapter() -> None:
    """Per-language adapters (LoRA + head)."""


@adapter.command("register")
@task_option()
@lang_option()
@click.option("--base", required=True, help="Base encoder NAME@VERSION it was trained on.")
@click.option("--weights", required=True, type=click.Path(dir_okay=False),
              help="The adapter's .safetensors file.")
@click.option("--teacher", default=None, help="Teacher language tag.")
@click.option("--dataset", "dataset_ids", type=int, multiple=True, help="Training dataset id.")
@click.option("--metrics", "metrics_file", default=None, type=click.Path(dir_okay=False),
              help="JSON file of metrics.")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False),
              help="JSON file of adapter config (rank, target modules, head shape).")
@pass_app
def adapter_register(app: AppContext, task: str, language: str, base: str, weights: str,
                     teacher: str | None, dataset_ids: tuple[int, ...],
                     metrics_file: str | None, config_file: str | None) -> None:
    """Register an adapter version (status `registered`)."""
    a = app.registry().register_adapter(
        task=task, language=language, base=base, weights=weights, teacher_language=teacher,
        dataset_ids=list(dataset_ids), metrics=_json_file(metrics_file, "metrics"),
        config=_json_file(config_file, "config"))
    click.echo(f"registered {a.ref} ({a.status}) sha256 {a.artifact_sha256[:12]}")


@adapter.command("list")
@task_option(required=False)
@lang_option(required=False)
@click.option("--status", default=None, help="Only adapters with this status.")
@json_option
@pass_app
def adapter_list(app: AppContext, task: str | None, language: str | None, status: str | None,
                 as_json: bool) -> None:
    """List adapter versions."""
    rows = app.registry().query(queries.list_adapters, task, language, status)
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        r["accuracy"] = r["metrics"].get("accuracy")
    emit_table(rows, ["task", "language", "version", "status", "base", "teacher_language",
                      "accuracy", "created_at"])


@adapter.command("show")
@task_option()
@lang_option()
@click.option("--version", type=int, default=None, help="Version (default: the champion).")
@json_option
@pass_app
def adapter_show(app: AppContext, task: str, language: str, version: int | None,
                 as_json: bool) -> None:
    """Show one adapter version."""
    emit(app.registry().query(queries.show_adapter, task, language, version), as_json)


# -- tracks -----------------------------------------------------------------------------
STATUS_COLUMNS = ["task", "language", "base", "champion", "canary", "canary_weight", "previous",
                  "phase", "revision", "not_servable_on"]


@cli.command()
@task_option(required=False)
@json_option
@pass_app
def status(app: AppContext, task: str | None, as_json: bool) -> None:
    """Every track: base, champion, canary and weight, previous champion, phase, revision."""
    rows = app.registry().status(task)
    if as_json:
        emit_json(rows)
    else:
        emit_table(rows, STATUS_COLUMNS, empty="no tracks yet (register an adapter)")


@cli.command()
@task_option()
@lang_option()
@click.option("--version", required=True, type=click.IntRange(min=1))
@revision_option
@reason_option
@pass_app
def promote(app: AppContext, task: str, language: str, version: int,
            expected_revision: int | None, reason: str | None) -> None:
    """Make VERSION the champion (the old champion becomes `previous`)."""
    track = app.registry().promote(task, language, version, expected_revision, reason)
    click.echo(f"promoted v{version}: {_track_line(track)}")


@cli.command()
@task_option()
@lang_option()
@click.option("--to", "to_version", type=click.IntRange(min=1), default=None,
              help="Version to roll back to (default: the previous champion).")
@revision_option
@reason_option
@pass_app
def rollback(app: AppContext, task: str, language: str, to_version: int | None,
             expected_revision: int | None, reason: str | None) -> None:
    """Put the previous (or a named) known-good version back as champion, skipping analysis."""
    track = app.registry().rollback(task, language, to_version, expected_revision, reason)
    click.echo(f"rolled back: {_track_line(track)}")


@cli.group()
def canary() -> None:
    """Canary rollout of a candidate beside the champion."""


@canary.command("start")
@task_option()
@lang_option()
@click.option("--version", required=True, type=click.IntRange(min=1))
@click.option("--weight", required=True, type=float, help="Percent of traffic, (0, 100].")
@revision_option
@reason_option
@pass_app
def canary_start(app: AppContext, task: str, language: str, version: int, weight: float,
                 expected_revision: int | None, reason: str | None) -> None:
    """Send WEIGHT percent of the track's traffic (sticky per routing key) to VERSION."""
    track = app.registry().start_canary(task, language, version, weight, expected_revision,
                                        reason)
    click.echo(f"canary v{version} at {weight:g}%: {_track_line(track)}")


@canary.command("weight")
@task_option()
@lang_option()
@click.argument("weight", type=float)
@revision_option
@reason_option
@pass_app
def canary_weight(app: AppContext, task: str, language: str, weight: float,
                  expected_revision: int | None, reason: str | None) -> None:
    """Set the canary's share of traffic to WEIGHT percent."""
    track = app.registry().set_canary_weight(task, language, weight, expected_revision, reason)
    click.echo(f"canary at {weight:g}%: {_track_line(track)}")


@canary.command("abort")
@task_option()
@lang_option()
@revision_option
@reason_option
@pass_app
def canary_abort(app: AppContext, task: str, language: str, expected_revision: int | None,
                 reason: str | None) -> None:
    """Stop the canary: weight 0, candidate rejected."""
    track = app.registry().abort_canary(task, language, expected_revision, reason)
    click.echo(f"canary aborted: {_track_line(track)}")


@cli.command()
@task_option(required=False)
@lang_option(required=False)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the newest N.")
@json_option
@pass_app
def history(app: AppContext, task: str | None, language: str | None, limit: int | None,
            as_json: bool) -> None:
    """The audit log: who did what, when, and why."""
    rows = app.registry().query(queries.history, task, language, limit)
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        r["version"] = (r["after"] or {}).get("version")
    emit_table(rows, ["id", "at", "actor", "action", "task", "language", "adapter_id", "reason"],
               empty="no events")


@cli.command()
@task_option()
@lang_option()
@click.option("--key", "routing_key", required=True, help="Routing key (user or session id).")
@json_option
@pass_app
def resolve(app: AppContext, task: str, language: str, routing_key: str, as_json: bool) -> None:
    """Which adapter serves this request (canary/champion, parent-language and base fallback)."""
    emit(app.registry().resolve(task, language, routing_key).to_dict(), as_json)
