"""The first wave's demo on the English base alone (`make demo-english`): the
continual-update loop, end to end, on real data and all-MiniLM-L6-v2, in accelerated
(simulated) time. `make demo` (controller.demo) tells the same loop across the upgrade to
the multilingual base.

1. Registry under XLT_HOME (SQLite), the base encoder all-MiniLM-L6-v2, the shipped CLDR
   emoji data; the controller trains a first adapter for hi, sw and yo and promotes each
   through the gates.
2. Hourly traffic is served through the registry's routing and logged. hi traffic drifts
   to the Latin script (hi-Latn): drift -> retrain on hi + hi-Latn -> gates -> canary
   10/50/100% -> promote. A person forces a sw retrain on corrupted (shuffled) pairs: the
   candidate fails its gates and is rejected. Stable languages are left alone.
3. A timeline, the final status, and where to look next (reports, MLflow UI).
"""

from __future__ import annotations

from pathlib import Path

from controller.cli.group import quiet_libraries

quiet_libraries()

from controller.demo.loop import TASK, DemoScript, print_final, run_demo  # noqa: E402
from controller.encoders.text import demo_base_dir  # noqa: E402
from registry.service import Registry  # noqa: E402

POLICY = Path(__file__).with_name("english_policy.toml")


def hi_share(hour: int) -> float:
    """Share of hi traffic written in Latin script, rising from hour 3."""
    return 0.0 if hour < 3 else min(0.8, 0.3 * (hour - 2))


SCRIPT = DemoScript(hours=11, events={"hi": 600, "sw": 300, "yo": 300}, hi_share=hi_share,
                    corrupt_at_hour=4)  # events per simulated hour


def register_bases(reg: Registry) -> str:
    enc = reg.register_encoder("minilm", "1", demo_base_dir())
    return f"  base encoder {enc.ref} (all-MiniLM-L6-v2, fingerprint {enc.fingerprint[:12]})"


def finish(reg: Registry, home: Path, seconds: float) -> None:
    print_final(reg, TASK, home, seconds, None, [])


if __name__ == "__main__":
    run_demo(POLICY, SCRIPT, register_bases, finish)
