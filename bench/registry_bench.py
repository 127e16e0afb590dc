"""resolve() latency on SQLite and PostgreSQL, uncached and cached, against MLflow's
get_model_version_by_alias on the same PostgreSQL server, all measured in this run.

Also: how long a cached resolver takes to see a promotion made by another process.
Prints a table; the last line is one JSON object of the figures.

    python bench/registry_bench.py [--calls 3000] [--pg postgresql://postgres@127.0.0.1/postgres]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

# the loadable test adapter (tests.support.tiny) is imported from the checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from safetensors.numpy import save_file
from sqlalchemy import create_engine, text

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

TASK = "emoji-group"
LANGS = ["sw", "yo", "ha", "ig", "zu", "xh", "so", "am", "hi", "sr", "pa", "de", "fr", "es",
         "ru", "tr", "id", "fil", "ar", "vi"]


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    us = sorted(s / 1000 for s in samples_ns)
    return {"median_us": round(statistics.median(us), 2),
            "p99_us": round(us[min(len(us) - 1, int(len(us) * 0.99))], 2)}


def timed(fn: Callable[[int], object], calls: int, warmup: int = 200) -> dict[str, float]:
    for i in range(warmup):
        fn(i)
    samples = []
    for i in range(calls):
        t0 = time.perf_counter_ns()
        fn(i)
        samples.append(time.perf_counter_ns() - t0)
    return percentiles(samples)


def populate(reg, workdir: Path) -> None:
    from controller.encoders.text import demo_base_dir
    from tests.support.tiny import adapter_config, adapter_tensors

    reg.init()
    enc = reg.register_encoder("minilm", "1", demo_base_dir())
    rng = np.random.default_rng(0)
    for lang in LANGS:
        for v in (1, 2):
            f = workdir / f"{lang}-{v}.safetensors"
            # a loadable adapter on MiniLM (384 wide, 6 layers): register proves it
            meta = {"format": 1, "config": adapter_config(hidden=384),
                    "base_fingerprint": enc.fingerprint}
            save_file(adapter_tensors(rng, hidden=384, layers=6), str(f),
                      metadata={"xlt": json.dumps(meta)})
            reg.register_adapter(task=TASK, language=lang, base="minilm@1", weights=f)
        reg.promote(TASK, lang, 1)
        reg.start_canary(TASK, lang, 2, 10)


def _promote_in_other_process(url: str, home: str) -> None:
    from registry.service import Registry
    from registry.settings import load_settings

    reg = Registry(load_settings(home=home, database_url=url), actor="bench-other")
    reg.promote(TASK, "sw", 2)


def staleness(reg) -> float:
    """Seconds from another process's committed promotion until the cache serves it."""
    cached = reg.cached_resolver(ttl=0.5)
    assert cached.resolve(TASK, "sw", "k").version in (1, 2)
    proc = mp.get_context("spawn").Process(target=_promote_in_other_process,
                                           args=(reg.db.url, str(reg.settings.home)))
    proc.start()
    proc.join()
    committed = time.monotonic()
    while True:
        r = cached.resolve(TASK, "sw", "k")
        if r.role == "champion" and r.version == 2:
            return time.monotonic() - committed
        time.sleep(0.001)


def bench_registry(url: str, workdir: Path, calls: int) -> dict[str, dict[str, float] | float]:
    from registry.service import Registry
    from registry.settings import load_settings

    reg = Registry(load_settings(home=workdir / "home", database_url=url), actor="bench")
    populate(reg, workdir)
    keys = [f"user-{i}" for i in range(calls * 10 + 500)]
    plain = timed(lambda i: reg.resolve(TASK, LANGS[i % len(LANGS)], keys[i]), calls)
    cached_resolver = reg.cached_resolver(ttl=0.5)
    cached = timed(lambda i: cached_resolver.resolve(TASK, LANGS[i % len(LANGS)], keys[i]),
                   calls * 10)
    return {"resolve": plain, "cached": cached, "staleness_s": round(staleness(reg), 3)}


def bench_mlflow(pg_url: str, calls: int) -> dict[str, float]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=pg_url, registry_uri=pg_url)
    name = f"xlt.{TASK}.sw"
    client.create_registered_model(name)
    for _ in range(2):
        mv = client.create_model_version(name, source="file:///tmp/none", run_id=None)
    client.set_registered_model_alias(name, "champion", mv.version)
    return timed(lambda i: client.get_model_version_by_alias(name, "champion"), calls,
                 warmup=50)


def create_pg_db(admin_url: str, prefix: str) -> tuple[str, Callable[[], None]]:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        from registry.db import dispose_engines

        dispose_engines()
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    return admin_url.rsplit("/", 1)[0] + f"/{name}", drop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--pg", default=os.environ.get(
        "XLT_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    args = ap.parse_args()

    figures: dict[str, object] = {"calls": args.calls, "tracks": len(LANGS)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "sqlite").mkdir()
        sqlite = bench_registry(f"sqlite:///{work / 'sqlite' / 'registry.db'}", work / "sqlite",
                                args.calls)
        pg_url, drop_pg = create_pg_db(args.pg, "xlt_bench")
        ml_url, drop_ml = create_pg_db(args.pg, "xlt_bench_mlflow")
        try:
            (work / "pg").mkdir()
            pg = bench_registry(pg_url, work / "pg", args.calls)
            mlflow_direct = bench_mlflow(ml_url.replace("+psycopg", "+psycopg"), args.calls)
        finally:
            drop_pg()
            drop_ml()
    figures.update({
        "sqlite_resolve": sqlite["resolve"], "sqlite_cached": sqlite["cached"],
        "sqlite_cache_staleness_s": sqlite["staleness_s"],
        "pg_resolve": pg["resolve"], "pg_cached": pg["cached"],
        "pg_cache_staleness_s": pg["staleness_s"],
        "mlflow_get_model_version_by_alias_pg": mlflow_direct,
    })
    pg_med = pg["resolve"]["median_us"]  # type: ignore[index]
    figures["ratio_mlflow_over_pg_resolve"] = round(mlflow_direct["median_us"] / pg_med, 1)

    rows = [
        ("xlt resolve, SQLite, no cache", sqlite["resolve"]),
        ("xlt resolve, SQLite, cached", sqlite["cached"]),
        ("xlt resolve, PostgreSQL, no cache", pg["resolve"]),
        ("xlt resolve, PostgreSQL, cached", pg["cached"]),
        ("MLflow get_model_version_by_alias, PostgreSQL (baseline)", mlflow_direct),
    ]
    print(f"{'what':58} {'median µs':>10} {'p99 µs':>10}")
    for label, f in rows:
        print(f"{label:58} {f['median_us']:>10.1f} {f['p99_us']:>10.1f}")  # type: ignore[index]
    print(f"cache sees another process's promotion after: SQLite {sqlite['staleness_s']} s, "
          f"PostgreSQL {pg['staleness_s']} s (ttl 0.5 s)")
    print(f"MLflow / xlt resolve on PostgreSQL (median): "
          f"{figures['ratio_mlflow_over_pg_resolve']}x")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
