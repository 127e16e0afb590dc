"""Benchmark: one full drift check of 100 language tracks x 5,000 events each.

References are real: all-MiniLM-L6-v2 embeddings (`--encoder minilm`, cached under
~/.cache/xlt after the first run) or hashing embeddings (`--encoder hashing`) of up to
`--ref-rows` test-split items per language, cycled over the 27 shipped languages. Events
are drawn by the simulator from the same items with Gaussian noise on the embedding
("synthetic embeddings around the real reference"); descriptors are computed from texts;
predictions come from a nearest-centroid stand-in head per language. Every 10th track gets a shift
scenario (script, orthography or label mix), so some HTML reports are written.

Beside it: Evidently's stock `Report([DataDriftPreset(), EmbeddingsDrift(...)])` for ONE
such language in the same run. Prints a table; the LAST line is one JSON object.

    python bench/drift_bench.py [--tracks 100] [--events 5000] [--encoder minilm|hashing]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.data.cldr import load_manifest, load_split  # noqa: E402
from controller.drift.check import check_many  # noqa: E402
from controller.drift.reference import Reference, build_reference  # noqa: E402
from controller.drift.simulator import (  # noqa: E402
    ORTHOGRAPHY_VARIANTS,
    SCRIPT_VARIANTS,
    Scenario,
    TrafficSimulator,
)
from controller.drift.standins import CentroidHead, HashingEncoder  # noqa: E402
from controller.traffic import descriptors as desc  # noqa: E402

TASK = "emoji-group"


def reference_embeddings(rows: pd.DataFrame, encoder: str) -> np.ndarray:
    if encoder == "hashing":
        return HashingEncoder().embed(rows["text"].tolist())
    from safetensors.numpy import load_file, save_file

    digest = hashlib.sha256("\n".join(rows["id"]).encode()).hexdigest()[:16]
    cache = Path.home() / ".cache" / "xlt" / f"drift_bench_minilm_{digest}.safetensors"
    if cache.is_file():
        return load_file(str(cache))["embeddings"]
    import torch

    from controller.encoders.text import TextEncoder, demo_base_dir

    torch.set_num_threads(1)  # on the shared 2-core machines one thread is ~3x faster
    model = TextEncoder(demo_base_dir(), device="cpu")
    texts = rows["text"].tolist()
    order = np.argsort([len(t) for t in texts])  # less padding per batch
    emb = model.embed([texts[i] for i in order], batch_size=32)
    out = np.empty_like(emb)
    out[order] = emb
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": out}, str(cache))
    return out


def scenario_for(track: int, language: str) -> Scenario:
    if track % 10 != 3:
        return Scenario()
    if language in SCRIPT_VARIANTS:
        return Scenario("script_shift", final_share=0.6)
    if language in ORTHOGRAPHY_VARIANTS:
        return Scenario("orthography", final_share=0.6)
    return Scenario("label_mix", final_share=0.6)


def stock_evidently(reference: Reference, events: pd.DataFrame) -> float:
    """Evidently's stock report (data drift preset + embeddings drift) for one language."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift
    from evidently.presets import DataDriftPreset

    def frame(descriptors: pd.DataFrame, emb: np.ndarray, pred, conf) -> pd.DataFrame:
        out = descriptors.reset_index(drop=True).copy()
        out["prediction"] = np.asarray(pred, dtype=str)
        out["confidence"] = np.asarray(conf, dtype=np.float64)
        return pd.concat([out, pd.DataFrame(emb, columns=[f"e{i}" for i in range(emb.shape[1])])],
                         axis=1)

    emb_cols = [f"e{i}" for i in range(reference.embeddings.shape[1])]
    cur_emb = np.stack(events["embedding"].to_numpy())
    ref = frame(reference.descriptors, reference.embeddings, reference.predictions,
                reference.confidences)
    cur = frame(events[list(desc.DESCRIPTOR_COLUMNS)], cur_emb, events["prediction"],
                events["confidence"])
    numerical = list(desc.NUMERIC_DESCRIPTORS + desc.SCRIPT_COLUMNS) + ["confidence"]
    definition = DataDefinition(numerical_columns=numerical + emb_cols,
                                categorical_columns=[desc.DOMINANT, "prediction"],
                                embeddings={"emb": emb_cols})
    started = time.perf_counter()
    report = Report([DataDriftPreset(columns=numerical + [desc.DOMINANT, "prediction"]),
                     EmbeddingsDrift(embeddings_name="emb")])
    snapshot = report.run(Dataset.from_pandas(cur, data_definition=definition),
                          Dataset.from_pandas(ref, data_definition=definition))
    with tempfile.TemporaryDirectory() as tmp:
        snapshot.save_html(str(Path(tmp) / "stock.html"))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracks", type=int, default=100)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--ref-rows", type=int, default=150)
    parser.add_argument("--encoder", choices=("minilm", "hashing"), default="minilm")
    parser.add_argument("--skip-stock", action="store_true")
    args = parser.parse_args()

    t0 = time.perf_counter()
    languages = load_manifest()["locales"]
    test = load_split("test")
    rows = pd.concat([g.sample(min(len(g), args.ref_rows), random_state=0)
                      for _, g in test.groupby("language", sort=True)]).reset_index(drop=True)
    emb = reference_embeddings(rows, args.encoder)
    t_embed = time.perf_counter() - t0

    # a stand-in champion per language: nearest centroid fitted on its own items
    heads = {lang: CentroidHead.fit(emb[mask], rows.loc[mask, "label"].tolist())
             for lang in languages
             for mask in [rows["language"].to_numpy() == lang]}
    table = dict(zip(rows["text"], emb, strict=False))
    simulator = TrafficSimulator(task=TASK, embed=lambda texts: np.stack([table[t] for t in texts]),
                                 head=heads, pool=rows, embedding_noise=0.02)

    t1 = time.perf_counter()
    per_language: dict[str, Reference] = {}
    for lang in languages:
        mask = rows["language"].to_numpy() == lang
        labels, conf = heads[lang](emb[mask])
        per_language[lang] = build_reference(TASK, lang, f"bench/{lang}",
                                             texts=rows.loc[mask, "text"].tolist(),
                                             embeddings=emb[mask], predictions=labels,
                                             confidences=conf)
    t_refs = time.perf_counter() - t1

    # tracks: (task copy, language) cycled over the shipped languages
    tracks = [(f"{TASK}-{k // len(languages)}", languages[k % len(languages)])
              for k in range(args.tracks)]
    t2 = time.perf_counter()
    traffic, references = {}, {}
    for k, (task, lang) in enumerate(tracks):
        name = f"{task}/{lang}"
        events = simulator.frame(lang, args.events, scenario_for(k, lang), seed=k)
        events["task"] = task
        traffic[name] = events
        # one Reference object per track (its task names the report folder); arrays shared
        references[name] = dataclasses.replace(per_language[lang], task=task)
    t_sim = time.perf_counter() - t2

    t3 = time.perf_counter()
    results = check_many(references, traffic, html="never")
    t_check = time.perf_counter() - t3
    warm = next((n for n, r in results.items() if r.drifted), None)
    if warm is not None:  # untimed: first Evidently HTML and first picture pay imports
        with tempfile.TemporaryDirectory() as reports:
            check_many({warm: references[warm]}, {warm: traffic[warm]}, reports_dir=reports)
    with tempfile.TemporaryDirectory() as reports:
        t4 = time.perf_counter()
        with_reports = check_many(references, traffic, reports_dir=reports, html="drifted")
        t_reports = time.perf_counter() - t4
    with tempfile.TemporaryDirectory() as reports:  # the same without projection pictures
        t5 = time.perf_counter()
        check_many(references, traffic, reports_dir=reports, html="drifted", pictures=False)
        t_no_pictures = time.perf_counter() - t5
    drifted = sorted(name for name, r in results.items() if r.drifted)
    expected = sorted(f"{t}/{lang}" for k, (t, lang) in enumerate(tracks) if k % 10 == 3)
    n_html = sum("html" in r.report_paths for r in with_reports.values())
    per_track = np.array([r.elapsed_s for r in results.values()])

    t_stock = float("nan")
    if not args.skip_stock:
        name = next(n for n in traffic if n not in drifted)
        t_stock = stock_evidently(references[name], traffic[name])

    cpus = len(os.sched_getaffinity(0))
    print(f"drift bench: {args.tracks} tracks x {args.events} events, {cpus} CPUs, "
          f"reference embeddings: {args.encoder} ({len(rows)} items, {t_embed:.1f} s)")
    print(f"{'step':58} {'seconds':>9}")
    lines = [
        ("build references (27 languages, once per key, cached)", t_refs),
        (f"simulate traffic ({args.tracks * args.events:,} events, with descriptors)", t_sim),
        (f"check all {args.tracks} tracks (JSON only)", t_check),
        (f"check all {args.tracks} tracks + JSON + HTML for {n_html} drifted", t_reports),
        ("  the same without the projection PNGs", t_no_pictures),
        ("  per track: median", float(np.median(per_track))),
        ("  per track: max", float(per_track.max())),
        ("Evidently stock Report(DataDriftPreset+EmbeddingsDrift), 1 lang", t_stock),
    ]
    for label, value in lines:
        print(f"{label:58} {value:9.2f}")
    missed = sorted(set(expected) - set(drifted))
    print(f"drifted: {len(drifted)} tracks ({len(set(drifted) & set(expected))} of the "
          f"{len(expected)} shifted, {len(set(drifted) - set(expected))} others); missed: "
          + ", ".join(f"{m} ({scenario_for(3, m.split('/')[1]).kind})" for m in missed))
    print(json.dumps({
        "tracks": args.tracks, "events_per_track": args.events, "cpus": cpus,
        "encoder": args.encoder, "check_all_s": round(t_check, 3),
        "check_all_with_reports_s": round(t_reports, 3), "html_reports": n_html,
        "check_all_with_reports_no_pictures_s": round(t_no_pictures, 3),
        "pictures_overhead_ratio": round(t_reports / t_no_pictures, 3),
        "per_track_median_s": round(float(np.median(per_track)), 4),
        "per_track_max_s": round(float(per_track.max()), 4),
        "stock_evidently_one_language_s": round(t_stock, 3),
        "build_references_s": round(t_refs, 3), "simulate_s": round(t_sim, 3),
        "drifted": len(drifted), "shifted": len(expected),
        "shifted_detected": len(set(drifted) & set(expected)),
        "false_alarms": len(set(drifted) - set(expected)), "missed": missed,
        "target_s": 60.0, "within_target": t_check <= 60.0,
    }))


if __name__ == "__main__":
    main()
