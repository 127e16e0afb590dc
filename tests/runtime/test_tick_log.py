"""The controller's log: a tick reports every track that acted, and the steady ones in one
line, through a real controller over a real registry."""

from __future__ import annotations

from pathlib import Path

from controller.data import cldr
from controller.loop.clock import ManualClock
from controller.policy import parse_policy
from controller.runtime.bootstrap import build_controller
from controller.runtime.scheduler import summarise
from tests.support.task_data import TEST_LANGUAGES
from tests.support.tiny import write_adapter_file

TASK = "emoji-group"


def test_summarise_keeps_actions_and_counts_steady_tracks() -> None:
    lines = [f"{TASK}/l{i}: steady" for i in range(1000)]
    lines[3] = f"{TASK}/l3: drift check: stable"
    assert summarise(lines) == [f"{TASK}/l3: drift check: stable",
                                "999 track(s) steady, nothing due"]
    assert summarise([f"{TASK}/sw: rolled back: x"]) == [f"{TASK}/sw: rolled back: x"]


def test_a_tick_over_steady_tracks_logs_one_line(registry, tiny_model_dir: Path,
                                                 tmp_path: Path) -> None:
    registry.init()
    cldr.register_task(registry, TEST_LANGUAGES)  # the demo task's data
    enc = registry.register_encoder("tiny", "1", tiny_model_dir)
    languages = ["sw", "yo", "hi", "am", "ha"]
    for i, lang in enumerate(languages):
        weights = write_adapter_file(tmp_path / f"{lang}.safetensors", enc.fingerprint, i)
        registry.register_adapter(task=TASK, language=lang, base="tiny@1", weights=weights)
        registry.promote(TASK, lang, 1)
    tracks = "".join(f'[[tracks]]\ntask = "{TASK}"\nlanguage = "{lang}"\n'
                     for lang in languages)
    # checks not yet due: every track is steady with nothing to do
    policy = parse_policy(f"check_interval_s = 1e9\n{tracks}", "test policy")
    clock = ManualClock(1.0)
    seen: list[str] = []
    ctl = build_controller(registry, policy, clock=clock, report=seen.append)
    try:
        lines = ctl.tick()
    finally:
        ctl.leader.release()
    assert sorted(lines) == sorted(f"{TASK}/{lang}: steady" for lang in languages)
    assert [line for line in seen if "steady" in line] == ["5 track(s) steady, nothing due"]
