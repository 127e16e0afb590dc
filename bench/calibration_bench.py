"""Cross-fitted calibration of real LoRA adapters, through the shipped training path.

Per language: `train_adapter` on a fresh embedded registry (SQLite, temporary XLT_HOME)
with `calibration_folds = K`, on the multilingual base (`--base`, default me5-small@1),
then the adapter's accuracy on the held-out test split estimated from its confidences
alone (CBPE, controller.estimation) with two maps:

- `dev`: isotonic on the dev split (~460 rows), what the controller fits for an adapter
  trained without folds (the baseline, in the same run);
- `crossfit`: the isotonic map stored with the adapter (out-of-fold scores over the
  training rows plus dev; controller.training.crossfit), what the controller reads with
  `[canary] estimator = "confidence"` or where a request's text is not kept;
- `dev_sharper`: the feature map fitted on the dev split alone, what the controller fits
  for an adapter trained without folds (LiveOperations.feature_map);
- `sharper`: the feature map stored beside it, fitted on the same rows
  (controller.estimation_features: margin, entropy, agreement with the adapter's 10 nearest
  training rows), what the controller reads by default (LiveOperations.correctness).

Figures: estimate minus true accuracy on the whole test split (~450 rows), and the share
of windows of `--window` distinct test rows whose estimate is within 3 points of their
true accuracy; the seconds the folds cost beside the training itself. bench/
estimation_bench.py measures the method on many more windows (heads instead of LoRA).

Prints a table, then as its last line one JSON object of figures.
Run: .venv/bin/python bench/calibration_bench.py [--languages hi,sw,am] [--folds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from controller.data import cldr  # noqa: E402
from controller.encoders.builtin import builtin_dir_for_ref  # noqa: E402
from controller.estimation import fit_calibrator  # noqa: E402
from controller.estimation_features import fit_feature_calibrator  # noqa: E402
from controller.live_ops import LiveOperations  # noqa: E402
from controller.policy import parse_policy  # noqa: E402
from controller.training.crossfit import KNN_K  # noqa: E402
from controller.training.pipeline import train_adapter  # noqa: E402

TASK = "emoji-group"
MAPS = ("dev", "dev_sharper", "crossfit", "sharper")
COLS = ["language", "accuracy", *(f"{m}_error" for m in MAPS),
        *(f"{m}_within_3pt" for m in MAPS), "fold_seconds"]


def windows_within(p_correct: np.ndarray, correct: np.ndarray, windows: list[np.ndarray]
                   ) -> float:
    """Share of `windows` (row indices) whose mean P(correct) is within 3 points of their
    accuracy; every map is measured on the same windows."""
    hits = [abs(float(p_correct[i].mean()) - float(correct[i].mean())) <= 0.03
            for i in windows]
    return round(float(np.mean(hits)), 3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="me5-small@1", help="builtin base ref")
    ap.add_argument("--languages", default="hi,sw,am")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--top-blocks", type=int, default=2,
                    help="as the demo's policy trains (6: the default recipe, 3x slower)")
    ap.add_argument("--window", type=int, default=300, help="distinct test rows a window")
    ap.add_argument("--windows", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.folds < 2 or args.top_blocks < 1 or args.window < 1 or args.windows < 1:
        ap.error("--folds must be >= 2, --top-blocks, --window and --windows >= 1")
    model_dir = builtin_dir_for_ref(args.base)
    if model_dir is None:
        ap.error(f"--base {args.base!r} is not a builtin base (minilm@1, me5-small@1)")
    languages = [x for x in args.languages.split(",") if x]
    torch.set_num_threads(2)
    from registry.service import Registry
    from registry.settings import load_settings

    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="xlt-calibration-bench-") as home:
        reg = Registry(load_settings(home=Path(home)), actor="bench")
        reg.init()
        name, version = args.base.split("@", 1)
        reg.register_encoder(name, version, model_dir)
        ops = LiveOperations(reg, parse_policy(""), device="cpu")
        for lang in languages:
            t0 = time.perf_counter()
            # without the lexical refit: the baseline map below is fitted on the adapter's
            # dev scores, which must be out of sample (a refit half has read dev's labels)
            out = train_adapter(reg, TASK, lang, base=args.base, device="cpu", seed=args.seed,
                                top_blocks=args.top_blocks, calibration_folds=args.folds,
                                lexical_refit=False)
            total = time.perf_counter() - t0
            stored = ops.calibrator(TASK, lang, out["version"])  # the cross-fitted map
            dev, test = cldr.load_split("dev", [lang]), cldr.load_split("test", [lang])
            d_labels, d_conf = ops.predict(TASK, lang, out["version"], dev["text"].tolist())
            dev_only = fit_calibrator(d_conf, np.asarray(d_labels) == dev["label"].to_numpy())
            labels, conf = ops.predict(TASK, lang, out["version"], test["text"].tolist())
            conf = np.asarray(conf)
            correct = np.asarray(labels) == test["label"].to_numpy()
            size = min(args.window, len(test))
            windows = [rng.choice(len(conf), size, replace=False) for _ in range(args.windows)]
            fold_s = out["metrics"]["calibrator"]["seconds"]
            scored = ops.correctness(TASK, lang, out["version"], test["text"].tolist())
            if scored is None:
                raise SystemExit(f"{lang}: the adapter stored no feature map")
            _, d_feat = ops.request_features(TASK, lang, out["version"],
                                             dev["text"].tolist(), KNN_K)
            dev_sharper = fit_feature_calibrator(
                d_feat, np.asarray(d_labels) == dev["label"].to_numpy())
            _, t_feat = ops.request_features(TASK, lang, out["version"],
                                             test["text"].tolist(), KNN_K)
            maps = {"dev": dev_only(conf), "dev_sharper": dev_sharper(t_feat),
                    "crossfit": stored(conf), "sharper": scored[1]}
            row = {"language": lang, "accuracy": round(float(correct.mean()), 4),
                   **{f"{m}_error": round(float(p.mean() - correct.mean()), 4)
                      for m, p in maps.items()},
                   **{f"{m}_within_3pt": windows_within(p, correct, windows)
                      for m, p in maps.items()},
                   "train_seconds": round(out["train_seconds"], 1),
                   "fold_seconds": fold_s, "total_seconds": round(total, 1),
                   "calibration_rows": stored.n}
            rows.append(row)
            print("  " + " ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    print(f"\n{args.base}: {args.folds} folds, top {args.top_blocks} blocks; estimate minus "
          f"true accuracy on the test split, and windows of {args.window} distinct test rows "
          f"within 3 points (dev: the dev-only isotonic map, the "
          f"baseline; dev_sharper: the feature map on dev; crossfit and sharper: the stored "
          f"maps, isotonic and feature)")
    print(" | ".join(f"{c:>19}" for c in COLS))
    for r in rows:
        print(" | ".join(f"{r[c]!s:>19}" for c in COLS))
    figures = {"base": args.base, "folds": args.folds, "top_blocks": args.top_blocks,
               "window": args.window, "windows": args.windows,
               "mean_abs_error_dev": round(float(np.mean([abs(r["dev_error"]) for r in rows])), 4),
               **{f"mean_abs_error_{m}": round(float(np.mean(
                   [abs(r[f"{m}_error"]) for r in rows])), 4) for m in MAPS[1:]},
               **{f"{m}_within_3pt": round(float(np.mean(
                   [r[f"{m}_within_3pt"] for r in rows])), 3)
                  for m in MAPS},
               "languages": {r["language"]: r for r in rows},
               "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
