"""`xlt events ingest` (traffic in) and `xlt drift check` (per-language drift)."""

from __future__ import annotations

from pathlib import Path

import click

from controller.cli.context import AppContext, load_policy, pass_app
from controller.cli.group import cli, fail
from controller.cli.options import json_option, lang_list, task_value
from controller.cli.output import emit_json, emit_table
from controller.runtime.bootstrap import build_operations
from registry.errors import InvalidName
from registry.names import language_tag, task_name


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
    from controller.traffic.ingest import ingest

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


@cli.group()
def drift() -> None:
    """Per-language drift checks on logged traffic."""


@drift.command("check")
@click.option("--task", default=None, callback=task_value, help="Only this task.")
@click.option("--lang", "languages", multiple=True, callback=lang_list,
              help="Only these languages (repeatable).")
@click.option("--policy", "policy_path", default=None, type=click.Path(dir_okay=False),
              help="Policy file with drift thresholds (defaults otherwise).")
@click.option("--html", type=click.Choice(["drifted", "always", "never"]), default="drifted",
              show_default=True, help="Which languages get an Evidently HTML report.")
@json_option
@pass_app
def drift_check(app: AppContext, task: str | None, languages: tuple[str, ...],
                policy_path: str | None, html: str, as_json: bool) -> None:
    """Check each track's recent traffic against its reference; store the reports."""

    policy = load_policy(policy_path)
    reg = app.registry()
    tracks = [r for r in reg.status(task) if r["champion"] and
              (not languages or r["language"] in languages)]
    if not tracks:
        fail("no tracks with a champion to check"
             + (f" among {', '.join(languages)}" if languages else ""), 2)
    for t in tracks:  # names recorded before registry.names: their reports would be paths
        try:
            task_name(t["task"]), language_tag(t["language"])
        except InvalidName as exc:
            raise InvalidName(f"track {t['task']!r}/{t['language']!r}: {exc.message}",
                              "no report was written; list such names with `xlt db "
                              "check`") from exc
    ops = build_operations(reg, policy, html=html)
    rows = []
    for t in tracks:
        outcome = ops.check_drift(t["task"], t["language"],
                                  policy.drift_for(t["task"], t["language"]))
        rows.append({"task": t["task"], "language": t["language"], "verdict": outcome.verdict,
                     "drifted": ", ".join(outcome.drifted_signals) or "-",
                     "report_id": outcome.report_id})
    if as_json:
        emit_json(rows)
    else:
        emit_table(rows, ["task", "language", "verdict", "drifted", "report_id"])
        click.echo(f"reports under {reg.settings.reports_dir}")
