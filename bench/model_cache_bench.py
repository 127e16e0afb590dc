"""Benchmark of the controller's model cache on the 12-layer multilingual base: what `make
demo` spends outside training, with and without the in-process memo of the frozen base.

- serving: hours of the demo's traffic (hi 400, sw 200, am 200 requests an hour, drawn
  from each language's dev split as the demo's simulator draws them) through the real
  Server: routing, the base's embedding for drift, the champion's prediction, the log;
- gates: one candidate's held-out evaluation as the gates run it (the candidate on its
  language and English, the fairness re-evaluation, a second adapter as the champion).

Baseline (`memo=False`, what the model cache did before): every adapter merged into its
own copy of the base, every text through all 12 blocks each time. Memo (`memo=True`): the
base's pooled embeddings and the states below the adapters' cut kept per process, the
deep recipe's adapters running their top blocks only. Adapters are random LoRA weights
with the deep recipe's shape (r=16 on query/key/value/dense of the top `--top-blocks`
blocks; 2 as the demo's policy trains them, 6 is the recipe's default): speed does not
depend on the weights' values.

    python bench/model_cache_bench.py [--hours 4] [--gate-runs 3] [--threads 2] [--top-blocks 2]

Prints a table, then as its LAST line one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from controller.data import cldr  # noqa: E402
from controller.runtime.bootstrap import build_operations  # noqa: E402
from registry.service import Registry  # noqa: E402
from registry.settings import load_settings  # noqa: E402

TASK = "emoji-group"
EVENTS = {"hi": 400, "sw": 200, "am": 200}  # the demo's requests per simulated hour
START = datetime(2027, 1, 4, tzinfo=UTC)


def make_adapters(reg: Registry, model_dir: Path, tmp: Path, top_blocks: int) -> None:
    """A champion per language, plus a second hi version (the gates' candidate)."""
    from peft import get_peft_model

    from controller.data.cldr import LABELS
    from controller.encoders.text import TextEncoder
    from controller.training.artifact import save_adapter
    from controller.training.distill import for_base
    from controller.training.head import LinearHead
    from registry.commands.lookups import encoder_by_ref
    from tests.support.serve_support import randomize_lora

    encoder = TextEncoder(model_dir, device="cpu")
    fp = reg.query(encoder_by_ref, "me5-small@1").fingerprint
    cfg = for_base(encoder.model.config, top_blocks=top_blocks)
    student = get_peft_model(encoder.model,
                             cfg.lora_config(encoder.model.config.num_hidden_layers))
    for i, lang in enumerate([*EVENTS, "hi"]):
        torch.manual_seed(i)
        head = LinearHead(encoder.hidden_size, len(LABELS))
        randomize_lora(student, i, 0.02)
        path = tmp / f"{lang}-{i}.safetensors"
        save_adapter(path, student, head, list(LABELS), fp)
        adapter = reg.register_adapter(task=TASK, language=lang, base="me5-small@1",
                                       weights=path, teacher_language="en",
                                       metrics={"accuracy": 0.5})
        if adapter.version == 1:
            reg.promote(TASK, lang, 1, reason="bench")


def traffic(hour: int) -> dict[str, list[str]]:
    from controller.data import cldr

    out = {}
    for lang, n in EVENTS.items():
        texts = cldr.load_split("dev", [lang])["text"].tolist()
        rng = np.random.default_rng(hour * 7919 + len(lang))
        out[lang] = [texts[i] for i in rng.integers(0, len(texts), n)]
    return out


def serve_hours(reg: Registry, memo: bool, hours: int) -> list[float]:
    from controller.demo.server import Server
    from controller.ops.model_cache import ModelCache

    server = Server(reg, TASK, models=ModelCache(reg, "cpu", memo=memo))
    seconds = []
    for hour in range(hours):
        began = time.perf_counter()
        for lang, texts in traffic(hour).items():
            at = [START + timedelta(hours=hour, seconds=i) for i in range(len(texts))]
            server.serve(lang, texts, [f"u{i}" for i in range(len(texts))], at=at)
        seconds.append(time.perf_counter() - began)
    return seconds


def gate_runs(reg: Registry, memo: bool, runs: int) -> list[float]:
    """The evaluations one candidate's gates run (LiveOperations: candidate on hi + variants
    with English, fairness on hi, the champion), each run in a fresh LiveOperations (a
    candidate's evaluation is cached per process; the memo outlives it in the model cache,
    as in the controller)."""
    from controller.ops.model_cache import ModelCache
    from controller.policy import Policy

    models = ModelCache(reg, "cpu", memo=memo)
    policy = Policy.model_validate({"base": "me5-small@1",
                                    "tracks": [{"task": TASK, "language": "hi"}]})
    seconds = []
    for _ in range(runs):
        ops = build_operations(reg, policy, models=models)
        began = time.perf_counter()
        ops.evaluate(TASK, "hi", 2)
        ops.fairness(TASK, "hi", 2, policy)
        ops.evaluate(TASK, "hi", 1)
        seconds.append(time.perf_counter() - began)
    return seconds


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive count")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=positive, default=4, help="hours of traffic per mode")
    parser.add_argument("--gate-runs", type=positive, default=3, help="gate evaluations per mode")
    parser.add_argument("--threads", type=positive, default=2)
    parser.add_argument("--top-blocks", type=positive, default=2,
                        help="blocks the adapters adapt (the demo's policy: 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from controller.encoders.builtin import builtin

    me5 = builtin("me5-small")
    model_dir = me5.model_dir()
    with tempfile.TemporaryDirectory(prefix="xlt-cache-bench-") as tmp:
        reg = Registry(load_settings(home=Path(tmp) / "home",
                                     database_url=f"sqlite:///{tmp}/registry.db"),
                       actor="bench")
        reg.init()
        cldr.register_task(reg)  # the task's data, as a team registers its own
        reg.register_encoder("me5-small", "1", model_dir, source=me5.source,
                             provenance=me5.provenance(model_dir))
        make_adapters(reg, model_dir, Path(tmp), args.top_blocks)
        figures: dict[str, Any] = {"threads": args.threads, "top_blocks": args.top_blocks,
                                   "load_average": round(os.getloadavg()[0], 2)}
        for name, memo in (("baseline", False), ("memo", True)):
            hours = serve_hours(reg, memo, args.hours)
            gates = gate_runs(reg, memo, args.gate_runs)
            figures[name] = {"hour_s": [round(h, 2) for h in hours],
                             "first_hour_s": round(hours[0], 2),
                             "later_hours_median_s": round(statistics.median(hours[1:]
                                                                             or hours), 2),
                             "gates_s": [round(g, 2) for g in gates],
                             "gates_median_s": round(statistics.median(gates), 2)}
    base, memo = figures["baseline"], figures["memo"]
    for key in ("first_hour_s", "later_hours_median_s", "gates_median_s"):
        figures[f"speedup_{key.removesuffix('_s')}"] = round(base[key] / memo[key], 2)
    print(f"model cache on me5-small@1, {args.threads} threads, load average "
          f"{figures['load_average']} at the start; an hour = "
          f"{sum(EVENTS.values())} requests (hi 400, sw 200, am 200)\n")
    print(f"{'what':<34}{'baseline s':>12}{'memo s':>10}{'speed-up':>10}")
    rows = [("first hour of traffic", "first_hour_s"),
            ("later hours (median)", "later_hours_median_s"),
            ("one candidate's gates (median)", "gates_median_s")]
    for label, key in rows:
        print(f"{label:<34}{base[key]:>12.2f}{memo[key]:>10.2f}"
              f"{base[key] / memo[key]:>9.1f}x")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
