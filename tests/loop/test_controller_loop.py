"""The loop end to end on the tiny model with real parts (training, drift, gates, canary,
registry, artifacts): first champions, then hi traffic drifts to hi-Latn and the controller
retrains, gates, canaries and promotes; stable sw is left alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry import queries
from registry.schema import DriftReport
from tests.support.loop_support import TASK, Drill, final_state, setup

HOURS = 10
AFTER = 5  # hours after the promotion: the guard window, then three drift checks


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
    # the training job, then the candidate's gate job, then the report they produced
    assert after[:11] == ["drift_check", "job_created", "job_succeeded", "job_created",
                          "job_succeeded", "gate", "gated", "canary_start", "canary_analysis",
                          "canary_weight", "canary_analysis"], after
    assert after[11] == "promote"
    sw = drill.reg.query(queries.history, TASK, "sw")
    kinds = [e["after"]["kind"] for e in sw if e["action"] == "job_created"]
    assert kinds.count("train") == 1  # only its first champion
    checks = sum(e["action"] == "drift_check" for e in sw)  # each from a drift job; the
    assert checks > 0 and kinds.count("drift") - checks in (0, 1)  # last may be in flight
    verdicts = [e["after"]["verdict"] for e in sw if e["action"] == "drift_check"]
    assert verdicts and set(verdicts) == {"stable"}

    # the drift reference followed the traffic: the next three checks of hi read stable,
    # with no cooldown in force, against the traffic window v2 was trained for
    promoted = max(i for i, e in enumerate(drill.reg.query(queries.history, TASK, "hi"))
                   if e["action"] == "promote")
    for h in range(HOURS, HOURS + AFTER):
        log.append(drill.hour(h))
    later = drill.reg.query(queries.history, TASK, "hi")[promoted:]
    checks = [e for e in later if e["action"] == "drift_check"][:3]
    assert [c["after"]["verdict"] for c in checks] == ["stable"] * 3, log[HOURS:]
    assert "train" not in [e["after"]["kind"] for e in later if e["action"] == "job_created"]
    for check in checks:
        with drill.reg.reading() as session:
            ref = session.get(DriftReport, check["after"]["report_id"]).reference
        assert ref["key"].startswith("traffic/emoji-group/hi/drift-report-"), ref
        # version 1 was the track's first reference (v1's test split), this is its second
        assert ref["kind"] == "traffic" and ref["version"] == 2
    phases = [e for e in later if e["action"] == "phase" and "drift check" in (e["reason"] or "")]
    assert phases and all("cooldown" not in (p["reason"] or "") for p in phases)
    for p in phases:  # not in force: a cooldown would read "(in cooldown)" in the reason
        until = float(p["after"]["phase_data"].get("cooldown_until", 0))
        assert until <= float(p["after"]["phase_data"]["last_check_at"])
