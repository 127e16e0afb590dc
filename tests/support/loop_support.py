"""The continual-update loop on the tiny model, in simulated hours: shared by the loop,
crash and replica tests. Each hour: serve that hour's traffic (once: it is skipped when the
database already holds it, which makes a restarted drill idempotent), then tick."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from controller.data import cldr
from controller.demo.server import Server
from controller.drift.simulator import Scenario, TrafficSimulator
from controller.loop.clock import ManualClock
from controller.ops.model_cache import ModelCache
from controller.policy import Policy, parse_policy
from controller.runtime.bootstrap import build_controller, build_operations
from controller.traffic.log import read_window
from registry.service import Registry
from registry.settings import load_settings
from tests.support.task_data import TEST_LANGUAGES

TASK = "emoji-group"
START = datetime(2027, 1, 4, tzinfo=UTC).timestamp()
HOUR = 3600.0
EVENTS_PER_HOUR = 300

# the tiny random model is not under test for quality: every gate's floor is open
OPEN_GATES_TOML = """[gates]
min_accuracy = 0.0
min_macro_f1 = 0.0
max_ece = 1.0
min_english_accuracy = 0.0
relative_epsilon = 1.0
fairness_floor = 0.0
bootstrap_samples = 100
"""
LOOP_POLICY = """
base = "tiny@1"
check_interval_s = 3600
cooldown_s = 0
guard_window_s = 3600
guard_max_accuracy_drop = 1.0
[[tracks]]
task = "emoji-group"
language = "hi"
[[tracks]]
task = "emoji-group"
language = "sw"
""" + OPEN_GATES_TOML + """[canary]
steps = [50, 100]
interval_s = 3600
min_feedback_events = 5
max_accuracy_drop = 1.0
[training]
epochs = 1
device = "cpu"
"""

SCENARIOS = {"hi": Scenario(kind="script_shift", final_share=0.95), "sw": Scenario()}
# the base-upgrade drill: stable traffic, first champions on tiny@1, then at UPGRADE_HOUR a
# person asks to move every track to tiny@2 (tests/conftest.py: tiny_model_dir_v2)
STABLE = {"hi": Scenario(), "sw": Scenario()}
UPGRADE_HOUR, UPGRADE_BASE = 2, "tiny@2"


def open_registry(url: str, home: Path, actor: str = "controller") -> Registry:
    return Registry(load_settings(home=home, database_url=url), actor=actor)


def setup(url: str, home: Path, tiny_dir: Path, tiny_dir_v2: Path | None = None) -> Registry:
    reg = open_registry(url, home, "setup")
    reg.init()
    cldr.register_task(reg, TEST_LANGUAGES)
    reg.register_encoder("tiny", "1", tiny_dir)
    if tiny_dir_v2 is not None:
        reg.register_encoder("tiny", "2", tiny_dir_v2)
    return reg


class Drill:
    """One controller process's view: registry, models, simulated clock, traffic."""

    def __init__(self, url: str, home: Path, policy: Policy | None = None,
                 actor: str = "controller", upgrade: bool = False) -> None:
        self.upgrade = upgrade
        self.scenarios = STABLE if upgrade else SCENARIOS
        self.reg = open_registry(url, home, actor)
        self.policy = policy or parse_policy(LOOP_POLICY)
        self.clock = ManualClock(START)
        models = ModelCache(self.reg, "cpu")
        self.server = Server(self.reg, TASK, models=models)
        self.sim = TrafficSimulator(task=TASK, split="dev", feedback_rate=0.5,
                                    registry=self.reg)
        ops = build_operations(self.reg, self.policy, models=models, clock=self.clock)
        self.controller = build_controller(self.reg, self.policy, ops=ops, clock=self.clock,
                                           actor=actor)

    def serve_hour(self, hour: int) -> None:
        start = START + hour * HOUR
        champions = {r["language"] for r in self.reg.status(TASK) if r["champion"]}
        for language, scenario in self.scenarios.items():
            if language not in champions:
                continue
            window = (datetime.fromtimestamp(start, UTC),
                      datetime.fromtimestamp(start + HOUR, UTC))
            if len(read_window(self.reg, TASK, language, start=window[0], end=window[1],
                               limit=1)):
                continue  # this hour was served before a restart
            frame = self.sim.frame(language, EVENTS_PER_HOUR, scenario, seed=hour,
                                   start=window[0], duration=timedelta(hours=1),
                                   with_descriptors=False)
            self.server.serve(language, frame["text"].tolist(), frame["routing_key"].tolist(),
                              at=[t.to_pydatetime() for t in frame["at"]],
                              feedback=frame["feedback_label"].tolist())

    def request_upgrade(self) -> None:
        """alice's `xlt encoder upgrade tiny@2 --task emoji-group`, once (a restarted
        drill finds it already recorded)."""
        from registry import queries

        if not self.reg.query(queries.upgrades, UPGRADE_BASE):
            actor, self.reg.actor = self.reg.actor, "alice"
            self.reg.request_upgrade(UPGRADE_BASE, TASK, None, "move to the new base")
            self.reg.actor = actor

    def hour(self, hour: int) -> list[str]:
        if self.upgrade and hour >= UPGRADE_HOUR:
            self.request_upgrade()
        self.serve_hour(hour)
        self.clock._now = START + (hour + 1) * HOUR
        # the tick launches trainings and returns; in simulated time each hour's trainings
        # end within it (as the tick in the real loop would see them on a later tick)
        return self.controller.tick() + self.controller.settle_training()


def final_state(reg: Registry) -> dict[str, object]:
    from registry import queries

    status = {r["language"]: (r["champion"], r["canary"], r["phase"]) for r in reg.status(TASK)}
    adapters = {(a["language"], a["version"]): a["status"]
                for a in reg.query(queries.list_adapters, TASK)}
    promotes = [(e["language"], (e["after"] or {}).get("champion_id"))
                for e in reg.query(queries.history, TASK) if e["action"] == "promote"]
    bases = {r["language"]: r["base"] for r in reg.status(TASK)}
    upgrades = {u.language: (str(u.status), u.candidate) for u in reg.query(queries.upgrades)}
    return {"status": status, "adapters": adapters, "promotes": promotes, "bases": bases,
            "upgrades": upgrades}
