"""The traffic log's writer process of `xlt serve` (`python -m controller.serve.traffic_worker
CONFIG_JSON`), started by `controller.serve.traffic.ProcessSink`.

Why a process of its own: turning an event into a row (text descriptors, embedding bytes)
and SQLAlchemy's insert are pure Python. In the serving process they held the GIL that the
forward-pass thread needs between torch ops (a MiniLM batch of 8 took 115 ms with the writer
thread on, 68 ms without: bench/results/scale-and-serving.md#serving). Here they run on
their own interpreter; the server only pickles the batch's events into a pipe.

Protocol, over stdin/stdout (stdout is kept for it alone: fd 1 is pointed at stderr so a
stray print cannot corrupt it): the server sends `(events, keep_text)` pickles; the worker
answers each with `("ok", ids)` or `("failed", why)`, in order. End of input (the server
closed the pipe, or died) or a `None` ends it after the message in hand: every group the
server sent before is answered first. SIGINT and SIGTERM are ignored: a Ctrl-C or a
SIGTERM to the process group reaches the server, which drains its queue into this process
and then closes the pipe; the worker must outlive that drain.

Why pickle here, where artifacts are safetensors only: this is an anonymous pipe between a
server and the child it started, carrying the events it built itself (dicts, numpy
arrays); nothing is read from a file, a network or another user.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sys
import time
from typing import Any, BinaryIO


class RegistrySink:
    """Events to traffic-log rows, written in one transaction; retried (backing off) when
    the database refuses. Used in this process, and in the server's own for a writer
    thread (`[serve] traffic_writer = "thread"`)."""

    def __init__(self, registry: Any, retries: int = 3) -> None:
        self.registry = registry
        self.retries = retries

    def write(self, events: list[dict[str, Any]], keep_text: list[bool]) -> list[int]:
        from controller.traffic.log import event_row

        rows = [event_row(e, keep_text=k) for e, k in zip(events, keep_text, strict=True)]
        for attempt in range(self.retries):
            try:
                return list(self.registry.log_predictions(rows))
            except Exception:  # noqa: BLE001 - the database refused: retry, then give up
                if attempt + 1 == self.retries:
                    raise
                time.sleep(0.05 * 4 ** attempt)
        return []  # retries == 0: nothing tried

    def close(self) -> None:
        pass


def serve(sink: RegistrySink, inp: BinaryIO, out: BinaryIO) -> int:
    """Answer every group read from `inp` until it ends; returns the groups answered."""
    n = 0
    while True:
        try:
            msg = pickle.load(inp)
        except EOFError:
            break
        if msg is None:
            break
        events, keep = msg
        try:
            reply: tuple[str, Any] = ("ok", sink.write(events, keep))
        except Exception as exc:  # noqa: BLE001 - answered, the server counts the drop
            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            reply = ("failed", f"{type(exc).__name__}: {first}".rstrip(": "))
        pickle.dump(reply, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()
        n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out = os.fdopen(os.dup(1), "wb")  # the protocol's channel
    os.dup2(2, 1)  # anything printed goes to the server's stderr, not into the protocol
    cfg = json.loads((argv or sys.argv[1:])[0])

    from registry.service import Registry
    from registry.settings import load_settings

    registry = Registry(load_settings(cfg["home"], cfg["database_url"]), cfg["actor"])
    pickle.dump(("ready", os.getpid()), out)
    out.flush()
    serve(RegistrySink(registry, int(cfg.get("retries", 3))), sys.stdin.buffer, out)
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
