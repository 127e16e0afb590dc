"""`xlt mlflow`: the MLflow mirror's commands (sync, ui). The mirror itself lives in
controller.mlflow_mirror; these parse, call it, print."""

from __future__ import annotations

import subprocess

import click

from controller.cli.context import AppContext, pass_app
from controller.cli.group import cli
from controller.cli.options import json_option
from controller.cli.output import emit_json, emit_table


@cli.group()
def mlflow() -> None:
    """The MLflow mirror: registry versions, aliases and runs, for people to browse."""


@mlflow.command("sync")
@json_option
@click.option("--dry-run", is_flag=True,
              help="Drain the outbox, then only report differences, repairing none.")
@pass_app
def mlflow_sync(app: AppContext, as_json: bool, dry_run: bool) -> None:
    """Drain the outbox into MLflow, then reconcile: every registry version has a model
    version, and aliases champion/canary/previous equal the registry's tracks."""
    from controller.mlflow_mirror import sync

    report = sync(app.registry(), repair=not dry_run)
    if as_json:
        emit_json(report.as_dict())
        return
    d, r = report.drain, report.reconcile
    click.echo(f"mlflow        {report.tracking_uri}")
    click.echo(f"outbox        delivered {d.delivered} (replayed {d.replayed}, ignored "
               f"{d.ignored}), failed {d.failed}, pending {d.backlog.get('pending', 0)}")
    for err in d.errors:
        click.echo(f"  failed row {err['outbox_id']} {err['key']} {err['action']}: "
                   f"{err['error']} (retry in {err['retry_in_s']:g} s)")
    if r is None:
        return
    verb = "would repair" if dry_run else "repaired"
    click.echo(f"reconcile     {r.checked_tracks} tracks, {r.checked_versions} versions, "
               f"{len(r.differences)} differences"
               + (f", {sum(x.repaired for x in r.differences)} {verb}"
                  if r.differences else ""))
    if r.skipped:
        click.echo(f"  skipped (outbox rows pending): {', '.join(r.skipped)}")
    emit_table([vars(x) for x in r.differences], ["model", "kind", "detail", "repaired"],
               empty="  MLflow matches the registry")


@mlflow.command("ui")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on; keep the loopback unless you add auth.")
@click.option("--print-command", is_flag=True, help="Print the command instead of running it.")
@pass_app
def mlflow_ui(app: AppContext, port: int, host: str, print_command: bool) -> None:
    """Serve the MLflow UI on the mirror's store (default: the SQLite file under XLT_HOME,
    artifacts in XLT_HOME/mlartifacts) until Ctrl-C."""
    from controller.mlflow_mirror.server import server_env, ui_command

    settings = app.registry(ready=False).settings
    cmd = ui_command(settings.mlflow_tracking_uri, settings.home, host, port)
    if print_command:
        click.echo(subprocess.list2cmdline(cmd))
        return
    (settings.home / "mlartifacts").mkdir(parents=True, exist_ok=True)
    click.echo(f"MLflow UI on http://{host}:{port} (store {settings.mlflow_tracking_uri}); "
               "Ctrl-C stops it", err=True)
    try:
        code = subprocess.call(cmd, env=server_env())
    except KeyboardInterrupt:
        code = 0
    if code:
        raise click.exceptions.Exit(code)
