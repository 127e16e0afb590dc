"""What `make demo` and `make demo-english` share: a demo-only home, an hour of simulated
traffic served through the real Server, the hourly controller loop (with a person forcing
a retrain on a corrupted export once), and the languages picture. Each demo supplies its
script (which languages, how many events, when hi drifts, when the corruption happens)."""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NoReturn

import click

from controller.data import cldr
from controller.demo.server import Server
from controller.drift.simulator import Scenario, TrafficSimulator
from controller.loop.clock import ManualClock
from controller.loop.reconciler import request_retrain
from controller.ops.model_cache import ModelCache
from controller.policy import Policy, load_policy
from controller.runtime.bootstrap import build_controller, build_operations
from registry.errors import XltError
from registry.service import Registry

TASK = "emoji-group"
START = datetime(2027, 1, 4, tzinfo=UTC)
FEEDBACK_RATE = 0.5
MARKER = ".xlt-demo"
# tick lines a person need not read: the steady tracks' routine
QUIET_SUFFIXES = (": steady", "drift check: stable", "drift check: stable (in cooldown)")


@dataclass(frozen=True)
class DemoScript:
    hours: int
    events: Mapping[str, int]  # language -> requests per simulated hour
    hi_share: Callable[[int], float]  # share of hi traffic in Latin script, by hour
    corrupt_at_hour: int  # a person forces a sw retrain on shuffled pairs


def refuse(message: str, exit_code: int = 2) -> NoReturn:
    """A demo's one-line refusal on stderr, with xlt's exit codes (2: bad input)."""
    click.echo(message, err=True)
    raise SystemExit(exit_code)


def prepare_home(home: Path) -> None:
    """The demo starts from an empty registry; it only ever removes a previous demo's."""
    if home.exists() and any(home.iterdir()):
        if not (home / MARKER).exists():
            refuse(f"demo: {home} holds a registry that is not the demo's; "
                             "set XLT_HOME to another folder (or remove it yourself)")
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    (home / MARKER).write_text("created by `make demo`; the next demo run replaces it\n")


def serve_hour(script: DemoScript, server: Server, sim: TrafficSimulator, reg: Registry,
               hour: int) -> str:
    """One hour of traffic for every language with a champion; returns what was served."""
    start = START + timedelta(hours=hour)
    share = script.hi_share(hour)
    shown = []
    for lang, n in script.events.items():
        if not any(r["language"] == lang and r["champion"] for r in reg.status(TASK)):
            continue
        scenario = (Scenario(kind="script_shift", final_share=share * 2)
                    if lang == "hi" and share > 0 else Scenario())
        frame = sim.frame(lang, n, scenario, seed=hour * 7919 + len(lang), start=start,
                          duration=timedelta(hours=1), with_descriptors=False)
        server.serve(lang, frame["text"].tolist(), frame["routing_key"].tolist(),
                     at=[t.to_pydatetime() for t in frame["at"]],
                     feedback=frame["feedback_label"].tolist())
        shown.append(f"{lang} {n}" + (f" ({share:.0%} hi-Latn)"
                                      if lang == "hi" and share else ""))
    return ", ".join(shown)


def run_hours(reg: Registry, policy: Policy, script: DemoScript) -> None:
    """The controller's hourly loop on a simulated clock, printing what it did; the MLflow
    mirror is drained at the end."""
    from controller.mlflow_mirror.consumer import drain

    clock = ManualClock(START.timestamp())
    models = ModelCache(reg, "cpu")
    server = Server(reg, TASK, models=models)
    sim = TrafficSimulator(task=TASK, split="dev", feedback_rate=FEEDBACK_RATE, registry=reg)
    ops = build_operations(reg, policy, models=models, clock=clock)
    controller = build_controller(reg, policy, ops=ops, clock=clock, drain=drain,
                            report=lambda line: None)
    for hour in range(script.hours):
        tick_began = time.monotonic()
        stamp = (START + timedelta(hours=hour + 1)).strftime("%a %H:%M")
        traffic = serve_hour(script, server, sim, reg, hour)
        if hour == script.corrupt_at_hour:
            job = request_retrain(reg, policy, TASK, "sw",
                                  "by hand: retrain on a corrupted export (shuffled pairs)",
                                  {"shuffle_pairs": True, "epochs": 1}, actor="alice")
            click.echo(f"[{stamp}] alice forces a sw retrain on shuffled pairs (job {job})")
        clock._now = (START + timedelta(hours=hour + 1)).timestamp()
        lines = controller.run_once(settle=True)  # the hour's trainings end within it
        click.echo(f"[{stamp}] traffic: {traffic or 'none yet'}  "
                   f"({time.monotonic() - tick_began:.0f} s)")
        for line in lines:
            if not line.endswith(QUIET_SUFFIXES):
                click.echo(f"           {line}")
    drain(reg)


def languages_picture(reg: Registry, policy: Policy, base: str | None = None) -> str:
    """The picture of the controlled languages on `base` (default: the policy's base;
    README shows it)."""
    from controller.reports.languages import report_languages

    result = report_languages(reg, TASK, [t.language for t in policy.tracks if t.task == TASK],
                              base or policy.base, reg.settings.reports_dir / "languages")
    return str(result["png"])


def print_final(reg: Registry, task: str, home: Path, seconds: float,
                upgrade_rows: list[dict[str, object]] | None,
                hints: list[tuple[str, str]]) -> None:
    """The demo's closing tables (status, the upgrade per track if any, adapters) and
    where to look next."""
    from controller.cli.output import emit_table
    from registry import queries

    click.echo("\nfinal status:")
    emit_table(reg.status(task), ["task", "language", "base", "champion", "canary",
                                  "canary_weight", "previous", "phase", "revision"])
    if upgrade_rows is not None:
        click.echo("\nthe upgrade, per track (held-out accuracy of the champion before and "
                   "now):")
        emit_table(upgrade_rows, ["language", "upgrade", "base_before", "before",
                                  "base_after", "after"])
    click.echo("\nadapters:")
    rows = reg.query(queries.list_adapters, task)
    for r in rows:
        r["accuracy"] = round(r["metrics"].get("accuracy", 0), 3)
        r["data"] = "+".join(r["hyperparams"].get("data_languages", []))
        if r["hyperparams"].get("shuffle_pairs"):
            r["data"] += " (shuffled pairs)"
    emit_table(rows, ["language", "version", "status",
                      *(["base"] if upgrade_rows is not None else []), "teacher_language",
                      "data", "accuracy"])
    hints = [*hints,
             (f"xlt history --task {task} --lang hi", "the audit log of the hi loop"),
             (f"ls {home / 'reports' / task}", "Evidently reports (HTML for drift)"),
             ("xlt mlflow ui", "versions, aliases, runs (http://127.0.0.1:5000)"),
             ("xlt status --json", "for scripts")]
    width = max(len(cmd) for cmd, _ in hints)
    click.echo(f"\ndone in {seconds:.0f} s. Look next (XLT_HOME={home}):")
    for cmd, what in hints:
        click.echo(f"  {cmd.ljust(width)}  {what}")
    click.echo("\nRead next: docs/demo.md (this story in full), docs/cli.md (every command), "
               "docs/policy.md (every policy field), docs/architecture.md (the parts).")


def run_demo(policy_path: Path, script: DemoScript, register_bases: Callable[[Registry], str],
             finish: Callable[[Registry, Path, float], None],
             picture_base: Callable[[Policy], str | None] = lambda policy: None) -> None:
    """A demo from start to end: a fresh demo home under XLT_HOME, the bases registered
    (`register_bases` returns the lines that introduce them), the hours of `script` under
    the policy, `finish`'s tables, and the languages picture (on `picture_base`'s base)."""
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")
    began = time.monotonic()
    home = Path(os.environ.get("XLT_HOME", ".xlt")).resolve()
    try:
        prepare_home(home)
        reg = Registry.open(home=home, actor="demo")
        reg.init()
        cldr.register_task(reg)  # the demo task, through the path a team's own data takes
        click.echo(f"xlt demo: registry {reg.db.url}, policy {policy_path}\n"
                   f"{register_bases(reg)}\n")
        policy = load_policy(policy_path)
        run_hours(reg, policy, script)
        picture = languages_picture(reg, policy, picture_base(policy))
        finish(reg, home, time.monotonic() - began)
    except XltError as exc:
        refuse(f"demo failed: {exc}", exc.exit_code)
    click.echo(f"  {picture}  (xlt report languages: the languages relative to English)")
