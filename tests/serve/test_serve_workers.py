"""`xlt serve --workers 2` as a user runs it: two worker processes on one port, each with
its own bases, model threads and traffic writer, all on one registry. Both serve; after a
promotion made by another process every answer from either worker is the new version
within a second; a receipt from one worker takes feedback at the other; and after a clean
stop the traffic log holds every prediction answered."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import func, select

from registry.schema import InferenceEvent
from tests.serve.test_serve import ADMIN, TASK, call, predict, serving, start_registry, xlt


def workers_seen(url: str, want: int = 2, seconds: float = 60.0) -> dict[int, int]:
    """{worker pid: batches it has run}, asking /v1/models on new connections until `want`
    workers answered."""
    seen: dict[int, int] = {}
    deadline = time.monotonic() + seconds
    while len(seen) < want and time.monotonic() < deadline:
        code, body = call(f"{url}/v1/models", token=ADMIN)
        assert code == 200, body
        seen[int(body["worker"])] = int(body["batches"])
    assert len(seen) == want, f"only workers {sorted(seen)} answered in {seconds} s"
    return seen


def test_two_workers_follow_a_promotion_and_log_every_prediction(
        tmp_path: Path, db_url: str, tiny_model_dir: Path) -> None:
    reg = start_registry(tmp_path, db_url, tiny_model_dir)
    answered = 0
    with serving(tmp_path, reg, "[serve]\nreveal_arm = true\n", args=("--workers", "2")
                 ) as url:
        before = workers_seen(url)
        receipts = []
        for _ in range(30):  # each call is a new connection: the kernel spreads them
            code, body = predict(url, ["sw", "yo"])
            assert code == 200, body
            assert [r["version"] for r in body["predictions"]] == [1, 1]
            receipts.append(body["predictions"][0]["prediction_id"])
            answered += 2
        promoted = xlt(Path(reg.settings.home), reg.settings.database_url, "promote",
                       "--task", TASK, "--lang", "sw", "--version", "2")
        assert promoted.returncode == 0, promoted.stderr
        time.sleep(1.0)  # each worker revalidates its routes on its next batch
        for _ in range(30):
            code, body = predict(url, ["sw", "yo"])
            assert code == 200, body
            assert [r["version"] for r in body["predictions"]] == [2, 1], body
            answered += 2
        after = workers_seen(url)
        assert set(after) == set(before)
        served_by = [pid for pid in after if after[pid] > before[pid]]
        assert len(served_by) == 2, (before, after)  # both workers took predictions
        # receipts are signed with the home's key: any worker takes any receipt
        for pid in receipts[:6]:
            code, fb = call(f"{url}/v1/feedback", {"task": TASK, "feedback": [
                {"prediction_id": pid, "label": "Animals & Nature"}]})
            assert (code, fb.get("recorded")) == (200, 1), fb
    with reg.reading() as s:  # stopped by SIGTERM: both writers drained
        logged = s.scalar(select(func.count()).select_from(InferenceEvent))
        labelled = s.scalar(select(func.count()).select_from(InferenceEvent)
                            .where(InferenceEvent.feedback_label.is_not(None)))
    assert logged == answered == 120 and labelled == 6
