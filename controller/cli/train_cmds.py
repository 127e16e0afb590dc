"""`xlt train` and `xlt evaluate`: teacher-student training and held-out evaluation."""

from __future__ import annotations

import click

from controller.cli.context import AppContext, pass_app
from controller.cli.group import cli
from controller.cli.options import json_option, lang_option, task_option
from controller.cli.output import emit_json, emit_record, emit_table


@cli.command()
@task_option()
@lang_option()
@click.option("--teacher", default=None,
              help="Teacher language (default: English, or the nearest by URIEL typology).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Default: the base's own (3).")
@click.option("--top-blocks", "top_blocks", type=click.IntRange(min=1), default=None,
              help="Top encoder blocks a deep base adapts with LoRA (default 6 of 12); "
                   "MiniLM always adapts all.")
@click.option("--calibration-folds", "calibration_folds", type=click.IntRange(min=0),
              default=0, show_default=True,
              help="Also train the recipe K times without a fold of the items and store the "
                   "cross-fitted confidence map label-free canaries read (K >= 2; 0: dev only).")
@click.option("--lexical/--no-lexical", default=None,
              help="Ship a lexical half (the text's n-grams) beside the head; default: the "
                   "base's recipe (deep bases: on; MiniLM's recipe cannot).")
@click.option("--lexical-refit/--no-lexical-refit", default=None,
              help="Fit the lexical half again on train + dev once dev has weighed the "
                   "halves (default: on; off keeps the dev split unseen by the adapter).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--base", default=None, help="Base NAME@VERSION for a language with no track.")
@click.option("--continue-from", "continue_from", type=click.IntRange(min=1), default=None,
              help="Warm-start from this version (replay and L2 pull against forgetting).")
@click.option("--with-variants", is_flag=True,
              help="Also train on the language's script/regional variants (hi: hi-Latn).")
@json_option
@pass_app
def train(app: AppContext, task: str, language: str, teacher: str | None, epochs: int | None,
          top_blocks: int | None, calibration_folds: int, lexical: bool | None,
          lexical_refit: bool | None, device: str,
          seed: int, base: str | None, continue_from: int | None, with_variants: bool,
          as_json: bool) -> None:
    """Distil a LoRA adapter for LANG from the teacher and register it (status registered)."""
    from controller.data.access import TaskData
    from controller.ops.live import log_training_result
    from controller.training.pipeline import train_adapter

    langs = [language] + (TaskData(app.registry(), task).variants(language)
                          if with_variants else [])
    result = train_adapter(app.registry(), task, language, teacher=teacher, epochs=epochs,
                           device=device, seed=seed, continue_from=continue_from, base=base,
                           data_languages=langs, progress=not as_json, top_blocks=top_blocks,
                           calibration_folds=calibration_folds, lexical=lexical,
                           lexical_refit=lexical_refit)
    log_training_result(app.registry(), task, language, result,
                        {"epochs": epochs or 0, "device": device, "seed": seed,
                         "teacher": result["teacher"], "data_languages": "+".join(langs)})
    summary = {"task": task, "language": language, "version": result["version"],
               "teacher": result["teacher"], "train_seconds": round(result["train_seconds"], 1),
               **{k: result["metrics"][k] for k in ("accuracy", "macro_f1", "ece",
                                                    "transfer_gap", "english_accuracy")}}
    if "calibrator" in result["metrics"]:
        cal = result["metrics"]["calibrator"]
        summary["calibrator"] = (f"cross-fitted, {cal['folds']} folds, {cal['n']} rows"
                                 if cal["folds"] else f"{cal['method']}, {cal['n']} rows")
    if as_json:
        emit_json(summary)
    else:
        emit_record(summary)


@cli.command()
@task_option()
@lang_option()
@click.option("--version", type=click.IntRange(min=1), default=None,
              help="Adapter version (default: the champion).")
@click.option("--split", type=click.Choice(["test", "dev"]), default="test", show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@json_option
@pass_app
def evaluate(app: AppContext, task: str, language: str, version: int | None, split: str,
             device: str, as_json: bool) -> None:
    """Accuracy, macro-F1, ECE, transfer gap and forgetting on a held-out split."""
    from controller.training.pipeline import evaluate_adapter
    from registry import queries

    reg = app.registry()
    if version is None:
        version = reg.query(queries.show_adapter, task, language, None)["version"]
    result = evaluate_adapter(reg, task, language, int(version), device=device, split=split)
    result.pop("correct", None)
    result.pop("items", None)
    if as_json:
        emit_json(result)
        return
    per_class = result.pop("per_class", {})
    emit_record({k: v for k, v in result.items() if not isinstance(v, dict | list)})
    click.echo("")
    emit_table([{"label": k, **v} for k, v in per_class.items()],
               ["label", "precision", "recall", "f1", "support"])
