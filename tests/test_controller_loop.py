"""The loop end to end on the tiny model with real parts (training, drift, gates, canary,
registry, artifacts): first champions, then hi traffic drifts to hi-Latn and the controller
retrains, gates, canaries and promotes; stable sw is left alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry import queries
from tests.loop_support import TASK, Drill, final_state, setup

HOURS = 10


@pytest.mark.slow
def test_loop_end_to_end(sqlite_url: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    setup(sqlite_url, tmp_path / "home", tiny_model_dir)
    drill = Drill(sqlite_url, tmp_path / "home")
    log = [drill.hour(h) for h in range(HOURS)]
    state = final_state(drill.reg)
    assert state["status"]["hi"][1:] == (None, "STEADY"), log
    assert state["status"]["hi"][0] == 2, log  # the retrained candidate is champion
    assert state["adapters"][("hi", 1)] == "retired"
    assert state["status"]["sw"] == (1, None, "STEADY")  # stable: left alone

    hi = [e["action"] for e in drill.reg.query(queries.history, TASK, "hi")]
    first_drift = next(i for i, e in enumerate(drill.reg.query(queries.history, TASK, "hi"))
                       if e["action"] == "drift_check" and e["after"]["verdict"] == "drift")
    after = [a for a in hi[first_drift:] if a in (
        "drift_check", "job_created", "job_succeeded", "gate", "gated", "canary_start",
        "canary_analysis", "canary_weight", "promote")]
    assert after[:9] == ["drift_check", "job_created", "job_succeeded", "gate", "gated",
                         "canary_start", "canary_analysis", "canary_weight",
                         "canary_analysis"], after
    assert after[9] == "promote"
    sw = drill.reg.query(queries.history, TASK, "sw")
    assert [e["action"] for e in sw].count("job_created") == 1  # only its first champion
    verdicts = [e["after"]["verdict"] for e in sw if e["action"] == "drift_check"]
    assert verdicts and set(verdicts) == {"stable"}
