"""The /metrics endpoint. `xlt controller run` starts it (policy [metrics] port, or
--metrics-port); `xlt serve` can call `start_metrics_server(registry, port)` the same way
to expose the registry's state beside its own serving metrics."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import start_http_server

from controller.observability.metrics import ControllerMetrics
from registry.errors import InvalidInput
from registry.service import Registry

log = logging.getLogger("xlt.metrics")


class MetricsServer:
    def __init__(self, metrics: ControllerMetrics, server: Any, thread: Any) -> None:
        self.metrics, self._server, self._thread = metrics, server, thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_metrics_server(registry: Registry, port: int, host: str = "127.0.0.1",
                         metrics: ControllerMetrics | None = None) -> MetricsServer:
    """Serve `metrics` (a new ControllerMetrics over `registry` when None) on host:port in
    a daemon thread; port 0 picks a free one (see .port)."""
    metrics = metrics or ControllerMetrics(registry)
    try:
        server, thread = start_http_server(port, addr=host, registry=metrics.prometheus)
    except OSError as exc:
        raise InvalidInput(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}",
                           "pick a free port with --metrics-port or [metrics] port") from exc
    out = MetricsServer(metrics, server, thread)
    log.info("metrics on http://%s:%d/metrics", host, out.port)
    return out
