"""`xlt report languages`: one picture of all controlled languages on a base."""

from __future__ import annotations

from pathlib import Path

import click

from controller.cli.context import AppContext, pass_app
from controller.cli.group import cli
from controller.cli.options import json_option, lang_list, task_value
from controller.cli.output import emit_json, emit_table
from controller.policy import load_policy
from registry.errors import InvalidInput


@cli.group()
def report() -> None:
    """Pictures and summaries for people."""


@report.command("languages")
@click.option("--task", default="emoji-group", show_default=True, callback=task_value,
              help="Task of the tracks.")
@click.option("--policy", "policy_path", default=None, type=click.Path(dir_okay=False),
              help="Policy file: its tracks of --task are the controlled languages.")
@click.option("--lang", "languages", multiple=True, callback=lang_list,
              help="Languages to draw (repeatable); default: the controlled ones.")
@click.option("--base", default=None,
              help="Base encoder name@version (default: the policy's base, else the base "
                   "of the task's tracks).")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Folder for the PNG and HTML (default XLT_HOME/reports/languages).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, ...")
@json_option
@pass_app
def report_languages(app: AppContext, task: str, policy_path: str | None,
                     languages: tuple[str, ...], base: str | None, out_dir: str | None,
                     device: str, as_json: bool) -> None:
    """Where each controlled language sits relative to English on a base encoder: its
    items and centroid projected on English's principal axes, and its mean cosine
    similarity to the English text of the same items. Writes a PNG and an HTML page."""
    from controller.reports.languages import report_languages as run

    reg = app.registry()
    policy = load_policy(policy_path)
    tracks = reg.status(task)
    chosen = list(languages) or [t.language for t in policy.tracks if t.task == task] \
        or [r["language"] for r in tracks]
    if not chosen:
        raise InvalidInput(f"no controlled languages for task {task!r}",
                           "give --lang, or --policy with [[tracks]], or create tracks")
    if base is None:
        base = policy.base
    if base is None:
        bases = sorted({r["base"] for r in tracks if r["language"] in chosen})
        if len(bases) != 1:
            raise InvalidInput(
                f"cannot tell which base to draw ({', '.join(bases) or 'no tracks'})",
                "give --base name@version")
        base = bases[0]
    out = Path(out_dir) if out_dir else reg.settings.reports_dir / "languages"
    result = run(reg, task, chosen, base, out, device)
    if as_json:
        emit_json(result)
        return
    emit_table(result["languages"], ["language", "items", "cosine_to_english",
                                     "centroid_distance", "phase", "champion"])
    click.echo(f"picture: {result['png']}\npage:    {result['html']}")
