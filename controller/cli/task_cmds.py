"""Task and dataset commands: `xlt task create|relabel|list|show`, `xlt dataset
register|list|show`. Each parses, calls the registry, prints; the checks live in
registry.commands.tasks."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from controller.cli.context import AppContext, pass_app
from controller.cli.group import cli
from controller.cli.options import json_option, lang_option, task_value
from controller.cli.output import emit, emit_json, emit_table
from registry import queries
from registry.datafiles import FORMATS


@cli.group()
def task() -> None:
    """Tasks: what adapters predict, each a name and a fixed label set."""


@task.command("create")
@click.argument("name", callback=task_value)
@click.option("--labels", default=None, help="Comma-separated label names, in head order.")
@click.option("--description", default="", help="What the task is, for people.")
@click.option("--demo", is_flag=True, help="NAME must be emoji-group: the demo task and its "
              "shipped CLDR data, registered as `xlt dataset register` would.")
@pass_app
def task_create(app: AppContext, name: str, labels: str | None, description: str,
                demo: bool) -> None:
    """Create a task with its label set."""
    from registry.errors import InvalidInput

    if demo:
        from controller.data import cldr

        if name != cldr.TASK_NAME or labels:
            raise InvalidInput(f"--demo registers the {cldr.TASK_NAME} task with its own "
                               "labels", f"run `xlt task create {cldr.TASK_NAME} --demo`")
        ids = cldr.register_task(app.registry())
        click.echo(f"registered task {cldr.TASK_NAME} and {len(ids)} CLDR datasets")
        return
    if not labels:
        raise InvalidInput("a task needs its labels", "pass --labels a,b,c")
    t = app.registry().create_task(name, labels, description)
    click.echo(f"created task {t.name} with {len(t.labels)} labels: {', '.join(t.labels)}")


@task.command("relabel")
@click.argument("name", callback=task_value)
@click.option("--labels", required=True, help="The new comma-separated label names.")
@pass_app
def task_relabel(app: AppContext, name: str, labels: str) -> None:
    """Change a task's labels (only while no dataset or adapter refers to it)."""
    t = app.registry().relabel_task(name, labels)
    click.echo(f"task {t.name} now has {len(t.labels)} labels: {', '.join(t.labels)}")


@task.command("list")
@json_option
@pass_app
def task_list(app: AppContext, as_json: bool) -> None:
    """List tasks: labels, languages with data, tracks."""
    rows = app.registry().query(queries.list_tasks)
    if as_json:
        emit_json(rows)
        return
    emit_table([{"name": r["name"], "labels": len(r["labels"]),
                 "data": ",".join(r["data_languages"]) or "-",
                 "tracks": ",".join(r["tracks"]) or "-"} for r in rows],
               ["name", "labels", "data", "tracks"])


@task.command("show")
@click.argument("name", callback=task_value)
@json_option
@pass_app
def task_show(app: AppContext, name: str, as_json: bool) -> None:
    """Show a task: its labels, its datasets per language and split, its tracks."""
    row = app.registry().query(queries.show_task, name)
    if as_json:
        emit_json(row)
        return
    click.echo(f"task {row['name']}: {row['description'] or '(no description)'}")
    click.echo(f"labels ({len(row['labels'])}): {', '.join(row['labels'])}")
    data = [{"language": lang, "data": part, "dataset": d["dataset"], "id": d["id"],
             "rows": d["rows"]}
            for lang, parts in sorted(row["datasets"].items())
            for part, d in sorted(parts.items())]
    click.echo("datasets:" if data else "datasets: none (register with `xlt dataset "
               "register`)")
    if data:
        emit_table(data, ["language", "data", "dataset", "id", "rows"])
    click.echo("tracks:" if row["tracks"] else "tracks: none")
    if row["tracks"]:
        emit_table(row["tracks"], ["language", "base", "champion", "canary", "phase"])


@cli.group()
def dataset() -> None:
    """A task's data: labelled rows per split, parallel pairs, unlabelled text."""


@dataset.command("register")
@click.argument("task_name", metavar="TASK", callback=task_value)
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice(["labelled", "parallel", "unlabelled"]),
              default="labelled", show_default=True)
@click.option("--split", type=click.Choice(["train", "dev", "test"]), default="train",
              show_default=True, help="For labelled data.")
@click.option("--lang", "language", default=None, help="The rows' language (BCP-47).")
@click.option("--language-column", default=None,
              help="Or: the column naming each row's language (one dataset per language).")
@click.option("--source-language", default=None,
              help="Parallel pairs: the pivot language of source_text.")
@click.option("--text-column", default=None, help="The file's text column (default text).")
@click.option("--label-column", default=None, help="The file's label column (default label).")
@click.option("--id-column", default=None, help="The file's id column (default id).")
@click.option("--source-text-column", default=None,
              help="Parallel pairs: the file's pivot-text column (default source_text).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="Default: from the file name (a directory: save_to_disk).")
@click.option("--name", default=None, help="Dataset name (default: the task's name).")
@click.option("--version", default=None, help="Default: the next number.")
@click.option("--source", default=None, help="Where the data came from (default: the path).")
@click.option("--licence", required=True, help="e.g. CC-BY-SA-4.0.")
@click.option("--consent", required=True, help="e.g. 'public data'.")
@click.option("--collected-at", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="YYYY-MM-DD (default: today).")
@json_option
@pass_app
def dataset_register(app: AppContext, task_name: str, path: Path, kind: str, split: str,
                     language: str | None, language_column: str | None,
                     source_language: str | None, text_column: str | None,
                     label_column: str | None, id_column: str | None,
                     source_text_column: str | None, fmt: str | None, name: str | None,
                     version: str | None, source: str | None, licence: str, consent: str,
                     collected_at: datetime | None, as_json: bool) -> None:
    """Validate a data file (JSONL, CSV, TSV, Parquet, or a save_to_disk directory) and
    register it: copied into the store, sha256 and provenance recorded."""
    from registry.commands.tasks import DatasetSpec

    columns = {k: v for k, v in (("text", text_column), ("label", label_column),
                                 ("id", id_column), ("source_text", source_text_column))
               if v}
    spec = DatasetSpec(task=task_name, path=path, kind=kind, split=split, language=language,
                       language_column=language_column, source_language=source_language,
                       columns=columns, fmt=fmt, name=name, version=version, source=source,
                       licence=licence, consent=consent,
                       collected_at=collected_at.replace(tzinfo=UTC) if collected_at else None)
    created = app.registry().register_task_dataset(spec)
    rows = [queries.dataset_dict(d) for d in created]
    if as_json:
        emit_json(rows)
        return
    for d in rows:
        click.echo(f"registered {d['kind']} dataset {d['ref']} (id {d['id']}, {d['rows']} "
                   f"rows, sha256 {d['sha256'][:12]})")


@dataset.command("list")
@click.option("--task", "task_name", default=None, callback=task_value)
@click.option("--name", default=None)
@lang_option(required=False)
@click.option("--all", "every", is_flag=True, help="Older versions too.")
@json_option
@pass_app
def dataset_list(app: AppContext, task_name: str | None, name: str | None,
                 language: str | None, every: bool, as_json: bool) -> None:
    """List datasets (a task's: the ones training reads, unless --all)."""
    reg = app.registry()
    rows: list[dict[str, Any]]
    if task_name:
        rows = reg.query(queries.task_datasets, task_name, active_only=not every)
        if language:
            rows = [r for r in rows if r["language"] == language]
    else:
        rows = reg.query(queries.list_datasets, name, language)
    if as_json:
        emit_json(rows)
        return
    emit_table(rows, ["id", "task", "kind", "name", "language", "split", "version", "rows",
                      "licence"])


@dataset.command("show")
@click.argument("dataset_id", type=int)
@json_option
@pass_app
def dataset_show(app: AppContext, dataset_id: int, as_json: bool) -> None:
    """Show one dataset: provenance, sha256, label counts."""
    rows = [r for r in app.registry().query(queries.list_datasets) if r["id"] == dataset_id]
    if not rows:
        from registry.errors import NotFound

        raise NotFound(f"no dataset with id {dataset_id}", "see `xlt dataset list`")
    emit(rows[0], as_json)
