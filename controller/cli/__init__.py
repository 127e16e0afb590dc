"""The `xlt` command line: parses, calls registry/controller functions, prints.

The group and its error mapping (exit codes, one-line messages, in one place) are in
controller.cli.group; each *_cmds module adds its commands to it.
"""

from __future__ import annotations

import sys

from controller.cli.group import cli, fail, quiet_libraries

__all__ = ["cli", "fail", "main", "quiet_libraries"]


def main() -> None:
    try:
        cli(prog_name="xlt")
    except BrokenPipeError:  # `xlt ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        sys.exit(0)


# command modules register themselves on `cli`
from controller.cli import (  # noqa: E402,F401
    controller_cmds,
    drift_cmds,
    encoder_cmds,
    mlflow_cmds,
    registry_cmds,
    report_cmds,
    serve_cmds,
    setup_cmds,
    task_cmds,
    train_cmds,
)
