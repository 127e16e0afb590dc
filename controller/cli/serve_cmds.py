"""`xlt serve`: the HTTP prediction service (see controller.serve)."""

from __future__ import annotations

import json
import logging
import os

import click

from controller.cli.context import AppContext, pass_app
from controller.cli.group import cli
from controller.mlflow_mirror.server import port_free
from controller.policy import load_policy
from registry.errors import InvalidInput


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--policy", "policy_path", default=None, type=click.Path(dir_okay=False),
              help="Policy file: `no_text_languages` decides whose text the log keeps.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu",
              show_default=True)
@click.option("--backend", type=click.Choice(["batched", "merged", "peft"]),
              default="batched", show_default=True,
              help="batched: one pass per batch whatever its languages; merged/peft: the "
                   "baselines bench/serve_bench.py compares against.")
@click.option("--max-batch", type=click.IntRange(1, 4096), default=None,
              help="Most texts gathered from concurrent requests into one batch "
                   "(default: [serve] max_batch, 64).")
@click.option("--max-wait-ms", type=click.FloatRange(0, 1000), default=None,
              help="How long a batch waits for more requests ([serve] max_wait_ms, 2).")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Serving processes on the port, each holding the bases once and "
                   "sharing the machine's cores ([serve] workers, 1).")
@click.option("--model-threads", type=click.IntRange(1, 64), default=None,
              help="Batches each worker runs at once, one torch thread each "
                   "([serve] model_threads; default: the cores / workers).")
@click.option("--no-embeddings", is_flag=True,
              help="Do not log base embeddings (embedding drift then has nothing to read).")
@click.option("--no-warm", is_flag=True, help="Load adapters on first use, not at start.")
@pass_app
def serve(app: AppContext, host: str, port: int, policy_path: str | None, device: str,
          backend: str, max_batch: int | None, max_wait_ms: float | None,
          workers: int | None, model_threads: int | None, no_embeddings: bool,
          no_warm: bool) -> None:
    """Serve predictions over HTTP: POST /v1/predict, POST /v1/feedback, GET /healthz,
    GET /readyz, GET /v1/models. Needs a bearer token ($XLT_SERVE_TOKENS or the policy's
    [serve] tokens_file, lines `TOKEN scope,scope`; docs/serving.md). Routes follow the
    registry (canary, promotions, rollbacks) without restart; every prediction is logged to
    the traffic log that drift and canary analysis read."""
    import uvicorn

    from controller.serve.app import CONFIG_ENV, create_app
    from controller.serve.auth import Authenticator
    from controller.serve.engine import Engine

    policy = load_policy(policy_path)
    # refused here, before the port is taken, when auth is required and no token is set
    auth = Authenticator.from_config(policy.serve.require_auth, policy.serve.tokens_file)
    if not port_free(host, port):
        raise InvalidInput(f"port {port} on {host} is in use", "pick another with --port")
    reg = app.registry()
    workers = workers or policy.serve.workers
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    mode = "bearer tokens" if auth.required else "NO AUTH ([serve] require_auth = false)"
    click.echo(f"xlt serve: http://{host}:{port} (backend {backend}; {mode}; "
               f"{workers} worker{'s' if workers > 1 else ''})", err=True)
    if workers > 1:  # uvicorn's supervisor: each worker process builds its own app
        os.environ[CONFIG_ENV] = json.dumps({
            "home": str(reg.settings.home), "database_url": reg.settings.database_url,
            "actor": reg.actor, "policy": policy_path, "device": device,
            "backend": backend, "log_embeddings": not no_embeddings, "warm": not no_warm,
            "max_batch": max_batch, "max_wait_ms": max_wait_ms, "workers": workers,
            "model_threads": model_threads})
        uvicorn.run("controller.serve.app:app_from_env", factory=True, host=host, port=port,
                    workers=workers, log_level="warning", access_log=False,
                    timeout_graceful_shutdown=60)
        return
    engine = Engine(reg, policy, device=device, backend_name=backend,
                    log_embeddings=not no_embeddings, model_threads=model_threads or 0)
    api = create_app(engine, warm=not no_warm, max_batch_rows=max_batch,
                     max_wait_ms=max_wait_ms, auth=auth)
    uvicorn.run(api, host=host, port=port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=60)
