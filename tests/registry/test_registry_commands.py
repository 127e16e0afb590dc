"""Registry commands on real SQLite and PostgreSQL: preconditions, events, outbox, replay."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from registry.errors import (
    AlreadyExists,
    ArtifactError,
    IncompatibleAdapter,
    InvalidInput,
    InvalidTransition,
    NoChampion,
    NotFound,
    StaleRevision,
)
from registry.history import verify_track
from registry.schema import Adapter, Event, OutboxMessage, Track
from tests.support.tiny import write_adapter_file

TASK = "emoji-group"


def counts(reg) -> tuple[int, int, int]:
    with reg.reading() as s:
        return (s.scalar(select(func.count(Event.id))),
                s.scalar(select(func.count(OutboxMessage.id))),
                s.scalar(select(func.count(Adapter.id))))


@pytest.fixture
def setup(registry, tiny_model_dir: Path, tmp_path: Path):
    registry.init()
    enc = registry.register_encoder("tiny", "1", tiny_model_dir)

    def adapter(lang: str = "sw", seed: int = 0, fingerprint: str | None = enc.fingerprint,
                base: str = "tiny@1"):
        f = write_adapter_file(tmp_path / f"a-{lang}-{seed}.safetensors", fingerprint, seed)
        return registry.register_adapter(task=TASK, language=lang, base=base, weights=f,
                                         teacher_language="en", metrics={"accuracy": 0.5})

    return registry, enc, adapter


def track(reg, lang: str = "sw") -> Track:
    with reg.reading() as s:
        return s.scalars(select(Track).where(Track.task == TASK, Track.language == lang)).one()


def test_register_and_versions(setup) -> None:
    reg, enc, adapter = setup
    a1, a2 = adapter(seed=1), adapter(seed=2)
    assert (a1.version, a2.version) == (1, 2)
    assert a1.status == "registered" and a1.base_fingerprint == enc.fingerprint
    t = track(reg)
    assert t.base_encoder_id == enc.id and t.champion_id is None
    with pytest.raises(AlreadyExists):
        reg.register_encoder("tiny", "1", enc.source)


def test_language_is_canonicalised_and_unknown_refused(setup) -> None:
    reg, _enc, adapter = setup
    a = adapter(lang="sr_Latn")
    assert a.language == "sr-Latn"
    before = counts(reg)
    with pytest.raises(InvalidInput, match="unknown language tag"):
        adapter(lang="zz")
    assert counts(reg) == before


def test_register_adapter_refuses_missing_base_and_wrong_fingerprint(setup, tmp_path) -> None:
    reg, _enc, adapter = setup
    before = counts(reg)
    with pytest.raises(NotFound, match="no base encoder tiny@9"):
        adapter(base="tiny@9")
    with pytest.raises(IncompatibleAdapter, match="trained on base fingerprint"):
        adapter(fingerprint="f" * 64)
    pickled = tmp_path / "adapter.bin"
    pickled.write_bytes(b"\x80\x04not really")
    with pytest.raises(ArtifactError, match="pickle"):
        reg.register_adapter(task=TASK, language="sw", base="tiny@1", weights=pickled)
    assert counts(reg) == before  # nothing written by refused commands


def test_promote_canary_abort_rollback_flow(setup) -> None:
    reg, _enc, adapter = setup
    v1, v2, v3 = adapter(seed=1), adapter(seed=2), adapter(seed=3)
    with pytest.raises(NoChampion):
        reg.start_canary(TASK, "sw", v2.version, 10)
    reg.promote(TASK, "sw", v1.version)
    reg.start_canary(TASK, "sw", v2.version, 10)
    reg.set_canary_weight(TASK, "sw", 50)
    t = track(reg)
    assert (t.canary_id, t.canary_weight) == (v2.id, 50)
    with pytest.raises(InvalidTransition, match="already runs canary"):
        reg.start_canary(TASK, "sw", v3.version, 10)
    reg.promote(TASK, "sw", v2.version, reason="canary passed")
    t = track(reg)
    assert (t.champion_id, t.previous_champion_id, t.canary_id) == (v2.id, v1.id, None)
    reg.start_canary(TASK, "sw", v3.version, 10)
    reg.abort_canary(TASK, "sw", reason="worse")
    with pytest.raises(InvalidTransition, match="rejected"):
        reg.promote(TASK, "sw", v3.version)
    reg.rollback(TASK, "sw", reason="regression")
    t = track(reg)
    assert t.champion_id == v1.id and t.canary_id is None
    statuses = {a["version"]: a["status"] for a in reg.query(
        __import__("registry.queries", fromlist=["x"]).list_adapters, TASK, "sw")}
    assert statuses == {1: "champion", 2: "rolled_back", 3: "rejected"}
    reg.rollback(TASK, "sw", to_version=2)  # bring back a named version
    assert track(reg).champion_id == v2.id
    with reg.reading() as s:
        ok, replayed, actual = verify_track(s, track(reg))
    assert ok, (replayed, actual)


def test_each_change_appends_one_event_and_one_outbox_row(setup) -> None:
    reg, _enc, adapter = setup
    v1 = adapter(seed=1)
    e0, o0, _ = counts(reg)
    reg.promote(TASK, "sw", v1.version)
    e1, o1, _ = counts(reg)
    assert (e1 - e0, o1 - o0) == (1, 1)
    with reg.reading() as s:
        ev = s.scalars(select(Event).order_by(Event.id.desc())).first()
    assert ev.action == "promote" and ev.actor == "tester"
    assert ev.before["champion_id"] is None and ev.after["champion_id"] == v1.id


def test_stale_revision_refused_and_nothing_written(setup) -> None:
    reg, _enc, adapter = setup
    v1, v2 = adapter(seed=1), adapter(seed=2)
    rev = track(reg).revision
    reg.promote(TASK, "sw", v1.version, expected_revision=rev)
    before = counts(reg)
    with pytest.raises(StaleRevision, match=f"at revision {rev + 1}, you expected {rev}"):
        reg.promote(TASK, "sw", v2.version, expected_revision=rev)
    assert counts(reg) == before
    assert track(reg).champion_id == v1.id


def test_incompatible_promote_names_both_sides(setup, tiny_model_dir_v2, tmp_path) -> None:
    reg, enc, _adapter = setup
    enc2 = reg.register_encoder("tiny", "2", tiny_model_dir_v2)
    assert enc2.fingerprint != enc.fingerprint
    f1 = write_adapter_file(tmp_path / "x1.safetensors", enc.fingerprint, 1)
    reg.register_adapter(task=TASK, language="yo", base="tiny@1", weights=f1)
    f2 = write_adapter_file(tmp_path / "x2.safetensors", enc2.fingerprint, 2)
    a2 = reg.register_adapter(task=TASK, language="yo", base="tiny@2", weights=f2)
    with pytest.raises(IncompatibleAdapter) as info:
        reg.promote(TASK, "yo", a2.version)
    msg = str(info.value)
    assert enc2.fingerprint[:12] in msg and enc.fingerprint[:12] in msg and "tiny@1" in msg
    from registry import queries

    impact = reg.query(queries.impact, "tiny@2")
    yo = next(r for r in impact if r["language"] == "yo")
    assert yo["retrain"] == [] and yo["compatible"] == []  # no live adapters yet
    reg.promote(TASK, "yo", 1)
    yo = next(r for r in reg.query(queries.impact, "tiny@2") if r["language"] == "yo")
    assert [x["version"] for x in yo["retrain"]] == [1]
    yo1 = next(r for r in reg.query(queries.impact, "tiny@1") if r["language"] == "yo")
    assert [x["version"] for x in yo1["compatible"]] == [1]


def test_weight_validation(setup) -> None:
    reg, _enc, adapter = setup
    v1, v2 = adapter(seed=1), adapter(seed=2)
    reg.promote(TASK, "sw", v1.version)
    for bad in (0, -5, 101):
        with pytest.raises(InvalidInput, match="out of range"):
            reg.start_canary(TASK, "sw", v2.version, bad)


def test_adapter_artifact_verified_on_load(setup) -> None:
    reg, _enc, adapter = setup
    a = adapter(seed=1)
    _, path = reg.adapter_weights(TASK, "sw", a.version)
    assert path.read_bytes()
    path.chmod(0o644)
    with open(path, "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(ArtifactError, match="corrupt or tampered"):
        reg.adapter_weights(TASK, "sw", a.version)


def test_encoder_tree_verified_on_load(setup) -> None:
    reg, enc, _adapter = setup
    got, directory = reg.encoder_dir("tiny@1")
    assert got.fingerprint == enc.fingerprint
    from registry.fingerprint import model_dir_fingerprint

    assert model_dir_fingerprint(directory)[0] == enc.fingerprint
