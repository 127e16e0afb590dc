"""A second task through the whole loop, from files: the tutorial's `region` task (country
names -> continent, 6 labels; the demo's has 8), built from the public PyPI data by
docs/tutorial/build_countries.py, registered with `xlt task create` / `xlt dataset
register`, then on the tiny model with real parts: a first champion trained, gated and
promoted; traffic served and logged; sw traffic drifts to English text (its users switch
language); the drift is detected, a retrain is gated, canaried and promoted. SQLite and
PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.demo.server import Server
from controller.drift.simulator import Scenario, TrafficSimulator
from controller.loop.clock import ManualClock
from controller.ops.model_cache import ModelCache
from controller.policy import parse_policy
from controller.runtime.bootstrap import build_controller, build_operations
from registry import queries
from tests.cli.test_cli import xlt
from tests.support.loop_support import HOUR, OPEN_GATES_TOML, START, open_registry

ROOT = Path(__file__).resolve().parents[2]
TASK = "region"
LABELS = "Africa,Asia,Europe,North America,Oceania,South America"
PROV = ("--licence", "LGPL-2.1-only", "--consent", "public data")
POLICY = f"""
base = "tiny@1"
check_interval_s = 3600
cooldown_s = 0
guard_window_s = 3600
guard_max_accuracy_drop = 1.0
[[tracks]]
task = "{TASK}"
language = "sw"
""" + OPEN_GATES_TOML + """[canary]
steps = [50, 100]
interval_s = 3600
min_feedback_events = 5
max_accuracy_drop = 1.0
[training]
epochs = 1
device = "cpu"
[drift]
min_reference = 40  # sw's test + dev splits hold 51 rows
"""


@pytest.mark.slow
def test_second_task_from_files_through_the_loop(tmp_path: Path, db_url: str,
                                                 tiny_model_dir: Path) -> None:
    data, home = tmp_path / "data", tmp_path / "home"
    subprocess.run([sys.executable, str(ROOT / "docs/tutorial/build_countries.py"), "--out",
                    str(data), "--langs", "en,sw"], check=True, capture_output=True)
    for args in (["init"], ["encoder", "register", "tiny@1", str(tiny_model_dir)],
                 ["task", "create", TASK, "--labels", LABELS],
                 *(["dataset", "register", TASK, str(data / f"en.{split}.jsonl"), "--lang",
                    "en", "--split", split, *PROV] for split in ("train", "dev")),
                 *(["dataset", "register", TASK, str(data / f"sw.{split}.jsonl"), "--lang",
                    "sw", "--split", split, *PROV] for split in ("train", "dev", "test"))):
        p = xlt(home, *args, db=db_url)
        assert p.returncode == 0, (args, p.stderr)

    reg = open_registry(db_url, home, "controller")
    policy = parse_policy(POLICY)
    clock = ManualClock(START)
    models = ModelCache(reg, "cpu")
    server = Server(reg, TASK, models=models)
    sim = TrafficSimulator(task=TASK, split="dev", feedback_rate=0.5, registry=reg)
    controller = build_controller(reg, policy, ops=build_operations(
        reg, policy, models=models, clock=clock), clock=clock, actor="controller")
    shifted = Scenario(kind="script_shift", variant="en", final_share=0.95)
    log: list[list[str]] = []
    for hour in range(10):
        start = datetime.fromtimestamp(START + hour * HOUR, UTC)
        if reg.status(TASK) and reg.status(TASK)[0]["champion"]:
            frame = sim.frame("sw", 300, shifted if hour >= 2 else Scenario(), seed=hour,
                              start=start, duration=timedelta(hours=1),
                              with_descriptors=False)
            server.serve("sw", frame["text"].tolist(), frame["routing_key"].tolist(),
                         at=[t.to_pydatetime() for t in frame["at"]],
                         feedback=frame["feedback_label"].tolist())
        clock._now = START + (hour + 1) * HOUR
        log.append(controller.tick() + controller.settle_training())
        if any(a["status"] == "champion" and a["version"] == 2
               for a in reg.query(queries.list_adapters, TASK, "sw")):
            break

    history = [e for e in reg.query(queries.history, TASK, "sw")]
    actions = [e["action"] for e in history]
    assert actions.count("promote") == 2, log  # the first champion, then the retrain
    first_drift = next(i for i, e in enumerate(history) if e["action"] == "drift_check"
                       and e["after"]["verdict"] == "drift")
    # the training job, the candidate's gate job, then its report
    after = [e["action"] if e["action"] != "job_created" else f"job:{e['after']['kind']}"
             for e in history[first_drift:] if e["action"] in (
                 "job_created", "gate", "gated", "canary_start", "promote")]
    assert after == ["job:train", "job:gate", "gate", "gated", "canary_start", "promote"], after
    v2 = reg.query(queries.show_adapter, TASK, "sw", 2)
    assert v2["config"]["labels"] == LABELS.split(",") and v2["config"]["num_labels"] == 6
    assert {(d["language"], d["split"]) for d in v2["hyperparams"]["datasets"]} >= {
        ("en", "train"), ("sw", "train"), ("sw", "test")}
    served = reg.query(queries.status, TASK)[0]
    assert served["champion"] == 2 and served["phase"] == "STEADY"
