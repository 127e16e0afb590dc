"""resolve(): sticky canary routing, parent-language and base fallback, and the cache."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pytest

from registry.routing import in_canary
from tests.support.tiny import write_adapter_file

TASK = "emoji-group"


@pytest.fixture
def routed(registry, tiny_model_dir: Path, tmp_path: Path):
    registry.init()
    enc = registry.register_encoder("tiny", "1", tiny_model_dir)
    for lang, seed in (("sr", 1), ("sr", 2), ("yo", 3)):
        f = write_adapter_file(tmp_path / f"{lang}{seed}.safetensors", enc.fingerprint, seed)
        registry.register_adapter(task=TASK, language=lang, base="tiny@1", weights=f)
    registry.promote(TASK, "sr", 1)
    registry.promote(TASK, "yo", 1)
    return registry


def test_champion_and_sticky_canary(routed) -> None:
    reg = routed
    assert reg.resolve(TASK, "sr", "user-1").role == "champion"
    reg.start_canary(TASK, "sr", 2, 30)
    roles = {k: reg.resolve(TASK, "sr", f"user-{k}") for k in range(2000)}
    share = sum(r.role == "canary" for r in roles.values()) / len(roles)
    assert 0.25 < share < 0.35
    again = {k: reg.resolve(TASK, "sr", f"user-{k}").role for k in range(2000)}
    assert again == {k: r.role for k, r in roles.items()}  # sticky per key
    canary = next(r for r in roles.values() if r.role == "canary")
    assert canary.version == 2 and canary.artifact_sha256


def test_weight_increase_keeps_canary_users(routed) -> None:
    """A user in the canary at 10% stays there at 50% (same hash, higher cut)."""
    at10 = {k for k in range(3000) if in_canary(f"u{k}", 7, 10)}
    at50 = {k for k in range(3000) if in_canary(f"u{k}", 7, 50)}
    assert at10 <= at50


def test_fallback_chain(routed) -> None:
    reg = routed
    r = reg.resolve(TASK, "sr_Latn", "k")
    assert (r.served_language, r.via, r.version) == ("sr", "parent", 1)
    r = reg.resolve(TASK, "yo-BJ", "k")
    assert (r.served_language, r.via) == ("yo", "parent")
    r = reg.resolve(TASK, "sw", "k")
    assert (r.role, r.via, r.version, r.base) == ("base", "base", None, "tiny@1")


def _promote_later(url: str, home: str, delay: float) -> None:
    from registry.service import Registry
    from registry.settings import load_settings

    time.sleep(delay)
    Registry(load_settings(home=home, database_url=url), actor="other").promote(TASK, "sr", 2)


def test_cached_resolver_sees_other_process_promotion_within_1s(routed) -> None:
    reg = routed
    cached = reg.cached_resolver(ttl=0.5)
    assert cached.resolve(TASK, "sr", "k").version == 1
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=_promote_later,
                       args=(reg.db.url, str(reg.settings.home), 0.0))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    t0 = time.monotonic()
    while cached.resolve(TASK, "sr", "k").version != 2:
        assert time.monotonic() - t0 < 1.0, "cache did not see the promotion within 1 s"
        time.sleep(0.01)
