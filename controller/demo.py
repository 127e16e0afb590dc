"""The main job on the embedded default (`make demo`): the continual-update loop, end to
end, on real data and the real base encoder, in accelerated (simulated) time.

1. Registry under XLT_HOME (SQLite), the base encoder all-MiniLM-L6-v2, the shipped CLDR
   emoji data; the controller trains a first adapter for hi, sw and yo and promotes each
   through the gates.
2. Hourly traffic is served through the registry's routing and logged. hi traffic drifts
   to the Latin script (hi-Latn): drift -> retrain on hi + hi-Latn -> gates -> canary
   10/50/100% -> promote. A person forces a sw retrain on corrupted (shuffled) pairs: the
   candidate fails its gates and is rejected. Stable languages are left alone.
3. A timeline, the final status, and where to look next (reports, MLflow UI).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from controller.cli import quiet_libraries

quiet_libraries()

from controller.cli.output import emit_table  # noqa: E402
from controller.clock import ManualClock  # noqa: E402
from controller.drift.simulator import Scenario, TrafficSimulator  # noqa: E402
from controller.encoder import demo_base_dir  # noqa: E402
from controller.live_ops import LiveOperations  # noqa: E402
from controller.policy import Policy, load_policy  # noqa: E402
from controller.reconciler import request_retrain  # noqa: E402
from controller.scheduler import Controller  # noqa: E402
from controller.serving import ModelCache, Server  # noqa: E402
from registry import queries  # noqa: E402
from registry.errors import XltError  # noqa: E402
from registry.service import Registry  # noqa: E402

TASK = "emoji-group"
POLICY = Path(__file__).with_name("demo_policy.toml")
START = datetime(2027, 1, 4, tzinfo=UTC)
HOURS = 11
EVENTS = {"hi": 600, "sw": 300, "yo": 300}  # per simulated hour
FEEDBACK_RATE = 0.5
CORRUPT_AT_HOUR = 4  # a person forces a sw retrain on shuffled pairs
MARKER = ".xlt-demo"


def hi_share(hour: int) -> float:
    """Share of hi traffic written in Latin script, rising from hour 3."""
    return 0.0 if hour < 3 else min(0.8, 0.3 * (hour - 2))


def prepare_home(home: Path) -> None:
    """The demo starts from an empty registry; it only ever removes a previous demo's."""
    if home.exists() and any(home.iterdir()):
        if not (home / MARKER).exists():
            raise SystemExit(f"demo: {home} holds a registry that is not the demo's; "
                             "set XLT_HOME to another folder (or remove it yourself)")
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    (home / MARKER).write_text("created by `make demo`; the next demo run replaces it\n")


def serve_hour(server: Server, sim: TrafficSimulator, reg: Registry, hour: int) -> str:
    start = START + timedelta(hours=hour)
    shown = []
    for lang, n in EVENTS.items():
        if not any(r["language"] == lang and r["champion"] for r in reg.status(TASK)):
            continue
        scenario = (Scenario(kind="script_shift", final_share=hi_share(hour) * 2)
                    if lang == "hi" and hi_share(hour) > 0 else Scenario())
        frame = sim.frame(lang, n, scenario, seed=hour * 7919 + len(lang), start=start,
                          duration=timedelta(hours=1), with_descriptors=False)
        server.serve(lang, frame["text"].tolist(), frame["routing_key"].tolist(),
                     at=[t.to_pydatetime() for t in frame["at"]],
                     feedback=frame["feedback_label"].tolist())
        shown.append(f"{lang} {n}" + (f" ({hi_share(hour):.0%} hi-Latn)"
                                      if lang == "hi" and hi_share(hour) else ""))
    return ", ".join(shown)


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")
    began = time.monotonic()
    home = Path(os.environ.get("XLT_HOME", ".xlt")).resolve()
    prepare_home(home)
    reg = Registry.open(home=home, actor="demo")
    reg.init()
    enc = reg.register_encoder("minilm", "1", demo_base_dir())
    click.echo(f"xlt demo: registry {reg.db.url}\n  base encoder {enc.ref} "
               f"(all-MiniLM-L6-v2, fingerprint {enc.fingerprint[:12]}), policy {POLICY}\n")

    policy = load_policy(POLICY)
    clock = ManualClock(START.timestamp())
    models = ModelCache(reg, "cpu")
    server = Server(reg, TASK, models=models)
    sim = TrafficSimulator(task=TASK, split="dev", feedback_rate=FEEDBACK_RATE)
    ops = LiveOperations(reg, policy, models=models, clock=clock)
    from controller.mlflow_mirror.consumer import drain

    controller = Controller(reg, policy, ops, clock=clock, drain=drain,
                            report=lambda line: None)
    for hour in range(HOURS):
        tick_began = time.monotonic()
        stamp = (START + timedelta(hours=hour + 1)).strftime("%a %H:%M")
        traffic = serve_hour(server, sim, reg, hour)
        if hour == CORRUPT_AT_HOUR:
            job = request_retrain(reg, policy, TASK, "sw",
                                  "by hand: retrain on a corrupted export (shuffled pairs)",
                                  {"shuffle_pairs": True, "epochs": 1}, actor="alice")
            click.echo(f"[{stamp}] alice forces a sw retrain on shuffled pairs (job {job})")
        clock._now = (START + timedelta(hours=hour + 1)).timestamp()
        lines = controller.run_once(settle=True)  # the hour's trainings end within it
        click.echo(f"[{stamp}] traffic: {traffic or 'none yet'}  "
                   f"({time.monotonic() - tick_began:.0f} s)")
        for line in lines:
            if not line.endswith((": steady", "drift check: stable",
                                  "drift check: stable (in cooldown)")):
                click.echo(f"           {line}")
    drain(reg)
    picture = languages_picture(reg, policy)
    finish(reg, home, time.monotonic() - began)
    click.echo(f"  {picture}  (xlt report languages: the languages relative to English)")


def languages_picture(reg: Registry, policy: Policy) -> str:
    """The picture of the controlled languages on the base (README shows it)."""
    from controller.reports.languages import report_languages

    result = report_languages(reg, TASK, [t.language for t in policy.tracks if t.task == TASK],
                              policy.base, reg.settings.reports_dir / "languages")
    return str(result["png"])


def finish(reg: Registry, home: Path, seconds: float) -> None:
    click.echo("\nfinal status:")
    emit_table(reg.status(TASK), ["task", "language", "base", "champion", "canary",
                                  "canary_weight", "previous", "phase", "revision"])
    click.echo("\nadapters:")
    rows = reg.query(queries.list_adapters, TASK)
    for r in rows:
        r["accuracy"] = round(r["metrics"].get("accuracy", 0), 3)
        r["data"] = "+".join(r["hyperparams"].get("data_languages", []))
        if r["hyperparams"].get("shuffle_pairs"):
            r["data"] += " (shuffled pairs)"
    emit_table(rows, ["language", "version", "status", "teacher_language", "data", "accuracy"])
    hints = [(f"xlt history --task {TASK} --lang hi", "the audit log of the hi loop"),
             (f"ls {home / 'reports' / TASK}", "Evidently reports (HTML for drift)"),
             ("xlt mlflow ui", "versions, aliases, runs (http://127.0.0.1:5000)"),
             ("xlt status --json", "for scripts")]
    width = max(len(cmd) for cmd, _ in hints)
    click.echo(f"\ndone in {seconds:.0f} s. Look next (XLT_HOME={home}):")
    for cmd, what in hints:
        click.echo(f"  {cmd.ljust(width)}  {what}")


if __name__ == "__main__":
    try:
        main()
    except XltError as exc:
        sys.exit(f"demo failed: {exc}")
