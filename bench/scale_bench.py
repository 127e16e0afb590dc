"""Scale of the controller (issue 11): many controlled tracks on PostgreSQL, the tiny model.

    python bench/scale_bench.py [--sizes 100,1000,10000] [--requalify 50]
                                [--executors inline,subprocess,ray] [--slots 2]

For each size N: a fresh PostgreSQL database with N controlled tracks of one task, each
with a champion (one real adapter trained on the tiny model for hi; the other tracks'
champions are registry rows pointing at the same content-addressed artifact: a bench
fixture, written in one transaction, since training N adapters is not what is measured).
Every track is STEADY with its drift check done, so a steady tick is pure bookkeeping.

  tick_steady        one Controller.tick() (leader lock, every track's step, the launch
                     pass) when all N are steady: median of 5
  tick_50_drifting   at N = 1,000: 50 tracks found drifting (their drift checks have run and
                     each has a queued retraining, as `_start_training` leaves it), 2
                     training slots: the tick that launches 2 and queues 48, then the
                     ticks while those train (median)
  requalify          per executor: R real languages of the CLDR data (--requalify, default
                     50; the shipped dataset has 25 besides English and hi, so for more the bench
                     builds one with extra CLDR locales from Debian's unicode-cldr-core and
                     sets XLT_DATA_DIR) drift at once, 2 training and 2 gate slots: wall
                     time from their queued retrainings until every one has passed its
                     gates (phase CANARY), ticking every 0.5 s; the longest tick meanwhile
                     is `max_tick_requalify_s` (trainings and gates are jobs: goal <= 1 s)
  drift_due          at N = 1,000: D tracks (--drift-due, default 200) with logged traffic
                     (--drift-events each) fall due for their drift check at once: the tick
                     that queues D drift jobs (`tick_200_drift_due_s`, goal <= 1 s), the
                     ticks while 2 slots work through them, and the wall time until every
                     report is written (`drift_due_all_reports_s`)

The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# subprocess workers and Ray workers import this checkout too
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])

from sqlalchemy import create_engine, select, text  # noqa: E402

from controller.data import cldr  # noqa: E402
from controller.loop.clock import ManualClock  # noqa: E402
from controller.loop.reconciler import request_retrain  # noqa: E402
from controller.policy import Policy  # noqa: E402
from controller.runtime.bootstrap import build_controller, build_operations  # noqa: E402
from controller.runtime.scheduler import Controller  # noqa: E402
from registry import migrate  # noqa: E402
from registry.schema import Adapter, Track  # noqa: E402
from registry.service import Registry  # noqa: E402
from registry.settings import load_settings  # noqa: E402

TASK = "emoji-group"
NOW = 1_800_000_000.0
PG_ADMIN = os.environ.get("XLT_TEST_PG_URL",
                          "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
OPEN_GATES = {"min_accuracy": 0.0, "min_macro_f1": 0.0, "max_ece": 1.0,
              "min_english_accuracy": 0.0, "relative_epsilon": 1.0, "fairness_floor": 0.0,
              "bootstrap_samples": 100}
# CLDR locales with full annotations beyond the shipped 27, for re-qualifying more
# languages than the shipped dataset holds (built from Debian's unicode-cldr-core)
EXTRA_LOCALES = ["it", "pt", "ko", "pl", "nl", "uk", "th", "bn", "ta", "te", "mr", "kn", "ml",
                 "fa", "el", "cs", "ro", "hu", "fi", "da", "sv", "ca", "bg", "hr", "sk", "sl",
                 "lt", "ms", "af", "ur", "ne"]


def real_languages(wanted: int, tmp: Path) -> list[str]:
    """`wanted` real languages besides English and hi. The shipped dataset has 25; for more, a
    dataset with extra CLDR locales is built under tmp and every reader (this process, the
    subprocess and Ray workers, which inherit the environment) is pointed at it."""
    from controller.data import cldr

    # English teaches; hi is the track whose adapter every bench champion shares
    have = sorted(set(cldr.load_manifest()["per_language"]) - {"en", "hi"})
    if wanted <= len(have):
        return have[:wanted]
    extra = EXTRA_LOCALES[:wanted - len(have)]
    if len(have) + len(extra) < wanted:
        raise SystemExit(f"--requalify {wanted}: at most {len(have) + len(EXTRA_LOCALES)}")
    if not cldr.DEBIAN_ANNOTATIONS.is_dir():
        raise SystemExit(f"--requalify {wanted} needs more locales than the shipped "
                         f"{len(have)}: apt-get install unicode-cldr-core unicode-data")
    out = tmp / "cldr-extended"
    cldr.build_cldr(out_dir=out, locales=[*cldr.DEFAULT_LOCALES, *extra])
    os.environ[cldr.DATA_ENV] = str(out)
    return have + extra


def policy(languages: list[str], executor: str, slots: int,
           check_interval_s: float = 10**9) -> Policy:
    return Policy.model_validate({
        "base": "tiny@1", "check_interval_s": check_interval_s, "cooldown_s": 0,
        "executor": executor, "tracks": [{"task": TASK, "language": lang} for lang in languages],
        "gates": OPEN_GATES,
        "training": {"epochs": 1, "device": "cpu", "teacher": "en", "max_concurrent": slots},
        "jobs": {"gate": {"max_concurrent": slots}, "drift": {"max_concurrent": slots}},
    })


class Database:
    def __init__(self) -> None:
        self.name = f"xlt_scale_{uuid.uuid4().hex[:8]}"
        self.admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        self.url = PG_ADMIN.rsplit("/", 1)[0] + f"/{self.name}"
        migrate.upgrade(self.url)

    def drop(self) -> None:
        from registry.db import dispose_engines

        dispose_engines()
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin.dispose()


def build(db: Database, home: Path, tiny: Path, n: int, real: list[str]) -> Registry:
    """N tracks with champions: hi trained for real, the others share its artifact."""
    from controller.training.pipeline import train_adapter

    reg = Registry(load_settings(home=home, database_url=db.url), actor="bench")
    reg.init()
    cldr.register_task(reg)  # the task's data, as a team registers its own
    reg.register_encoder("tiny", "1", tiny)
    reg.ensure_track(TASK, "hi", "tiny@1")
    trained = train_adapter(reg, TASK, "hi", teacher="en", epochs=1, device="cpu",
                            limit_pairs=64)
    reg.promote(TASK, "hi", trained["version"], reason="bench champion")
    synthetic = [f"hi-x-t{i:05d}" for i in range(n - 1 - len(real))]
    with reg.unit_of_work() as uow:
        s = uow.session
        hi = s.scalars(select(Adapter).where(Adapter.language == "hi")).one()
        track = s.scalars(select(Track).where(Track.language == "hi")).one()
        track.phase_data = {"last_check_at": NOW}
        fields = {c: getattr(hi, c) for c in ("task", "base_encoder_id", "base_fingerprint",
                                              "kind", "config", "teacher_language",
                                              "dataset_ids", "metrics",
                                              "artifact_sha256", "created_by")}
        adapters = [Adapter(**fields, language=lang, version=1, status="champion",
                            hyperparams={**hi.hyperparams, "data_languages": [lang]})
                    for lang in real + synthetic]
        s.add_all(adapters)
        s.flush()
        s.add_all([Track(task=TASK, language=a.language, base_encoder_id=hi.base_encoder_id,
                         champion_id=a.id, revision=1, phase="STEADY",
                         phase_data={"last_check_at": NOW}) for a in adapters])
    return reg


def controller(reg: Registry, languages: list[str], executor: str, slots: int,
               check_interval_s: float = 10**9) -> Controller:
    pol = policy(languages, executor, slots, check_interval_s)
    clock = ManualClock(NOW + 60)
    ops = build_operations(reg, pol, clock=clock)
    ctl = build_controller(reg, pol, ops=ops, clock=clock, report=lambda line: None)
    return ctl


def row(rows: list[tuple[str, float, str]], what: str, seconds: float, note: str) -> None:
    """Record a table row and say it at once (a long run keeps what it measured)."""
    rows.append((what, seconds, note))
    print(f"# {what}: {seconds:.3f} s ({note})", file=sys.stderr, flush=True)


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def drift(reg: Registry, pol: Policy, languages: list[str]) -> None:
    """The state a drift check leaves: a queued retraining per drifting track."""
    for lang in languages:
        request_retrain(reg, pol, TASK, lang, "bench: drift found", actor="controller")


def phases(reg: Registry, languages: list[str]) -> dict[str, str]:
    with reg.reading() as s:
        rows = s.execute(select(Track.language, Track.phase)
                         .where(Track.language.in_(languages))).all()
    return dict(rows)  # type: ignore[arg-type]


def requalify(ctl: Controller, reg: Registry, languages: list[str],
              limit_s: float) -> tuple[float, list[float]]:
    """Seconds until every language passed its gates, and each tick's seconds meanwhile
    (a tick that finds a finished training runs that track's gates)."""
    t0 = time.perf_counter()
    ticks: list[float] = []
    while time.perf_counter() - t0 < limit_s:
        ticks.append(timed(ctl.tick)[0])
        if all(p == "CANARY" for p in phases(reg, languages).values()):
            return time.perf_counter() - t0, ticks
        time.sleep(0.5)
    raise SystemExit(f"requalify: not done in {limit_s:g} s: {phases(reg, languages)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--drifting", type=int, default=50)
    ap.add_argument("--requalify", type=int, default=50)
    ap.add_argument("--executors", default="inline,subprocess,ray")
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--drift-at", type=int, default=1000,
                    help="the size at which drifting and re-qualifying are measured")
    ap.add_argument("--limit-s", type=float, default=1800)
    ap.add_argument("--drift-due", type=int, default=200,
                    help="tracks whose drift checks fall due at once (0: not measured)")
    ap.add_argument("--drift-events", type=int, default=120,
                    help="logged events in each of those tracks' windows")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    from tests.support.tiny import build_tiny_bert

    out: dict[str, Any] = {"cores": os.cpu_count(), "loadavg_start": os.getloadavg()[0]}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tiny = build_tiny_bert(Path(tmp) / "tiny")
        real = real_languages(args.requalify, Path(tmp))
        for n in [int(x) for x in args.sizes.split(",")]:
            db = Database()
            try:
                home = Path(tmp) / f"home-{n}"
                t_build, reg = timed(lambda: build(db, home, tiny, n, real))  # noqa: B023
                with reg.reading() as s:
                    languages = list(s.scalars(select(Track.language).order_by(Track.id)))
                ctl = controller(reg, languages, "inline", args.slots)
                ticks = [timed(ctl.tick)[0] for _ in range(6)][1:]  # the first warms caches
                steady = statistics.median(ticks)
                out[f"tick_steady_{n}_s"] = round(steady, 4)
                row(rows, f"tick, {n} steady tracks", steady, f"setup {t_build:.0f} s")
                if n == args.drift_at:
                    synth = [lang for lang in languages if "-x-" in lang]
                    drift(reg, ctl.policy, synth[:args.drifting])
                    # hold the launched trainings (they have no data to train on anyway):
                    # these ticks launch and poll, they must not run a gate evaluation
                    gate = threading.Event()
                    ctl.reconciler.executor.work = _held(ctl.reconciler.executor.work, gate)
                    first, lines = timed(ctl.tick)
                    later = [timed(ctl.tick)[0] for _ in range(5)]
                    gate.set()
                    launched = sum(" launched (" in line for line in lines)
                    out["tick_50_drifting_s"] = round(max(first, *later), 4)
                    out["drifting"] = args.drifting
                    out["tick_50_drifting_first_s"] = round(first, 4)
                    row(rows, f"tick, {args.drifting} drifting of {n} (launch {launched})",
                        first, f"then {statistics.median(later):.3f} s polling")
                    ctl.reconciler.executor.wait(args.limit_s)
                    # the synthetic tracks' jobs cannot train (no data): take them off
                    _settle_synthetic(reg, ctl, synth[:args.drifting])
                    ctl.leader.release()
                    for executor in args.executors.split(","):
                        if executor == "ray":
                            _start_ray()
                        ctl_x = controller(reg, languages, executor, args.slots)
                        drift(reg, ctl_x.policy, real)
                        seconds, during = requalify(ctl_x, reg, real, args.limit_s)
                        out.setdefault(f"requalify_{len(real)}_s", {})[executor] = \
                            round(seconds, 1)
                        out.setdefault("tick_while_requalifying_s", {})[executor] = {
                            "median": round(statistics.median(during), 3),
                            "max": round(max(during), 3)}
                        out.setdefault("max_tick_requalify_s", {})[executor] = \
                            round(max(during), 3)
                        row(rows, f"re-qualify {len(real)} ({executor}, {args.slots} slots)",
                            seconds, f"queued -> gates passed; ticks meanwhile median "
                            f"{statistics.median(during):.3f} s, max {max(during):.3f} s")
                        ctl_x.leader.release()
                        _reset(reg, real)
                    if args.drift_due:
                        drift_due(reg, languages, real, args, out, rows)
                ctl.leader.release()
            finally:
                db.drop()
    out["requalify_languages"] = len(real)
    out["loadavg_end"] = os.getloadavg()[0]
    if "tick_steady_100_s" in out and "tick_steady_1000_s" in out:
        out["tick_growth_100_to_1000"] = round(out["tick_steady_1000_s"]
                                               / out["tick_steady_100_s"], 2)
    if "tick_steady_10000_s" in out and "tick_steady_1000_s" in out:
        out["tick_growth_1000_to_10000"] = round(out["tick_steady_10000_s"]
                                                 / out["tick_steady_1000_s"], 2)
    print(f"{'what':48} {'seconds':>9}  note")
    for what, seconds, note in rows:
        print(f"{what:48} {seconds:9.3f}  {note}")
    print(json.dumps(out))


def drift_due(reg: Registry, languages: list[str], real: list[str], args: Any,
              out: dict[str, Any], rows: list[tuple[str, float, str]]) -> None:
    """D tracks with traffic fall due at once: the tick that queues their drift jobs, the
    ticks meanwhile, and the wall time until every report is written."""
    from controller.data.access import TaskData
    from registry.schema import DriftReport

    interval = 3600.0
    due = [lang for lang in languages if lang not in real][:args.drift_due]
    from controller.ops.model_cache import ModelCache

    texts = TaskData(reg, TASK).labelled("dev", ["hi"])["text"].tolist()
    t_setup = time.perf_counter()
    # the drift embedding as serving stores it (float32 bytes), so checks do all their work
    vectors = [v.astype("float32").tobytes()
               for v in ModelCache(reg, "cpu").embed("tiny@1", texts)]
    with reg.unit_of_work() as uow:
        for track in uow.session.scalars(select(Track).where(Track.language.in_(due))):
            track.phase_data = {"last_check_at": NOW - 2 * interval}  # due at NOW + 60
        for a in uow.session.scalars(select(Adapter).where(Adapter.language.in_(due))):
            a.hyperparams = {**a.hyperparams, "data_languages": ["hi"]}  # its reference
    from datetime import UTC, datetime

    at = datetime.fromtimestamp(NOW - 600, UTC)
    events = [{"task": TASK, "language": lang, "adapter_version": 1,
               "text": texts[i % len(texts)], "embedding": vectors[i % len(texts)],
               "prediction": "smileys", "confidence": 0.5, "routing_key": f"k{i}", "at": at}
              for lang in due for i in range(args.drift_events)]
    for i in range(0, len(events), 5000):
        reg.log_inference_events(events[i:i + 5000])
    t_setup = time.perf_counter() - t_setup
    ctl = controller(reg, languages, "inline", args.slots, check_interval_s=interval)
    first, _ = timed(ctl.tick)
    t0 = time.perf_counter()
    during: list[float] = []
    with reg.reading() as s:
        before = s.query(DriftReport).count()
    while time.perf_counter() - t0 < args.limit_s:
        time.sleep(0.5)
        during.append(timed(ctl.tick)[0])
        with reg.reading() as s:
            written = s.query(DriftReport).count() - before
        if written >= len(due):
            break
    all_s = time.perf_counter() - t0
    ctl.reconciler.executor.wait(600)
    ctl.leader.release()
    out["tick_200_drift_due_s"] = round(first, 4)
    out["drift_due"] = len(due)
    out["drift_due_all_reports_s"] = round(all_s, 1)
    out["drift_due_reports_written"] = written
    out["tick_while_drift_checks_s"] = {"median": round(statistics.median(during), 3),
                                        "max": round(max(during), 3)}
    row(rows, f"tick, {len(due)} drift checks due of {len(languages)}", first,
        f"queues {len(due)} drift jobs; traffic setup {t_setup:.0f} s")
    row(rows, f"all {len(due)} drift reports written ({args.slots} slots)", all_s,
        f"{written} reports; ticks meanwhile median {statistics.median(during):.3f} s, "
        f"max {max(during):.3f} s")


def _held(train: Any, gate: threading.Event) -> Any:
    def held(*args: Any) -> Any:
        gate.wait(3600)
        return train(*args)
    return held


def _start_ray() -> None:
    """A local Ray cluster on this machine's 2 cores (RAY_ADDRESS: that cluster)."""
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        # "local": a new cluster of our own, never one another process started here
        ray.init(address=address or "local", namespace="xlt", log_to_driver=False,
                 include_dashboard=False, **({} if address else {"num_cpus": 2}))


def _settle_synthetic(reg: Registry, ctl: Controller, languages: list[str]) -> None:
    """Back to STEADY (a person's abort would do the same): their jobs failed (no data)."""
    ctl.reconciler.executor.wait(600)
    _reset(reg, languages)


def _reset(reg: Registry, languages: list[str]) -> None:
    from registry.schema import Job

    with reg.unit_of_work() as uow:
        s = uow.session
        for track in s.scalars(select(Track).where(Track.language.in_(languages))):
            track.phase, track.phase_data = "STEADY", {"last_check_at": NOW}
            track.canary_id, track.canary_weight = None, 0.0
        for job in s.scalars(select(Job).where(Job.language.in_(languages),
                                               Job.status.in_(("queued", "running")))):
            job.status = "failed"


if __name__ == "__main__":
    main()
