"""Bring your own task: the tutorial's dataset (docs/your-own-task.md, country names ->
continent, 6 labels) through `xlt`'s public path on a real base, per target language:

* zero-shot: the teacher's (English) head applied to the frozen base's embedding of the
  target text, the baseline a trained adapter must beat;
* trained with target labels (`transfer+labels`: the labelled rows, paired with English by
  id) and without them (`transfer`: the same pairs registered as a parallel file, no
  labels), with training seconds and pairs used;

and the validation speed of `xlt dataset register` on a 1M-row JSONL file (rows/s, peak
memory of the registering process). Everything is measured in this run.

    python bench/byo_bench.py [--base me5-small] [--langs sw,wo] [--epochs 3] [--rows 1000000]

Prints a table; the last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
ROOT = Path(__file__).resolve().parents[1]
LABELS = ["Africa", "Asia", "Europe", "North America", "Oceania", "South America"]
PROV = dict(licence="LGPL-2.1-only", consent="public data",
            source="pycountry 26.2.16 (Debian iso-codes)")


def build_data(out: Path, langs: list[str]) -> None:
    subprocess.run([sys.executable, str(ROOT / "docs/tutorial/build_countries.py"),
                    "--out", str(out), "--langs", ",".join(["en", *langs])], check=True,
                   capture_output=True)


def register(reg, data: Path, langs: list[str], task: str, labelled_target: bool) -> None:
    from registry.commands.tasks import DatasetSpec

    reg.create_task(task, LABELS, "continent of a country name")
    spec = dict(task=task, **PROV)
    reg.register_task_dataset(DatasetSpec(path=data / "en.train.jsonl", language="en", **spec))
    for lang in langs:
        for split in ("dev", "test"):
            reg.register_task_dataset(DatasetSpec(path=data / f"{lang}.{split}.jsonl",
                                                  language=lang, split=split, **spec))
        if labelled_target:
            reg.register_task_dataset(DatasetSpec(path=data / f"{lang}.train.jsonl",
                                                  language=lang, **spec))
        else:  # the same items as pairs with English, their labels dropped
            en = {r["id"]: r["text"] for r in map(json.loads, (data / "en.train.jsonl")
                                                  .read_text(encoding="utf-8").splitlines())}
            pairs = data / f"{lang}.pairs.jsonl"
            with pairs.open("w", encoding="utf-8") as fh:
                for r in map(json.loads, (data / f"{lang}.train.jsonl").read_text(
                        encoding="utf-8").splitlines()):
                    if r["id"] in en:
                        fh.write(json.dumps({"id": r["id"], "source_text": en[r["id"]],
                                             "text": r["text"]}, ensure_ascii=False) + "\n")
            reg.register_task_dataset(DatasetSpec(path=pairs, language=lang, kind="parallel",
                                                  source_language="en", **spec))


def zero_shot(reg, task: str, base: str, lang: str) -> float:
    """The English head on the frozen base's embedding of the target's test texts."""
    import numpy as np

    from controller.data.access import TaskData
    from controller.training.head_cache import train_teacher_head
    from controller.training.pipeline import load_base

    data = TaskData(reg, task)
    encoder_row, encoder = load_base(reg, base, "cpu")
    head = train_teacher_head(encoder, data.labelled("train", ["en"]), "en", data.labels, 0)
    test = data.labelled("test", [lang])
    import torch

    with torch.inference_mode():
        logits = head(torch.as_tensor(np.asarray(encoder.embed(test["text"].tolist()))))
    predicted = [data.labels[i] for i in logits.argmax(-1).tolist()]
    return float(np.mean([p == y for p, y in zip(predicted, test["label"], strict=True)]))


def validation_speed(rows: int, tmp: Path) -> dict[str, float]:
    """`xlt dataset register` of a `rows`-row JSONL file in a fresh process."""
    path = tmp / "big.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for i in range(rows):
            fh.write(json.dumps({"id": str(i), "text": f"row number {i} of the big file",
                                 "label": LABELS[i % len(LABELS)]}) + "\n")
    home = tmp / "speed"
    env = {**os.environ, "XLT_HOME": str(home)}
    env.pop("XLT_DATABASE_URL", None)
    xlt = [sys.executable, "-m", "controller.cli"]
    subprocess.run([*xlt, "init"], env=env, check=True, capture_output=True)
    subprocess.run([*xlt, "task", "create", "big", "--labels", ",".join(LABELS)], env=env,
                   check=True, capture_output=True)
    # the registering process reports its own peak (RUSAGE_CHILDREN would be the largest
    # child of this whole run, e.g. the base's conversion)
    wrapper = ("import resource, runpy, sys\n"
               "sys.argv = ['xlt', *sys.argv[1:]]\n"
               "try:\n    runpy.run_module('controller.cli', run_name='__main__')\n"
               "finally:\n    print('peak_kb', resource.getrusage(resource.RUSAGE_SELF)"
               ".ru_maxrss, file=sys.stderr)\n")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", wrapper, "dataset", "register", "big",
                           str(path), "--lang", "en", "--licence", "CC0-1.0", "--consent",
                           "synthetic"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    peak_kb = int(done.stderr.rsplit("peak_kb", 1)[1].split()[0])
    if "registered" not in done.stdout:
        raise SystemExit(f"register failed: {done.stderr}")
    return {"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
            "peak_rss_mb": round(peak_kb / 1024, 1),
            "file_mb": round(path.stat().st_size / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="me5-small", help="a builtin base (controller.encoders)")
    ap.add_argument("--langs", default="sw,wo")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--validation-only", action="store_true",
                    help="only the 1M-row validation speed")
    args = ap.parse_args()
    if args.validation_only:
        with tempfile.TemporaryDirectory(prefix="xlt-byo-") as tmp_name:
            speed = validation_speed(args.rows, Path(tmp_name))
        print(f"validation: {speed}")
        print(json.dumps({"validation": speed}))
        return
    langs = args.langs.split(",")

    from controller.encoders.builtin import builtin
    from controller.training.pipeline import train_adapter
    from registry import queries
    from registry.service import Registry

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="xlt-byo-") as tmp_name:
        tmp = Path(tmp_name)
        build_data(tmp / "data", langs)
        spec = builtin(args.base)
        base = f"{args.base}@1"
        model_dir = spec.model_dir()
        for labelled in (True, False):
            reg = Registry.open(home=tmp / f"home-{labelled}", actor="bench")
            reg.init()
            reg.register_encoder(args.base, "1", model_dir)
            register(reg, tmp / "data", langs, "region", labelled)
            for lang in langs:
                row = results.setdefault(lang, {})
                if labelled:
                    row["zero_shot"] = round(zero_shot(reg, "region", base, lang), 3)
                t0 = time.perf_counter()
                out = train_adapter(reg, "region", lang, base=base, epochs=args.epochs,
                                    device="cpu", seed=0)
                key = "labels" if labelled else "no_labels"
                hyper = reg.query(queries.show_adapter, "region", lang,
                                  out["version"])["hyperparams"]
                row[f"{key}_accuracy"] = round(out["metrics"]["accuracy"], 3)
                row[f"{key}_train_s"] = round(time.perf_counter() - t0, 1)
                row[f"{key}_pairs"] = hyper["pairs"]
                row[f"{key}_recipe"] = hyper["recipe"]
                row["test_rows"] = out["metrics"]["n"]
        speed = validation_speed(args.rows, tmp)

    cols = ["zero_shot", "labels_accuracy", "no_labels_accuracy", "labels_train_s",
            "no_labels_train_s", "labels_pairs", "test_rows"]
    print(f"base {base}, epochs {args.epochs}; accuracy on each language's test split")
    print(f"{'lang':6}" + "".join(f"{c:>20}" for c in cols))
    for lang, row in results.items():
        print(f"{lang:6}" + "".join(f"{row.get(c, ''):>20}" for c in cols))
    print(f"validation: {speed['rows']} rows ({speed['file_mb']} MB) in {speed['seconds']} s, "
          f"{speed['rows_per_s']} rows/s, peak RSS {speed['peak_rss_mb']} MB")
    print(json.dumps({"base": base, "epochs": args.epochs, "languages": results,
                      "validation": speed}))


if __name__ == "__main__":
    main()
