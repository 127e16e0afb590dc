"""`xlt controller run` and `xlt canary resume`: the continual-update loop from the CLI."""

from __future__ import annotations

import gc
import logging
import time
from datetime import datetime

import click

from controller.cli.context import AppContext, load_policy, pass_app
from controller.cli.group import cli
from controller.cli.options import lang_option, task_option
from controller.cli.registry_cmds import canary
from controller.runtime.bootstrap import build_controller, build_operations


@cli.group()
def controller() -> None:
    """The reconcile loop: drift -> retrain -> gates -> canary -> promote or roll back."""


@controller.command("run")
@click.option("--policy", "policy_path", default=None, type=click.Path(dir_okay=False),
              help="Policy file (TOML); defaults apply to every field left out.")
@click.option("--once", is_flag=True,
              help="One tick and one outbox drain, then exit (inline trainings it "
                   "launches are waited for).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve Prometheus metrics on this port (overrides [metrics] port; "
                   "0 picks a free one).")
@click.option("--metrics-host", default=None,
              help="Address the metrics server binds (default [metrics] host, 127.0.0.1).")
@pass_app
def controller_run(app: AppContext, policy_path: str | None, once: bool,
                   metrics_port: int | None, metrics_host: str | None) -> None:
    """Run the controller (APScheduler; leader-elected; SIGTERM stops it cleanly)."""
    from controller.mlflow_mirror.consumer import drain

    policy = load_policy(policy_path)
    reg = app.registry()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # its per-run lines and "skipped: maximum number of running instances" (a slow tick
    # coalesces, by design) are noise
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    ctl = build_controller(reg, policy, ops=build_operations(reg, policy), policy_path=policy_path,
                     drain=drain, report=click.echo if once else _stamped,
                     actor=app.actor or "controller")
    port = metrics_port if metrics_port is not None else policy.metrics.port
    if port is not None and not once:
        ctl.serve_metrics(port, metrics_host or policy.metrics.host)
    if once:
        # an inline training is a thread of this process: --once waits for it (and for
        # the queued ones it frees slots for); a subprocess training outlives the process
        lines = ctl.run_once(settle=policy.executor == "inline")
        if not lines:
            click.echo("nothing to do (no controlled tracks, or another replica leads)")
        return
    ctl.run_forever()
    # the process ends now: spare the interpreter's final garbage collection over every
    # torch/transformers/Evidently object (10+ s on a loaded 2-core machine), so SIGTERM
    # ends the process promptly (a supervisor's stop timeout is often 10 s)
    gc.freeze()


def _stamped(line: str) -> None:
    """A long-running process's lines carry their time (to the millisecond)."""
    click.echo(f"{datetime.now().isoformat(sep=' ', timespec='milliseconds')} {line}")


@canary.command("resume")
@task_option()
@lang_option()
@pass_app
def canary_resume(app: AppContext, task: str, language: str) -> None:
    """Continue a PAUSED canary at its current step, with a fresh analysis window."""
    from controller.loop.manual import resume_canary

    resume_canary(app.registry(), task, language, time.time())
    click.echo(f"canary of {task}/{language} resumed")
