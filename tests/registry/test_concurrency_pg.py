"""Eight processes promote different candidates on one track at the same moment.

Each reads the track's revision, waits at a barrier, then promotes with that expected
revision. Exactly one wins; the others get a clean StaleRevision; the history replays to
the final state (no lost update)."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from registry.history import verify_track
from registry.schema import Adapter, Event, Track
from tests.support.tiny import write_adapter_file

TASK = "emoji-group"
N = 8


def _attempt(url: str, home: str, version: int, barrier: Any, out: Any) -> None:
    from registry.errors import StaleRevision
    from registry.service import Registry
    from registry.settings import load_settings

    reg = Registry(load_settings(home=home, database_url=url), actor=f"proc-{version}")
    revision = reg.status(TASK)[0]["revision"]
    barrier.wait(30)
    try:
        reg.promote(TASK, "sw", version, expected_revision=revision)
        out.put((version, "promoted"))
    except StaleRevision:
        out.put((version, "stale"))
    except Exception as exc:  # anything else is a failure of the test
        out.put((version, f"error: {type(exc).__name__}: {exc}"))


@pytest.mark.postgres
def test_eight_concurrent_promotions(pg_url: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    from registry.service import Registry
    from registry.settings import load_settings

    home = tmp_path / "home"
    reg = Registry(load_settings(home=home, database_url=pg_url), actor="setup")
    enc = reg.register_encoder("tiny", "1", tiny_model_dir)
    for seed in range(N + 1):
        f = write_adapter_file(tmp_path / f"a{seed}.safetensors", enc.fingerprint, seed)
        reg.register_adapter(task=TASK, language="sw", base="tiny@1", weights=f)
    reg.promote(TASK, "sw", 1)  # candidates are versions 2..9

    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(N), ctx.Queue()
    procs = [ctx.Process(target=_attempt, args=(pg_url, str(home), v, barrier, out))
             for v in range(2, N + 2)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    assert all(r in ("promoted", "stale") for r in results.values()), results
    winners = [v for v, r in results.items() if r == "promoted"]
    assert len(winners) == 1, results

    with reg.reading() as s:
        track = s.scalars(select(Track).where(Track.task == TASK)).one()
        champions = s.scalars(select(Adapter).where(Adapter.status == "champion")).all()
        promotes = s.scalars(select(Event).where(Event.action == "promote",
                                                 Event.actor != "setup")).all()
        assert [c.version for c in champions] == winners
        assert track.champion_id == champions[0].id
        assert [e.actor for e in promotes] == [f"proc-{winners[0]}"]  # one event per success
        ok, replayed, actual = verify_track(s, track)
        assert ok, (replayed, actual)
