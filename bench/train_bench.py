"""Benchmark of teacher-student adapter training on the shipped CLDR emoji data with the
real all-MiniLM-L6-v2: zero-shot accuracy (English head on the untouched base), accuracy
after LoRA distillation (no target-language labels), training wall time, peak memory.

    python bench/train_bench.py [--device auto|cpu|cuda] [--languages sw,yo,hi-Latn]

Prints a table, then as its LAST line one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from controller.data.cldr import LABELS, load_split, parallel_pairs  # noqa: E402
from controller.encoder import TextEncoder, demo_base_dir  # noqa: E402
from controller.training.distill import DistillConfig, ParallelData, distill  # noqa: E402
from controller.training.embed import embed_sorted  # noqa: E402
from controller.training.evaluate import evaluate_split  # noqa: E402
from controller.training.head import train_head  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--languages", default="sw,yo,hi-Latn")
    ap.add_argument("--epochs", type=int, default=DistillConfig.epochs)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--progress", action="store_true", help="show tqdm bars")
    ap.add_argument("--base-dir", default=None,
                    help="a model directory to use instead of the packaged all-MiniLM-L6-v2")
    args = ap.parse_args(argv)
    languages = [x.strip() for x in args.languages.split(",") if x.strip()]

    t0 = time.perf_counter()
    encoder = TextEncoder(args.base_dir or demo_base_dir(), device=args.device, max_length=48)
    train = load_split("train", ["en", *languages])
    test = load_split("test", ["en", *languages])
    en_train = train[train["language"] == "en"]
    label_index = {name: i for i, name in enumerate(LABELS)}
    head = train_head(embed_sorted(encoder, en_train["text"].tolist()).numpy(),
                      [label_index[x] for x in en_train["label"]], len(LABELS), seed=args.seed)
    setup_s = time.perf_counter() - t0

    cfg = DistillConfig(epochs=args.epochs, seed=args.seed)
    rows = []
    for lang in languages:
        if encoder.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        zero = evaluate_split(encoder, None, head, test, lang, LABELS)
        pairs = parallel_pairs(train, "en", lang)
        data = ParallelData(pairs["text_target"].tolist(), pairs["text_source"].tolist())
        t1 = time.perf_counter()
        result = distill(encoder, head, data, cfg, progress=args.progress)
        wall = time.perf_counter() - t1
        after = evaluate_split(encoder, result.model, head, test, lang, LABELS)
        row = {
            "language": lang, "pairs": len(data), "samples": result.samples,
            "steps": result.steps,
            "zero_shot_accuracy": round(zero["accuracy"], 4),
            "accuracy": round(after["accuracy"], 4),
            "macro_f1": round(after["macro_f1"], 4), "ece": round(after["ece"], 4),
            "en_accuracy_teacher": round(after["source_accuracy_teacher"], 4),
            "en_accuracy_student": round(after["source_accuracy_student"], 4),
            "train_seconds": round(wall, 1),
            "teacher_embed_seconds": round(result.teacher_seconds, 1),
            "peak_rss_mib": round(peak_rss_mib(), 1),
        }
        if encoder.device.type == "cuda":
            row["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        rows.append(row)
        del result

    cols = ["language", "pairs", "zero_shot_accuracy", "accuracy", "macro_f1", "ece",
            "en_accuracy_student", "train_seconds", "peak_rss_mib"]
    print(f"device={encoder.device} torch_threads={torch.get_num_threads()} "
          f"epochs={cfg.epochs} r={cfg.r} lr={cfg.lr} setup={setup_s:.1f}s "
          f"en_teacher_acc={rows[0]['en_accuracy_teacher'] if rows else float('nan')}")
    print(" | ".join(f"{c:>10}" for c in cols))
    for r in rows:
        print(" | ".join(f"{r[c]!s:>10}" for c in cols))
    figures = {"device": str(encoder.device), "threads": torch.get_num_threads(),
               "config": cfg.to_dict(), "setup_seconds": round(setup_s, 1),
               "mean_accuracy": round(float(np.mean([r["accuracy"] for r in rows])), 4)
               if rows else None, "languages": rows}
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
