"""`xlt controller run` and `xlt canary resume`: the continual-update loop from the CLI."""

from __future__ import annotations

import logging
import time

import click

from controller.cli import cli
from controller.cli.context import AppContext
from controller.cli.options import lang_option, task_option
from controller.cli.registry_cmds import canary
from controller.policy import load_policy

pass_app = click.make_pass_decorator(AppContext)


@cli.group()
def controller() -> None:
    """The reconcile loop: drift -> retrain -> gates -> canary -> promote or roll back."""


@controller.command("run")
@click.option("--policy", "policy_path", default=None, type=click.Path(dir_okay=False),
              help="Policy file (TOML); defaults apply to every field left out.")
@click.option("--once", is_flag=True, help="One tick and one outbox drain, then exit.")
@pass_app
def controller_run(app: AppContext, policy_path: str | None, once: bool) -> None:
    """Run the controller (APScheduler; leader-elected; SIGTERM stops it cleanly)."""
    from controller.live_ops import LiveOperations
    from controller.mlflow_mirror.consumer import drain
    from controller.scheduler import Controller

    policy = load_policy(policy_path)
    reg = app.registry()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per run is noise
    ctl = Controller(reg, policy, LiveOperations(reg, policy), policy_path=policy_path,
                     drain=drain, report=click.echo)
    if once:
        lines = ctl.run_once()
        if not lines:
            click.echo("nothing to do (no controlled tracks, or another replica leads)")
        return
    ctl.run_forever()


@canary.command("resume")
@task_option()
@lang_option()
@pass_app
def canary_resume(app: AppContext, task: str, language: str) -> None:
    """Continue a PAUSED canary at its current step, with a fresh analysis window."""
    from controller.reconciler import resume_canary

    resume_canary(app.registry(), task, language, time.time())
    click.echo(f"canary of {task}/{language} resumed")
