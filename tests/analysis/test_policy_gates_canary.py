"""Policy validation, evaluation gates and canary statistics (pure functions, real inputs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from controller.analysis.canary import analyse, two_proportion_p_value
from controller.analysis.gates import evaluate_gates, paired_bootstrap_interval
from controller.policy import CanaryPolicy, GatePolicy, load_policy, parse_policy
from registry.errors import InvalidInput


def test_empty_policy_has_defaults() -> None:
    p = parse_policy("")
    assert p.canary.steps == [10.0, 50.0, 100.0] and p.tracks == []


def test_policy_file_with_tracks_and_overrides(tmp_path: Path) -> None:
    f = tmp_path / "policy.toml"
    f.write_text('base = "minilm@1"\ncooldown_s = 60\n[canary]\nsteps = [5, 25, 100]\n'
                 '[[tracks]]\ntask = "emoji-group"\nlanguage = "sr_Latn"\n'
                 '[tracks.drift]\nembedding = 0.5\n')
    p = load_policy(f)
    assert p.tracks[0].language == "sr-Latn"
    assert p.drift_for("emoji-group", "sr-Latn").embedding == 0.5
    assert p.drift_for("emoji-group", "sw").embedding == p.drift.embedding


@pytest.mark.parametrize("text,needle", [
    ("[canary]\nsteps = [50, 10]", "field canary.steps"),
    ("[canary]\nsteps = [10, 150]", "field canary.steps"),
    ("cooldown_s = -1", "field cooldown_s"),
    ("colldown_s = 5", "field colldown_s: Extra inputs are not permitted"),
    ("[[tracks]]\ntask = 'e'\nlanguage = 'zz'", "field tracks.0.language"),
    ("[[tracks]]\ntask='e'\nlanguage='sw'\n[[tracks]]\ntask='e'\nlanguage='sw'", "twice"),
    ("executor = 'cloud'", "field executor"),
    ("[gates\n", "not valid TOML"),
    ("[base_gates.me5]\nmin_accuracy = 0.6", "field base_gates: Value error, base 'me5' is not"),
    ("[base_gates.'me5@1']\nmin_acuracy = 0.6", "field base_gates.me5@1.min_acuracy: Extra"),
    ("[base_gates.'me5@1']\nmin_accuracy = 2", "field base_gates.me5@1.min_accuracy"),
    ("[training]\ntop_blocks = 0", "field training.top_blocks"),
    ("[training]\ntop_blocks = 'six'", "field training.top_blocks"),
])
def test_bad_policy_names_field_and_reason(text: str, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle.replace(".", r"\.")):
        parse_policy(text)


def test_base_gates_override_gates_field_by_field() -> None:
    p = parse_policy("[gates]\nmin_accuracy = 0.4\nmax_ece = 0.3\n"
                     "[base_gates.'me5-small@1']\nmin_accuracy = 0.6\n"
                     "[[tracks]]\ntask = 'e'\nlanguage = 'sw'\nfairness_floor = 0.2\n")
    me5 = p.for_base("me5-small@1")
    assert (me5.gates.min_accuracy, me5.gates.max_ece) == (0.6, 0.3)  # the rest from [gates]
    assert p.for_base("minilm@1") is p and p.for_base(None) is p
    assert me5.fairness_floor_for("e", "sw") == 0.2  # a track's own floor still wins
    assert me5.tracks == p.tracks


def test_top_blocks_reaches_the_training_job_and_its_attempt_fingerprint() -> None:
    import hashlib
    import json
    from dataclasses import asdict

    from controller.loop.attempts import first_inputs
    from controller.loop.phase_status import PhaseStatus
    from controller.loop.reconciler import TrackState, training_params

    default, two = parse_policy(""), parse_policy("[training]\ntop_blocks = 2\n")
    assert default.training.top_blocks is None and two.training.top_blocks == 2
    t = TrackState("e", "sw", "STEADY", PhaseStatus(), 1, 1, None, 0.0, base="me5-small@1")
    assert training_params(two, t, None)["top_blocks"] == 2
    a = first_inputs(default, "me5-small@1", "sw", 1, "en", (), False)
    b = first_inputs(two, "me5-small@1", "sw", 1, "en", (), False)
    assert b.params()["top_blocks"] == 2 and a.params()["top_blocks"] is None
    # a different cut is a different input; the default keeps the fingerprint it had
    # before the field existed, so jobs recorded then still count as tried
    assert a.fingerprint() != b.fingerprint()
    before = {k: v for k, v in asdict(a).items() if k != "top_blocks"}
    assert a.fingerprint() == hashlib.sha256(json.dumps(
        before, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        load_policy(tmp_path / "nope.toml")


def _eval(acc: float, n: int = 400, seed: int = 0, **kw: float) -> dict:
    rng = np.random.default_rng(seed)
    correct = (rng.random(n) < acc).astype(int)
    return {"accuracy": correct.mean(), "macro_f1": kw.get("f1", 0.5),
            "ece": kw.get("ece", 0.05), "english_accuracy": kw.get("en", 0.8),
            "correct": correct.tolist()}


def test_gates_pass_and_each_gate_can_fail() -> None:
    policy = GatePolicy()
    champion = _eval(0.6, seed=1)
    # a better candidate: right wherever the champion is, and on every 4th item besides
    better = dict(champion, accuracy=0.7,
                  correct=[1 if i % 4 == 0 else c for i, c in enumerate(champion["correct"])])
    ok = evaluate_gates(better, champion, policy)
    assert all(g.passed for g in ok), [g for g in ok if not g.passed]
    failing = {
        "accuracy_floor": _eval(0.2, seed=3),
        "macro_f1_floor": _eval(0.7, seed=4, f1=0.1),
        "ece_ceiling": _eval(0.7, seed=5, ece=0.5),
        "forgetting_english_accuracy": _eval(0.7, seed=6, en=0.3),
    }
    for gate, candidate in failing.items():
        assert gate in [g.name for g in evaluate_gates(candidate, champion, policy)
                        if not g.passed]


def test_relative_gate_uses_paired_interval() -> None:
    champion = _eval(0.7, seed=1)
    worse = dict(champion, correct=[c if i % 5 else 0 for i, c in enumerate(champion["correct"])])
    gates = {g.name: g for g in evaluate_gates(worse, champion, GatePolicy())}
    assert not gates["relative_to_champion"].passed
    same = {g.name: g for g in evaluate_gates(champion, champion, GatePolicy())}
    assert same["relative_to_champion"].passed
    mean, low, high = paired_bootstrap_interval(np.ones(50), np.zeros(50), 200, 0.95)
    assert mean == low == high == 1.0


def test_fairness_gate() -> None:
    gates = evaluate_gates(_eval(0.7), None, GatePolicy(),
                           fairness={"sr": (0.6, 0.4), "sr-Latn": (0.3, 0.4)})
    assert {g.name: g.passed for g in gates if g.name.startswith("fairness")} == {
        "fairness_sr": True, "fairness_sr-Latn": False}


def _rows(n: int, correct: int, version: int) -> list[dict]:
    return [{"adapter_version": version, "prediction": "a",
             "feedback_label": "a" if i < correct else "b", "confidence": 0.8}
            for i in range(n)]


def test_canary_verdicts() -> None:
    policy = CanaryPolicy(min_feedback_events=30)
    assert analyse(_rows(10, 9, 2), _rows(100, 80, 1), policy).verdict == "inconclusive"
    assert analyse(_rows(100, 82, 2), _rows(100, 80, 1), policy).verdict == "pass"
    bad = analyse(_rows(200, 90, 2), _rows(200, 160, 1), policy)
    assert bad.verdict == "fail" and bad.p_value is not None and bad.p_value < 0.05
    assert bad.metrics()["canary"]["accuracy"] == pytest.approx(0.45)


def test_two_proportion_p_value_is_one_sided() -> None:
    assert two_proportion_p_value(50, 100, 90, 100) < 0.001   # much worse
    assert two_proportion_p_value(90, 100, 50, 100) > 0.999   # much better
    assert 0.4 < two_proportion_p_value(70, 100, 70, 100) < 0.6
