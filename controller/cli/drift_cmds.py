"""`xlt events ingest` (traffic in) and `xlt drift check` (per-language drift)."""

from __future__ import annotations

from pathlib import Path

import click

from controller.cli import cli, fail
from controller.cli.context import AppContext
from controller.cli.options import json_option
from controller.cli.output import emit_json
from controller.policy import load_policy

pass_app = click.make_pass_decorator(AppContext)


@cli.group()
def events() -> None:
    """Production traffic (inference events) for drift and canary analysis."""


@events.command("ingest")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--policy", "policy_path", default=None, type=click.Path(dir_okay=False),
              help="Policy file (no_text_languages: text not kept for those languages).")
@click.option("--all-or-nothing", is_flag=True,
              help="Store nothing when any row is rejected.")
@json_option
@pass_app
def events_ingest(app: AppContext, path: str, policy_path: str | None, all_or_nothing: bool,
                  as_json: bool) -> None:
    """Validate PATH (JSONL or Parquet), store the good rows, report each reject.

    Exit status 2 when any row was rejected (the good rows are still stored unless
    --all-or-nothing)."""
    from controller.events_ingest import ingest

    report = ingest(app.registry(), Path(path), load_policy(policy_path),
                    all_or_nothing=all_or_nothing)
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(f"stored {report.stored} events, rejected {len(report.rejects)}"
                   + (f", text withheld for {report.text_dropped}" if report.text_dropped
                      else ""))
        for line, reason in report.rejects:
            click.echo(f"  line {line}: {reason}", err=True)
    if report.rejects:
        fail(f"{len(report.rejects)} rows rejected"
             + ("; nothing stored" if all_or_nothing else "; the good rows were stored"), 2)
