"""The traffic writer of `xlt serve`: every prediction goes to the traffic log (drift checks
and canary analysis read it), written OFF the request path.

The batcher hands each batch's events to `TrafficWriter.submit` and goes on to the next
forward pass; one writer thread takes everything queued (up to `write_rows`) and hands it
to its sink as one transaction (group commit), then resolves each batch's future with its
rows' ids (the prediction ids receipts are made of). The request awaits that future on the
event loop, never on the model's thread, so forward passes and database writes overlap.

The sink (`[serve] traffic_writer`): `process` (the default) is a writer process of its own
(controller.serve.traffic_worker) that builds the rows and inserts them, so that Python
work does not hold the serving process's GIL; the writer thread here only pickles events
into its pipe and waits. `thread` does the same work on the writer thread itself. A writer
process that dies is started again for the next group; the group it held is dropped
(reason `write_failed`; if it died after its commit, those rows are in the log anyway).

The queue is bounded (`max_rows` events waiting). When the database cannot keep up and the
queue is full, a batch's events are dropped, not waited for: the predictions are still
answered (without a prediction_id, so no feedback can be given for them), the drop is
counted (`xlt_serve_traffic_dropped_total{reason="queue_full"}`) and an `alert` event
(kind `serve_traffic_dropped`) is written, at most once a minute, with the count. A write
that fails is retried by the sink (3 tries, backing off); then its events are dropped the
same way (reason `write_failed`). `close()` (a clean shutdown: SIGTERM, lifespan end) stops taking
events and writes every one queued before it returns: nothing accepted is lost.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import pickle
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller.observability.serve_metrics import TRAFFIC_DROPPED, TRAFFIC_WRITTEN
from controller.serve.traffic_worker import RegistrySink

log = logging.getLogger(__name__)
ALERT_EVERY_S = 60.0


@dataclass
class Pending:
    events: list[dict[str, Any]]  # raw events; rows are built on the writer thread
    keep_text: list[bool]
    future: cf.Future[list[int] | None]


class WriterDied(RuntimeError):
    """The writer process exited (or could not start) with a group in hand."""


class ProcessSink:
    """The traffic writer process: started on first use, again after it died."""

    def __init__(self, registry: Any, retries: int = 3, start_timeout_s: float = 60.0) -> None:
        self.config = json.dumps({"home": str(registry.settings.home),
                                  "database_url": registry.settings.database_url,
                                  "actor": registry.actor, "retries": retries})
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def _start(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "controller.serve.traffic_worker", self.config],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.starts += 1
        assert proc.stdout is not None
        try:
            hello = pickle.load(proc.stdout)  # imports done, database settings read
        except EOFError as exc:
            proc.wait(self.start_timeout_s)
            raise WriterDied(f"the traffic writer process exited at start (code "
                             f"{proc.returncode}); see the lines above") from exc
        if hello[0] != "ready":
            proc.kill()
            raise WriterDied(f"the traffic writer process answered {hello!r} at start")
        return proc

    def open(self) -> None:
        """Start the writer process now (a server does so before it is ready, so that its
        start-up, a second or two of imports, does not land on the first requests)."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()

    def write(self, events: list[dict[str, Any]], keep_text: list[bool]) -> list[int]:
        self.open()
        proc = self.proc
        assert proc is not None
        assert proc.stdin is not None and proc.stdout is not None
        try:
            pickle.dump((events, keep_text), proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            proc.stdin.flush()
            status, value = pickle.load(proc.stdout)
        except (BrokenPipeError, EOFError, OSError) as exc:
            self.proc = None
            code = proc.poll()
            raise WriterDied(f"the traffic writer process died (exit code {code})") from exc
        if status != "ok":
            raise RuntimeError(str(value))
        return list(value)

    def close(self, timeout: float = 30.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            assert proc.stdin is not None
            proc.stdin.close()  # end of input: it has answered everything sent, so it exits
            proc.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()


class TrafficWriter:
    def __init__(self, registry: Any, *, max_rows: int = 8192, write_rows: int = 1024,
                 sink: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry  # alerts are written here, by this process
        self.sink = sink if sink is not None else RegistrySink(registry)
        self.max_rows = max_rows
        self.write_rows = write_rows
        self._clock = clock
        self._queue: deque[Pending] = deque()
        self._rows = 0  # events queued
        self._cond = threading.Condition()
        self._closing = False
        self.dropped = 0
        self.written = 0
        self._unalerted = 0  # drops not yet in an alert
        self._last_alert = -ALERT_EVERY_S
        self._thread = threading.Thread(target=self._run, name="xlt-serve-traffic",
                                        daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return self._rows

    def open(self) -> None:
        """Start the sink (the writer process) before the first batch, where it has one."""
        if hasattr(self.sink, "open"):
            self.sink.open()

    def submit(self, events: list[dict[str, Any]], keep_text: list[bool]
               ) -> cf.Future[list[int] | None]:
        """Queue a batch's events; the future gives their ids once written, or None when
        they were dropped (queue full, or the server is shutting down)."""
        fut: cf.Future[list[int] | None] = cf.Future()
        with self._cond:
            if self._closing or self._rows + len(events) > self.max_rows:
                self._drop(len(events), "closing" if self._closing else "queue_full")
                fut.set_result(None)
                return fut
            self._queue.append(Pending(events, keep_text, fut))
            self._rows += len(events)
            self._cond.notify()
        return fut

    def close(self, timeout: float = 120.0) -> None:
        """Write everything queued, then stop (a clean shutdown loses nothing accepted)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        self.sink.close()
        self._alert(force=True)

    def flush(self, timeout: float = 60.0) -> None:
        deadline = self._clock() + timeout
        while self._rows and self._clock() < deadline:
            time.sleep(0.005)

    def _drop(self, n: int, reason: str) -> None:
        self.dropped += n
        self._unalerted += n
        TRAFFIC_DROPPED.labels(reason=reason).inc(n)
        log.warning("xlt serve: %d predictions not logged to the traffic log (%s)", n, reason)

    def _take(self) -> list[Pending] | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait(timeout=1.0)
                if self._unalerted:
                    break
            if not self._queue:
                return None if self._closing else []
            group, rows = [], 0
            while self._queue and (not group or rows + len(self._queue[0].events)
                                   <= self.write_rows):
                item = self._queue.popleft()
                group.append(item)
                rows += len(item.events)
            return group

    def _run(self) -> None:
        while (group := self._take()) is not None:
            if group:
                self._write(group)
            self._alert()

    def _write(self, group: list[Pending]) -> None:
        n = sum(len(p.events) for p in group)
        try:
            ids = self.sink.write([e for p in group for e in p.events],
                                  [k for p in group for k in p.keep_text])
        except Exception as exc:  # noqa: BLE001 - a bad event or the database: drop, go on
            self._fail(group, n, f"{type(exc).__name__}: {exc}")
            return
        with self._cond:
            self._rows -= n
        self.written += n
        TRAFFIC_WRITTEN.inc(n)
        at = 0
        for p in group:
            p.future.set_result(ids[at:at + len(p.events)])
            at += len(p.events)

    def _fail(self, group: list[Pending], n: int, why: str) -> None:
        log.error("xlt serve: traffic log write failed: %s", why[:200])
        with self._cond:
            self._rows -= n
            self._drop(n, "write_failed")
        for p in group:
            p.future.set_result(None)

    def _alert(self, force: bool = False) -> None:
        """An alert event for drops since the last one, at most once a minute."""
        if not self._unalerted:
            return
        now = self._clock()
        if not force and now - self._last_alert < ALERT_EVERY_S:
            return
        n, self._unalerted, self._last_alert = self._unalerted, 0, now
        try:
            self.registry.note("alert", reason=(
                f"xlt serve dropped {n} predictions from the traffic log ({self.dropped} "
                "since start): the database did not keep up; drift and canary analysis "
                "miss them. Check the database, or raise [serve] traffic_queue_rows"),
                after={"kind": "serve_traffic_dropped", "dropped": n,
                       "dropped_total": self.dropped})
        except Exception as exc:  # noqa: BLE001 - the database may be what is failing
            self._unalerted += n
            log.error("xlt serve: could not write the drop alert: %s", type(exc).__name__)
