"""Nothing lost: every prediction `xlt serve` answers under load is in the traffic log once
the server has stopped cleanly (SIGTERM), written off the request path; when the database
cannot keep up the writer drops, counts and alerts instead of blocking."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from controller.observability.serve_metrics import TRAFFIC_DROPPED
from controller.serve.traffic import TrafficWriter
from registry.schema import InferenceEvent
from tests.serve.test_serve import call, serving, start_registry


def test_every_prediction_served_under_load_is_logged_after_a_clean_stop(
        tmp_path: Path, db_url: str, tiny_model_dir: Path) -> None:
    reg = start_registry(tmp_path, db_url, tiny_model_dir)
    served = 0
    with serving(tmp_path, reg, "[serve]\nmax_wait_ms = 5\n") as url:
        def client(i: int) -> int:
            texts = [f"paka {i} {k}" for k in range(1 + i % 5)]
            code, body = call(f"{url}/v1/predict", {
                "task": "emoji-group", "languages": [["sw", "yo", "hi"][i % 3]] * len(texts),
                "texts": texts, "routing_key": f"u{i}"})
            assert code == 200, body
            assert all(p["prediction_id"] for p in body["predictions"])
            return len(body["predictions"])

        with cf.ThreadPoolExecutor(8) as pool:
            served = sum(pool.map(client, range(120)))
        # the server is stopped by SIGTERM as serving() exits: queued rows are written first
    with reg.reading() as s:
        logged = s.scalar(select(func.count()).select_from(InferenceEvent))
    assert served == 360 and logged == served


class SlowRegistry:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.notes: list[dict[str, Any]] = []
        self.gate = threading.Event()

    def log_predictions(self, rows: list[dict[str, Any]]) -> list[int]:
        self.gate.wait(30)
        start = len(self.rows)
        self.rows += rows
        return list(range(start + 1, start + 1 + len(rows)))

    def note(self, action: str, **kw: Any) -> None:
        self.notes.append({"action": action, **kw})


def event(i: int) -> dict[str, Any]:
    return {"task": "t", "language": "sw", "text": f"paka {i}", "prediction": "a",
            "confidence": 0.5}


def test_a_full_queue_drops_counts_and_alerts_and_close_writes_the_rest() -> None:
    reg = SlowRegistry()
    before = TRAFFIC_DROPPED.labels(reason="queue_full")._value.get()
    writer = TrafficWriter(reg, max_rows=10, write_rows=4)
    futures = [writer.submit([event(i), event(i)], [True, True]) for i in range(8)]
    time.sleep(0.1)
    dropped = [f for f in futures if f.done() and f.result() is None]
    assert dropped  # 16 events for a queue of 10 (plus what the writer holds)
    reg.gate.set()
    writer.close()
    kept = [f.result() for f in futures if f.result() is not None]
    assert sum(len(ids) for ids in kept) == len(reg.rows) == 16 - 2 * len(dropped)
    assert writer.dropped == 2 * len(dropped)
    assert TRAFFIC_DROPPED.labels(reason="queue_full")._value.get() - before == writer.dropped
    alert = reg.notes[-1]
    assert alert["action"] == "alert" and alert["after"]["kind"] == "serve_traffic_dropped"
    assert alert["after"]["dropped"] == writer.dropped
    assert writer.submit([event(99)], [True]).result() is None  # closed: nothing queued


