"""Base upgrades in the registry, on real SQLite and PostgreSQL, with two tiny bases of
different fingerprints: requests are validated, an adapter of base A is refused on base B
(canary start, promote) unless the track is upgrading to its base, promotion moves base and
champion in one transaction, rollback returns to the old base and its adapter, and a
rejected upgrade candidate leaves the track where it was."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from registry import queries
from registry.errors import IncompatibleAdapter, InvalidTransition, NotFound
from registry.history import verify_track
from registry.schema import BaseUpgrade, Event, OutboxMessage, Track
from registry.upgrades import UpgradeState, UpgradeStatus
from tests.support.tiny import write_adapter_file

TASK = "emoji-group"


@pytest.fixture
def two_bases(registry, tiny_model_dir: Path, tiny_model_dir_v2: Path, tmp_path: Path):
    registry.init()
    a = registry.register_encoder("tiny", "1", tiny_model_dir)
    b = registry.register_encoder("tiny", "2", tiny_model_dir_v2)
    assert a.fingerprint != b.fingerprint

    def adapter(lang: str, base: str, seed: int):
        fp = a.fingerprint if base == "tiny@1" else b.fingerprint
        f = write_adapter_file(tmp_path / f"a-{lang}-{seed}.safetensors", fp, seed)
        return registry.register_adapter(task=TASK, language=lang, base=base, weights=f,
                                         teacher_language="en", metrics={"accuracy": 0.5})

    for lang in ("hi", "sw"):  # a champion on the first base for each track
        registry.promote(TASK, lang, adapter(lang, "tiny@1", 1).version)
    return registry, adapter


def counts(reg) -> tuple[int, int, int]:
    with reg.reading() as s:
        return (s.scalar(select(func.count(Event.id))),
                s.scalar(select(func.count(OutboxMessage.id))),
                s.scalar(select(func.count(BaseUpgrade.id))))


def row(reg, lang: str) -> dict:
    return next(r for r in reg.status(TASK) if r["language"] == lang)


def upgrade_of(reg, lang: str) -> UpgradeState:
    return next(u for u in reg.query(queries.upgrades, "tiny@2") if u.language == lang)


def test_request_is_validated_and_recorded(two_bases) -> None:
    reg, _ = two_bases
    before = counts(reg)
    with pytest.raises(NotFound, match="no base encoder tiny@9"):
        reg.request_upgrade("tiny@9", TASK, ["hi"])
    with pytest.raises(NotFound, match="no track"):
        reg.request_upgrade("tiny@2", TASK, ["hi", "yo"])  # all or nothing: hi untouched
    with pytest.raises(NotFound, match="has no tracks"):
        reg.request_upgrade("tiny@2", "no-such-task")
    assert counts(reg) == before

    assert reg.request_upgrade("tiny@2", TASK, ["hi"], "multilingual") == {"hi": "requested"}
    assert reg.request_upgrade("tiny@2", TASK) == {"hi": "already requested (pending)",
                                                   "sw": "requested"}
    events, outbox, upgrades = counts(reg)
    assert (events - before[0], outbox - before[1], upgrades) == (2, 2, 2)
    state = upgrade_of(reg, "hi")
    assert isinstance(state.status, UpgradeStatus) and state.status == UpgradeStatus.PENDING
    assert (state.from_base, state.to_base, state.candidate) == ("tiny@1", "tiny@2", None)
    ev = reg.query(queries.history, TASK, "hi")[-1]
    assert ev["action"] == "upgrade_request"
    assert ev["after"]["from_base"] == "tiny@1" and ev["after"]["to_base"] == "tiny@2"
    impact = {r["language"]: r for r in reg.query(queries.impact, "tiny@2")}
    assert impact["hi"]["upgrade"]["status"] == "pending"
    assert impact["hi"]["retrain"][0]["role"] == "champion"


def test_adapter_of_other_base_refused_without_upgrade(two_bases) -> None:
    reg, adapter = two_bases
    b = adapter("hi", "tiny@2", 2)
    before = (row(reg, "hi"), counts(reg))
    with pytest.raises(IncompatibleAdapter, match="track serves tiny@1"):
        reg.start_canary(TASK, "hi", b.version, 10)
    with pytest.raises(IncompatibleAdapter, match="track serves tiny@1"):
        reg.promote(TASK, "hi", b.version)
    assert (row(reg, "hi"), counts(reg)) == before


def test_upgrade_promote_moves_base_and_rollback_returns(two_bases) -> None:
    reg, adapter = two_bases
    reg.request_upgrade("tiny@2", TASK, ["hi"])
    reg.advance_upgrade(TASK, "hi", "training")
    cand = adapter("hi", "tiny@2", 2)
    reg.advance_upgrade(TASK, "hi", "gating", cand.version)
    wrong = adapter("hi", "tiny@1", 3)  # an old-base adapter is still fine on the old base
    reg.start_canary(TASK, "hi", cand.version, 10, reason="gates passed")
    assert upgrade_of(reg, "hi").status == UpgradeStatus.CANARY
    assert row(reg, "hi")["base"] == "tiny@1"  # the champion still runs on the old base
    # a mixed canary: each arm resolves to its own adapter's base
    routes = {reg.resolve(TASK, "hi", f"k{i}") for i in range(200)}
    assert {(r.role, r.version, r.base, r.track_base) for r in routes} == {
        ("champion", 1, "tiny@1", "tiny@1"), ("canary", cand.version, "tiny@2", "tiny@1")}

    reg.promote(TASK, "hi", cand.version, reason="canary passed")
    hi = row(reg, "hi")
    assert (hi["base"], hi["champion"], hi["previous"], hi["canary"]) == (
        "tiny@2", cand.version, 1, None)
    assert upgrade_of(reg, "hi").status == UpgradeStatus.DONE
    promote = [e for e in reg.query(queries.history, TASK, "hi") if e["action"] == "promote"][-1]
    assert (promote["before"]["base"], promote["after"]["base"]) == ("tiny@1", "tiny@2")
    assert (promote["after"]["from_base"], promote["after"]["to_base"]) == ("tiny@1", "tiny@2")
    assert row(reg, "sw")["base"] == "tiny@1"  # only the upgraded track moved
    # the old base's adapters are now refused on the track
    with pytest.raises(IncompatibleAdapter, match="track serves tiny@2"):
        reg.promote(TASK, "hi", wrong.version)

    reg.rollback(TASK, "hi", reason="regression")
    hi = row(reg, "hi")
    assert (hi["base"], hi["champion"]) == ("tiny@1", 1)
    assert upgrade_of(reg, "hi").status == UpgradeStatus.ROLLED_BACK
    rb = reg.query(queries.history, TASK, "hi")[-1]
    assert (rb["action"], rb["before"]["base"], rb["after"]["base"]) == (
        "rollback", "tiny@2", "tiny@1")
    with reg.reading() as s:
        for t in s.scalars(select(Track)):
            ok, replayed, actual = verify_track(s, t)
            assert ok, (replayed, actual)


def test_rejected_candidate_fails_the_upgrade_and_the_track_stays(two_bases) -> None:
    reg, adapter = two_bases
    reg.request_upgrade("tiny@2", TASK, ["sw"])
    reg.advance_upgrade(TASK, "sw", "training")
    cand = adapter("sw", "tiny@2", 2)
    reg.advance_upgrade(TASK, "sw", "gating", cand.version)
    reg.reject(TASK, "sw", cand.version, "gates failed: min_accuracy")
    state = upgrade_of(reg, "sw")
    assert state.status == UpgradeStatus.FAILED and "min_accuracy" in (state.reason or "")
    sw = row(reg, "sw")
    assert (sw["base"], sw["champion"]) == ("tiny@1", 1)
    with pytest.raises(IncompatibleAdapter):  # no active upgrade any more
        reg.start_canary(TASK, "sw", adapter("sw", "tiny@2", 3).version, 10)
    assert reg.request_upgrade("tiny@2", TASK, ["sw"]) == {"sw": "requested"}  # again
    with pytest.raises(InvalidTransition, match="cannot become"):
        reg.advance_upgrade(TASK, "sw", "canary")  # pending cannot jump to canary
