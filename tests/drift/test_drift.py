"""Per-language drift monitoring (controller.drift) on the shipped CLDR emoji data, with real
Evidently and the real base encoder (all-MiniLM-L6-v2): every distinct text of the dev and
test splits of the languages under test is embedded once per session (~8k texts).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from controller.data.cldr import load_split
from controller.drift.check import check_language, check_many, window_from_events
from controller.drift.reference import (
    DiskReferenceStore,
    MemoryReferenceStore,
    Reference,
    build_reference,
    get_or_build,
)
from controller.drift.signals import DriftThresholds
from controller.drift.simulator import Scenario, TrafficSimulator
from controller.drift.standins import KNNHead
from controller.encoders.text import TextEncoder, demo_base_dir
from controller.traffic import descriptors as desc

TASK = "emoji-group"
TRACKS = ("en", "sw", "hi", "sr", "yo", "pa")
VARIANTS = ("hi-Latn", "sr-Latn", "yo-BJ", "pa-Arab")
N_EVENTS = 2000


class CachedEncoder:
    """The real MiniLM, embedding each distinct text once (the world re-embeds subsets)."""

    def __init__(self) -> None:
        self.model = TextEncoder(demo_base_dir(), device="cpu")
        self.cache: dict[str, np.ndarray] = {}

    def embed(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        # ties in length ordered by text: with set order (PYTHONHASHSEED) the batches, and
        # so the padded embeddings, change run to run, and near-ties of the KNN head flip
        missing = sorted({t for t in texts if t not in self.cache}, key=lambda t: (len(t), t))
        if missing:
            for text, vec in zip(missing, self.model.embed(missing, batch_size), strict=True):
                self.cache[text] = vec
        return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, 384))


class World:
    """References (test split) and a simulator drawing from the dev split, per track."""

    def __init__(self) -> None:
        self.encoder = CachedEncoder()
        test = load_split("test", TRACKS + VARIANTS)
        dev = load_split("dev", TRACKS + VARIANTS)
        self.heads: dict[str, KNNHead] = {}
        self.references: dict[str, Reference] = {}
        for lang in TRACKS + VARIANTS:
            rows = pd.concat([dev[dev.language == lang], test[test.language == lang]])
            # the stand-in champion of the track: accurate on its own language's items
            self.heads[lang] = KNNHead(self.encoder.embed(rows.text.tolist()),
                                       rows.label.tolist())
            ref = test[test.language == lang]
            emb = self.encoder.embed(ref.text.tolist())
            labels, conf = self.heads[lang](emb)
            self.references[lang] = build_reference(
                TASK, lang, f"cldr-emoji/{lang}/test@41.1;base=minilm", texts=ref.text.tolist(),
                embeddings=emb, predictions=labels, confidences=conf)
        self.simulator = TrafficSimulator(task=TASK, embed=self.encoder.embed, head=self.heads,
                                          pool=dev, feedback_rate=0.1)

    def traffic(self, seed: int, **shifted: Scenario) -> dict[str, pd.DataFrame]:
        scenarios = {lang: shifted.get(lang.replace("-", "_"), Scenario()) for lang in TRACKS}
        return self.simulator.traffic(scenarios, N_EVENTS, seed=seed)


@pytest.fixture(scope="module")
def world() -> World:
    return World()


# -- descriptors ------------------------------------------------------------------------------
def test_descriptors_cover_scripts_and_orthographies() -> None:
    texts = ["дугме са словом б", "B बटन (रक्त प्रकार)", "ਖੂਨ ਕਿਸਮ", "خون دی قسم", "ሰላም ዓለም",
             "ココ 日本語", "Bọ́tìnì", "Bɔ́tìnì", "", "123 !!", "o\u0323"]
    frame = desc.describe(texts)
    assert frame[desc.DOMINANT].tolist() == [
        "cyrillic", "devanagari", "gurmukhi", "arabic", "ethiopic", "han", "latin", "latin",
        "none", "none", "latin"]
    assert frame["word_count"].tolist()[:3] == [4.0, 4.0, 2.0]
    assert frame.loc[1, "script_latin"] == pytest.approx(1 / 14)  # "B" beside 13 Devanagari
    # ẹ/ọ (extended Latin) and ɛ/ɔ (IPA letters) land in different buckets
    assert frame.loc[6, "script_latin_ext"] > 0 and frame.loc[6, "script_latin_ipa"] == 0
    assert frame.loc[7, "script_latin_ipa"] > 0
    # a decomposed o + U+0323 is normalised (NFC) to the precomposed ọ
    assert frame.loc[10, "script_latin_ext"] == 1.0 and frame.loc[10, "mark_share"] == 0.0
    assert frame.loc[8, "char_length"] == 0 and frame.loc[9, "non_letter_share"] == 1.0
    one = desc.describe_one("dugme sa slovom")
    assert "script_cyrillic" not in one  # zero shares are left out of stored rows
    back = desc.from_records([one, desc.describe_one("дугме")])
    assert back[desc.DOMINANT].tolist() == ["latin", "cyrillic"]
    assert list(back.columns) == list(desc.DESCRIPTOR_COLUMNS)


def test_descriptors_are_fast() -> None:
    texts = load_split("dev").text.tolist() * 10
    desc.class_table()
    started = time.perf_counter()
    frame = desc.describe(texts)
    elapsed = time.perf_counter() - started
    print(f"describe: {len(texts)} texts in {elapsed:.2f} s")
    assert len(frame) == len(texts) and elapsed < 10


# -- the check --------------------------------------------------------------------------------
def test_stable_traffic_raises_no_alarm_over_20_seeds(world: World) -> None:
    alarms, checks, per_signal = 0, 0, dict.fromkeys(
        ("embedding", "descriptors", "script_mix", "prediction", "confidence"), 0)
    worst: dict[str, float] = {}
    for seed in range(20):
        results = check_many(world.references, world.traffic(seed))
        for lang, result in results.items():
            checks += 1
            alarms += result.drifted
            for name, sig in result.signals.items():
                per_signal[name] += sig.drifted
                worst[name] = max(worst.get(name, 0.0), sig.score / sig.threshold)
            assert result.verdict in ("stable", "drift"), lang
    print(f"false-alarm rate: {alarms}/{checks} = {alarms / checks:.3f}; "
          f"per signal {per_signal}; worst score/threshold {worst}")
    assert alarms == 0


SHIFTS = {
    "hi->hi-Latn": ("hi", Scenario("script_shift", final_share=0.6), "script_mix"),
    "sr->sr-Latn": ("sr", Scenario("script_shift", final_share=0.6), "script_mix"),
    "pa->pa-Arab": ("pa", Scenario("script_shift", final_share=0.6), "script_mix"),
    "yo->yo-BJ": ("yo", Scenario("orthography", final_share=0.6), "script_mix"),
    "label mix sw": ("sw", Scenario("label_mix", final_share=0.6,
                                    labels=("Food & Drink",)), "prediction"),
}


@pytest.mark.parametrize("case", list(SHIFTS))
def test_shift_flags_that_language_and_no_other(world: World, case: str) -> None:
    language, scenario, expected_signal = SHIFTS[case]
    results = check_many(world.references, world.traffic(7, **{language: scenario}))
    flagged = sorted(lang for lang, r in results.items() if r.drifted)
    print(case, {lang: r.drifted_signals for lang, r in results.items()})
    assert flagged == [language]
    assert expected_signal in results[language].drifted_signals


def test_script_shift_text_really_is_the_variant(world: World) -> None:
    events = world.simulator.frame("hi", 1000, Scenario("script_shift", final_share=0.6), seed=1)
    assert set(events["language"]) == {"hi"}  # the track language, not the text's
    first, last = events.iloc[:300], events.iloc[-300:]
    assert (first["source_language"] == "hi-Latn").mean() < 0.15
    assert (last["source_language"] == "hi-Latn").mean() > 0.4
    assert events["at"].is_monotonic_increasing
    again = world.simulator.frame("hi", 1000, Scenario("script_shift", final_share=0.6), seed=1)
    pd.testing.assert_frame_equal(events.drop(columns="embedding"),
                                  again.drop(columns="embedding"))


def test_insufficient_data(world: World) -> None:
    few = world.simulator.frame("sw", 50, seed=0)
    result = check_language(world.references["sw"], few)
    assert result.verdict == "insufficient_data" and result.signals == {}
    small_ref = world.references["hi-Latn"]  # 87 test rows < min_reference
    result = check_language(small_ref, world.simulator.frame("hi-Latn", 500, seed=0))
    assert result.verdict == "insufficient_data"
    assert check_language(small_ref, world.simulator.frame("hi-Latn", 500, seed=0),
                          DriftThresholds(min_reference=50)).verdict == "stable"


def test_logged_event_dicts_and_stored_embeddings(world: World) -> None:
    """The shapes events have when logged (descriptors dict, float32 bytes) check the same."""
    events = world.simulator.events("yo", 600, Scenario("orthography", final_share=1.0), seed=3)
    assert {"task", "language", "routing_key", "text", "embedding", "prediction",
            "confidence", "feedback_label", "latency_ms", "at", "descriptors"} <= set(events[0])
    as_logged = [{**e, "text": None,
                  "embedding": np.asarray(e["embedding"], np.float32).tobytes()}
                 for e in events]
    window = window_from_events(as_logged)
    assert window.embeddings is not None and window.embeddings.shape == (600, 384)
    direct = check_language(world.references["yo"], events)
    logged = check_language(world.references["yo"], as_logged)
    assert direct.verdict == logged.verdict == "drift"
    assert direct.signals["script_mix"].score == pytest.approx(logged.signals["script_mix"].score)


def test_reports_written_html_only_for_drifted(world: World, tmp_path: Path) -> None:
    traffic = world.traffic(11, yo=Scenario("orthography", final_share=0.6))
    traffic = {k: traffic[k] for k in ("yo", "sw")}
    results = check_many(world.references, traffic, reports_dir=tmp_path, html="drifted")
    assert results["yo"].drifted and not results["sw"].drifted
    assert set(results["yo"].report_paths) == {"json", "html", "projection"}
    assert set(results["sw"].report_paths) == {"json"}
    html = Path(results["yo"].report_paths["html"])
    assert html.parent == tmp_path / TASK / "yo" and html.stat().st_size > 10_000
    # the 2-D projection picture: a PNG beside the report and inside the HTML page
    png = Path(results["yo"].report_paths["projection"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert 'src="data:image/png;base64,' in html.read_text(encoding="utf-8")
    import os
    import shutil

    if os.environ.get("XLT_KEEP_PICTURES"):  # to look at it: XLT_KEEP_PICTURES=dir
        shutil.copy(png, Path(os.environ["XLT_KEEP_PICTURES"]) / "drift-projection-yo.png")
    stored = json.loads(Path(results["yo"].report_paths["json"]).read_text())
    assert stored["verdict"] == "drift" and "script_mix" in stored["drifted_signals"]
    assert stored["signals"]["script_mix"]["threshold"] == 0.06
    json.dumps(results["sw"].to_dict(), allow_nan=False)  # strict JSON
    kwargs = results["yo"].registry_kwargs()
    assert kwargs["verdict"] == "drift" and kwargs["window_start"] is not None


# -- references -----------------------------------------------------------------------------
def test_reference_cache_round_trip(world: World, tmp_path: Path) -> None:
    from registry.artifacts import ArtifactStore

    ref = world.references["sr"]
    store = DiskReferenceStore(tmp_path / "refs")
    store.put(ref)
    loaded = DiskReferenceStore(tmp_path / "refs").get(TASK, "sr", ref.key)
    assert loaded is not None and loaded.n == ref.n
    np.testing.assert_array_equal(loaded.embeddings, ref.embeddings)
    assert list(loaded.predictions) == list(ref.predictions)
    pd.testing.assert_frame_equal(loaded.descriptors, ref.descriptors)
    assert loaded.noise_scale == pytest.approx(ref.noise_scale)
    events = world.simulator.frame("sr", 500, seed=2)
    assert (check_language(loaded, events).to_dict()["signals"]
            == check_language(ref, events).to_dict()["signals"])
    # the file is what the registry's artifact store takes (safetensors only)
    sha = ArtifactStore(tmp_path / "artifacts").put_file(store.path(TASK, "sr", ref.key))
    assert len(sha) == 64
    built = []
    memory = MemoryReferenceStore()
    for _ in range(2):
        get_or_build(memory, TASK, "sr", ref.key, lambda: built.append(1) or ref)
    assert built == [1]  # built once, then served from the cache


# -- the real encoder -------------------------------------------------------------------------
def test_real_minilm_embeddings_see_the_orthography_change() -> None:
    """Embedding signal alone, on all-MiniLM-L6-v2 (offline), short names only to stay cheap."""
    import torch

    from controller.encoders.text import TextEncoder, demo_base_dir

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a contended 2-core box one thread is ~3x faster
    try:
        encoder = TextEncoder(demo_base_dir(), device="cpu")
        ref_rows = load_split("test", ["yo"]).query("kind == 'name'")
        pool = load_split("dev", ["yo", "yo-BJ"]).query("kind == 'name'")
        reference = build_reference(TASK, "yo", "minilm", texts=ref_rows.text.tolist(),
                                    embeddings=encoder.embed(ref_rows.text.tolist()))
        sim = TrafficSimulator(task=TASK, embed=encoder.embed, pool=pool)
        only_embedding = DriftThresholds(disabled=("descriptors", "script_mix"))
        stable = check_language(reference, sim.frame("yo", 1000, seed=0), only_embedding)
        moved = check_language(reference, sim.frame(
            "yo", 1000, Scenario("orthography", final_share=1.0), seed=0), only_embedding)
    finally:
        torch.set_num_threads(threads)
    print("minilm embedding score: stable", round(stable.signals["embedding"].score, 3),
          "orthography", round(moved.signals["embedding"].score, 3))
    assert stable.verdict == "stable" and moved.verdict == "drift"
    assert moved.drifted_signals == ["embedding"]


# -- through the registry ---------------------------------------------------------------------
def test_events_reports_and_references_through_the_registry(world: World, registry,
                                                             tmp_path: Path) -> None:
    from datetime import timedelta

    from controller.drift.store import RegistryReferenceStore, check_from_registry
    from controller.traffic.log import frame_to_events, log_events, read_window
    from registry.schema import DriftReport, ReferenceCache

    events = world.simulator.frame("sr", 400, Scenario("script_shift", final_share=1.0), seed=5)
    assert log_events(registry, frame_to_events(events), keep_text=False, batch_size=150) == 400
    log_events(registry, frame_to_events(world.simulator.frame("yo", 50, seed=5)))

    window = read_window(registry, TASK, "sr")
    assert len(window) == 400 and window["text"].isna().all()
    assert window["at"].is_monotonic_increasing
    late = read_window(registry, TASK, "sr", start=events["at"].iloc[200].to_pydatetime(),
                       limit=100)
    assert len(late) == 100 and late["at"].min() >= events["at"].iloc[200]

    refs = RegistryReferenceStore(registry)
    refs.put(world.references["sr"])
    loaded = RegistryReferenceStore(registry).get(TASK, "sr", world.references["sr"].key)
    assert loaded is not None
    np.testing.assert_array_equal(loaded.embeddings, world.references["sr"].embeddings)

    result = check_from_registry(registry, loaded, reports_dir=tmp_path,
                                 thresholds=DriftThresholds(min_events=100),
                                 end=events["at"].iloc[-1].to_pydatetime() + timedelta(1))
    assert result.verdict == "drift" and "script_mix" in result.drifted_signals
    direct = check_language(world.references["sr"], events, DriftThresholds(min_events=100))
    assert result.signals["script_mix"].score == pytest.approx(direct.signals["script_mix"].score)
    assert result.signals["embedding"].score == pytest.approx(direct.signals["embedding"].score,
                                                              rel=1e-5)
    with registry.reading() as s:
        report = s.query(DriftReport).one()
        assert report.verdict == "drift" and report.signals["script_mix"]["drifted"]
        assert Path(report.report_paths["html"]).is_file()
        assert s.query(ReferenceCache).one().stats["n"] == world.references["sr"].n
