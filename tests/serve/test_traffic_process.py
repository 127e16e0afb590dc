"""The traffic writer process (`[serve] traffic_writer = "process"`, the default): rows land in
the real registry database, a worker that dies with a group in hand costs that group only
(counted as write_failed) and the next group starts a new one, a SIGTERM to the process
group does not stop it before the server has drained into it, and a clean close leaves no
process behind."""

from __future__ import annotations

import os
import signal
import time

from sqlalchemy import func, select

from controller.observability.serve_metrics import TRAFFIC_DROPPED
from controller.serve.traffic import ProcessSink, TrafficWriter
from registry.schema import Event, InferenceEvent


def event(i: int) -> dict[str, object]:
    return {"task": "emoji-group", "language": "sw", "text": f"paka {i}", "prediction": "a",
            "confidence": 0.5, "adapter_version": 1, "embedding": [0.25] * 8}


def logged(registry) -> int:  # type: ignore[no-untyped-def]
    with registry.reading() as s:
        return int(s.scalar(select(func.count()).select_from(InferenceEvent)) or 0)


def test_process_writer_logs_every_row_and_exits_on_close(registry) -> None:  # type: ignore[no-untyped-def]
    sink = ProcessSink(registry)
    writer = TrafficWriter(registry, max_rows=1000, write_rows=16, sink=sink)
    futures = [writer.submit([event(2 * i), event(2 * i + 1)], [True, i % 2 == 0])
               for i in range(40)]
    ids = [f.result(timeout=60) for f in futures]
    assert all(len(x or []) == 2 for x in ids)
    assert len({i for x in ids for i in x or []}) == 80
    proc = sink.proc
    assert proc is not None and proc.pid != os.getpid()
    writer.close()
    assert proc.poll() == 0 and sink.starts == 1
    assert logged(registry) == 80
    with registry.reading() as s:  # the keep_text flag and the embedding bytes crossed over
        rows = s.execute(select(InferenceEvent.text, InferenceEvent.embedding)
                         .order_by(InferenceEvent.id)).all()
    assert rows[0].text == "paka 0" and rows[3].text is None  # i=1: [True, False]
    assert len(rows[0].embedding) == 8 * 4


def test_a_dead_writer_costs_its_group_and_the_next_group_starts_another(registry) -> None:  # type: ignore[no-untyped-def]
    sink = ProcessSink(registry)
    writer = TrafficWriter(registry, max_rows=1000, write_rows=64, sink=sink)
    assert writer.submit([event(0)], [True]).result(timeout=60)
    first = sink.proc
    assert first is not None
    os.kill(first.pid, signal.SIGTERM)  # the process group's SIGTERM: ignored, it drains on
    time.sleep(0.2)
    assert first.poll() is None
    before = TRAFFIC_DROPPED.labels(reason="write_failed")._value.get()
    os.kill(first.pid, signal.SIGSTOP)  # hold it, so the next group is in its hands
    lost = writer.submit([event(1), event(2)], [True, True])
    time.sleep(0.3)
    os.kill(first.pid, signal.SIGKILL)
    assert lost.result(timeout=30) is None
    assert TRAFFIC_DROPPED.labels(reason="write_failed")._value.get() - before == 2
    assert writer.dropped == 2
    again = writer.submit([event(3)], [True]).result(timeout=60)
    assert again and sink.starts == 2 and sink.proc is not first
    writer.close()
    assert logged(registry) == 2  # rows 0 and 3; the held group was never written
    with registry.reading() as s:  # the drop is alerted (at close at the latest)
        alert = s.scalars(select(Event).where(Event.action == "alert")).one()
    assert alert.after["kind"] == "serve_traffic_dropped" and alert.after["dropped"] == 2


def test_a_writer_that_cannot_reach_the_database_answers_failed(registry, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from registry.service import Registry
    from registry.settings import load_settings

    gone = Registry(load_settings(tmp_path / "h", f"sqlite:///{tmp_path / 'no' / 'x.db'}"))
    sink = ProcessSink(gone, retries=1)
    writer = TrafficWriter(registry, max_rows=100, write_rows=8, sink=sink)
    assert writer.submit([event(0)], [True]).result(timeout=60) is None
    assert writer.dropped == 1 and sink.starts == 1  # answered, not died
    writer.close()
