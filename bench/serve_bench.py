"""Benchmark of `xlt serve` through its real HTTP server against the raw forward pass of the
served model and `mlflow models serve` of the same champion, in ONE run (every ratio comes
from the same run): requests of 1 and 32 texts, spread over 8 languages (mixed) or all in
one language (single), sent by concurrent clients; throughput and p50/p99 latency, and
/healthz latency polled during the flood. Per base (--base minilm,me5-small by default):

- raw: the champion's model merged (LoRA folded in), tokenise + forward + head in-process,
  batch 1 and 32, no HTTP, on one thread and on one thread per core at once (`raw xN`: the
  machine's limit, which `xlt_over_raw_32` is measured against);
- xlt with as many clients as cores (`batched Ncl`: latency when not flooded, which
  `p99_1_over_raw_forward_1` is measured on) and with `--no-embeddings` (what logging the
  drift embedding costs: `drift_embedding_cost_32`);
- mlflow: `mlflow models serve --env-manager local` of the champion's xlt pyfunc, logged
  into a temporary MLflow store (sqlite);

and, with --backends, three ways of running the adapters in `xlt serve`:

- batched (the product): one forward pass per batch, per-row LoRA deltas over one base;
- merged: one merged model per language, one pass per language in a batch;
- peft: one PeftModel, `set_adapter` per language in a batch.

Memory: resident size of the server with 8 and with 50 languages' champions loaded.
Adapters are random LoRA weights (r=16 on query/key/value/dense, as xlt trains them: every
block of all-MiniLM-L6-v2, the top six of multilingual-e5-small) on the real bases
(--base tiny for a quick run): speed and memory do not depend on the
weights' values. Texts are CLDR emoji names and keywords of the 8 languages.

    python bench/serve_bench.py [--base minilm,me5-small|tiny] [--seconds 6] [--clients 8]
                                [--backends batched[,merged,peft]] [--memory] [--no-mlflow]
                                [--sweep 1,2x0,2,5]  (model threads x max_wait_ms)

Prints a table, then as its LAST line one JSON object with the figures; the goals' ratios
(`xlt_over_mlflow_1`, `xlt_over_mlflow_32`, `xlt_over_raw_32`, `mixed_over_single_1`) are
those of the last base measured (me5-small by default), each base's under `bases`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from registry.commands.lookups import encoder_by_ref  # noqa: E402
from registry.service import Registry  # noqa: E402
from registry.settings import load_settings  # noqa: E402

TASK = "emoji-group"
TOKEN = "bench-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
EIGHT = ["sw", "yo", "hi", "am", "ha", "zu", "fil", "id"]
MORE = ["ig", "xh", "so", "om", "rw", "ln", "mg", "ny", "sn", "st", "tn", "ts", "wo", "ak",
        "ee", "ff", "bm", "ki", "lg", "ti", "ur", "bn", "ta", "te", "mr", "gu", "kn", "ml",
        "pa", "ne", "si", "my", "km", "lo", "jv", "su", "ms", "vi"]
FIFTY = EIGHT + MORE[:42]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_dir(kind: str, tmp: Path) -> Path:
    if kind == "tiny":
        from tests.support.tinymodel import make_tiny_bert

        if not (tmp / "tiny").exists():
            make_tiny_bert(tmp / "tiny", hidden=64, layers=2)
        return tmp / "tiny"
    from controller.encoders.builtin import builtin

    return builtin(kind).model_dir()


def make_adapters(reg: Registry, model_dir: Path, tmp: Path, languages: list[str]) -> None:
    """Random r=16 LoRA (xlt's default targets and depth: every block of a shallow base,
    the recipe's top blocks of a deep one) + head per language, registered."""
    from peft import LoraConfig, get_peft_model

    from controller.data.cldr import LABELS
    from controller.encoders.text import TextEncoder
    from controller.training.artifact import save_adapter
    from controller.training.distill import for_base
    from controller.training.head import LinearHead
    from tests.support.serve_support import randomize_lora

    encoder = TextEncoder(model_dir, device="cpu")
    fp = reg.query(encoder_by_ref, "bench@1").fingerprint
    frozen = for_base(encoder.model.config).frozen_layers
    layers = int(encoder.model.config.num_hidden_layers)
    depth = ({"layers_to_transform": list(range(frozen, layers)), "layers_pattern": "layer"}
             if frozen else {})
    student = get_peft_model(encoder.model, LoraConfig(
        r=16, lora_alpha=32, target_modules=["query", "key", "value", "dense"], **depth))
    head = LinearHead(encoder.hidden_size, len(LABELS))
    for i, lang in enumerate(languages):
        randomize_lora(student, i, 0.02)
        path = tmp / f"{lang}.safetensors"
        save_adapter(path, student, head, list(LABELS), fp)
        reg.register_adapter(task=TASK, language=lang, base="bench@1", weights=path,
                             teacher_language="en", metrics={"accuracy": 0.5})


def texts_for(languages: list[str]) -> dict[str, list[str]]:
    try:
        from controller.data.cldr import load_split

        df = load_split("test", languages)
        out = {lang: df[df["language"] == lang]["text"].tolist()[:200] for lang in languages}
        if all(out.values()):
            return out
    except Exception:  # noqa: BLE001 - the data is optional for a speed benchmark
        pass
    words = ["face", "smile", "cat", "dog", "fruit", "grape", "hand", "wave", "car", "bus",
             "ball", "game"]
    return {lang: [" ".join(words[(i + j) % len(words)] for j in range(1 + i % 6))
                   for i in range(200)] for lang in languages}


class Server:
    def __init__(self, home: Path, db: str, backend: str, argv: list[str] | None = None,
                 ready: str = "/readyz", env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        env = {**os.environ, "XLT_HOME": str(home), "XLT_DATABASE_URL": db,
               "PYTHONPATH": str(ROOT), "XLT_SERVE_TOKENS": f"{TOKEN} predict,admin",
               **(env or {})}
        logfile = home / f"serve-{backend}.log"
        self.log = open(logfile, "wb")  # noqa: SIM115
        argv = argv or [sys.executable, "-m", "controller.cli", "serve", "--backend", backend]
        self.proc = subprocess.Popen(
            [*argv, "--port", str(self.port)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(logfile.read_text()[-3000:])
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", ready)
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{backend} not ready")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


def xlt_body(lang: str, texts: list[str], i: int) -> tuple[str, str]:
    return "/v1/predict", json.dumps({"task": TASK, "language": lang, "routing_key": f"u{i}",
                                      "texts": texts})


def mlflow_body(lang: str, texts: list[str], i: int) -> tuple[str, str]:
    return "/invocations", json.dumps({"dataframe_split": {
        "columns": ["text"], "data": [[t] for t in texts]}})


def load(port: int, languages: list[str], texts: dict[str, list[str]], size: int,
         seconds: float, clients: int, body: Any = xlt_body, health: bool = True
         ) -> dict[str, float]:
    """Concurrent clients for `seconds`; each request holds `size` texts of one language,
    the languages taken in turn (so concurrent requests mix them). /healthz is polled every
    0.1 s meanwhile (its p99 must stay under 100 ms during a flood)."""
    latencies: list[float] = []
    health_ms: list[float] = []
    done = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(cid: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        i = cid
        while time.monotonic() < stop_at:
            lang = languages[i % len(languages)]
            pool = texts[lang]
            path, data = body(lang, [pool[(i * size + k) % len(pool)] for k in range(size)], i)
            t0 = time.perf_counter()
            conn.request("POST", path, data, AUTH)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
            with lock:
                latencies.append((time.perf_counter() - t0) * 1000)
                done[0] += size
            i += clients

    def poll() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            health_ms.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.1)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    if health:
        threads.append(threading.Thread(target=poll))
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies)
    out = {"texts_per_s": done[0] / wall, "p50_ms": float(np.percentile(lat, 50)),
           "p99_ms": float(np.percentile(lat, 99)), "requests": len(lat)}
    if health_ms:
        out["healthz_p99_ms"] = float(np.percentile(health_ms, 99))
    return out


def raw_forward(reg: Registry, texts: list[str], seconds: float, threads: int
                ) -> dict[str, dict[str, float]]:
    """The champion's model alone: merged LoRA, tokenise + forward + head in this process
    (no HTTP, no logging), batch 1 and 32: on one thread (`raw_N`), and on `threads`
    threads at once, one torch thread each, as xlt's model threads run (`raw_all_N`: the
    machine's limit)."""
    from controller.encoders.text import TextEncoder
    from controller.training.artifact import load_adapter

    _, path = reg.adapter_weights(TASK, EIGHT[0], 1)
    _, model_dir = reg.encoder_dir("bench@1")
    encoder = TextEncoder(model_dir, device="cpu")
    loaded = load_adapter(path, encoder.model, encoder.tokenizer)
    model, head = loaded.model.merge_and_unload().eval(), loaded.head

    def run(size: int, offset: int, lat: list[float], stop_at: float) -> None:
        torch.set_num_threads(1)  # per thread (OpenMP's setting is)
        i = offset
        with torch.inference_mode():
            while time.monotonic() < stop_at:
                batch = [texts[(i + k) % len(texts)] for k in range(size)]
                t0 = time.perf_counter()
                emb = encoder.forward_embeddings(model, encoder.tokenize(batch))
                torch.softmax(head.logits(emb, batch), dim=-1).numpy()
                lat.append((time.perf_counter() - t0) * 1000)
                i += size * threads

    out = {}
    for name, n_threads in (("raw", 1), ("raw_all", threads)):
        for size in (1, 32):
            lats: list[list[float]] = [[] for _ in range(n_threads)]
            t0 = time.perf_counter()
            stop_at = time.monotonic() + seconds
            workers = [threading.Thread(target=run, args=(size, j * size, lats[j], stop_at))
                       for j in range(n_threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            wall = time.perf_counter() - t0
            lat = [x for part in lats for x in part]
            out[f"{name}_{size}"] = {"texts_per_s": len(lat) * size / wall,
                                     "p50_ms": float(np.percentile(lat, 50)),
                                     "p99_ms": float(np.percentile(lat, 99)),
                                     "requests": len(lat)}
    return out


def mlflow_server(reg: Registry, tmp: Path, home: Path) -> Server:
    """`mlflow models serve` of the champion's MLflow model (xlt's pyfunc), logged into a
    temporary store as the mirror logs it."""
    from mlflow import MlflowClient

    from controller.mlflow_mirror import reads
    from controller.mlflow_mirror.models import adapter_model
    from registry import queries

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    aid = reg.query(queries.show_adapter, TASK, EIGHT[0], 1)["id"]
    view = reg.query(reads.adapter_view, int(aid))
    encoder = reg.query(reads.encoder_by_ref, view["base"])
    _, model_uri = adapter_model(MlflowClient(uri), uri, reg, view, encoder)
    return Server(home, reg.settings.database_url, "mlflow", argv=[
        sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
        "--env-manager", "local", "--host", "127.0.0.1"], ready="/ping",
        env={"MLFLOW_TRACKING_URI": uri,  # its uvicorn is found on PATH
             "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"})


def bench_base(kind: str, tmp: Path, args: argparse.Namespace
               ) -> tuple[list[Any], dict[str, Any], dict[str, float]]:
    home = tmp / "home"
    db = f"sqlite:///{tmp / 'registry.db'}"
    reg = Registry(load_settings(home=home, database_url=db,
                                 mlflow_tracking_uri=f"sqlite:///{tmp / 'ml.db'}"), "bench")
    reg.init()
    model_dir = base_dir(kind, tmp)
    reg.register_encoder("bench", "1", model_dir)
    make_adapters(reg, model_dir, tmp, FIFTY if args.memory else EIGHT)
    for lang in EIGHT:
        reg.promote(TASK, lang, 1)
    texts = texts_for(EIGHT)
    rows: list[Any] = []
    figures: dict[str, Any] = {}
    mem: dict[str, float] = {}
    cores = len(os.sched_getaffinity(0))
    for name, r in raw_forward(reg, texts[EIGHT[0]], max(3.0, args.seconds / 2),
                               cores).items():
        figures[name] = r
        rows.append((name.rsplit("_", 1)[0].replace("raw_all", f"raw x{cores}"), "single",
                     int(name.rsplit("_", 1)[1]), r))
    for backend in args.backends.split(","):
        server = Server(home, db, backend)
        try:
            load(server.port, EIGHT, texts, 1, 1.0, 2)  # warm-up
            mem[f"{backend}_rss_8_mib"] = server.rss_mib()
            for size in (1, 32):
                for mix, langs in (("mixed", EIGHT), ("single", EIGHT[:1])):
                    r = load(server.port, langs, texts, size, args.seconds, args.clients)
                    figures[f"{backend}_{mix}_{size}"] = r
                    rows.append((backend, mix, size, r))
            if backend == "batched":  # latency when not flooded: as many clients as cores
                r = load(server.port, EIGHT[:1], texts, 1, args.seconds, cores)
                figures["batched_light_1"] = r
                rows.append((f"batched {cores}cl", "single", 1, r))
        finally:
            server.stop()
    if "batched" in args.backends.split(","):  # what the drift embedding costs
        server = Server(home, db, "batched", argv=[
            sys.executable, "-m", "controller.cli", "serve", "--no-embeddings"])
        try:
            load(server.port, EIGHT, texts, 1, 1.0, 2)
            for size in (1, 32):
                r = load(server.port, EIGHT[:1], texts, size, args.seconds, args.clients)
                figures[f"noemb_single_{size}"] = r
                rows.append(("xlt noemb", "single", size, r))
        finally:
            server.stop()
    for threads, wait in sweep_points(args.sweep):
        server = Server(home, db, "batched", argv=[
            sys.executable, "-m", "controller.cli", "serve", "--model-threads",
            str(threads), "--max-wait-ms", str(wait)])
        try:
            load(server.port, EIGHT, texts, 1, 1.0, 2)
            for size in (1, 32):
                r = load(server.port, EIGHT, texts, size, args.seconds, args.clients)
                figures[f"sweep_t{threads}_w{wait:g}_{size}"] = r
                rows.append((f"t{threads} w{wait:g}", "mixed", size, r))
        finally:
            server.stop()
    if args.mlflow:
        server = mlflow_server(reg, tmp, home)
        try:
            load(server.port, EIGHT[:1], texts, 1, 1.0, 2, mlflow_body, health=False)
            for size in (1, 32):
                r = load(server.port, EIGHT[:1], texts, size, args.seconds, args.clients,
                         mlflow_body, health=False)
                figures[f"mlflow_single_{size}"] = r
                rows.append(("mlflow", "single", size, r))
        finally:
            server.stop()
    if args.memory:
        for lang in FIFTY[8:]:
            reg.promote(TASK, lang, 1)
        for backend in [b for b in args.backends.split(",") if b != "merged"]:
            server = Server(home, db, backend)  # warms all 50 champions at start
            try:
                load(server.port, EIGHT, texts, 1, 1.0, 2)
                mem[f"{backend}_rss_50_mib"] = server.rss_mib()
            finally:
                server.stop()
    return rows, figures, mem


def sweep_points(spec: str) -> list[tuple[int, float]]:
    """`--sweep 1,2x0,2,5`: model threads x max_wait_ms, every pair."""
    if not spec:
        return []
    threads, _, waits = spec.partition("x")
    return [(int(t), float(w)) for t in threads.split(",") for w in (waits or "2").split(",")]


def summary(figures: dict[str, Any], mem: dict[str, float]) -> dict[str, Any]:
    def ratio(a: str, b: str) -> float | None:
        if a not in figures or b not in figures:
            return None
        return round(figures[a]["texts_per_s"] / figures[b]["texts_per_s"], 3)

    out: dict[str, Any] = {
        "xlt_over_mlflow_1": ratio("batched_single_1", "mlflow_single_1"),
        "xlt_over_mlflow_32": ratio("batched_single_32", "mlflow_single_32"),
        "xlt_over_raw_32": ratio("batched_single_32", "raw_all_32"),
        "xlt_over_raw_1": ratio("batched_single_1", "raw_all_1"),
        "xlt_over_raw_1thread_32": ratio("batched_single_32", "raw_32"),
        "drift_embedding_cost_32": ratio("noemb_single_32", "batched_single_32"),
        "drift_embedding_cost_1": ratio("noemb_single_1", "batched_single_1"),
        "mixed_over_single_1": ratio("batched_mixed_1", "batched_single_1"),
        "mixed_over_single_32": ratio("batched_mixed_32", "batched_single_32")}
    if "batched_light_1" in figures and "raw_1" in figures:  # not flooded
        out["p99_1_over_raw_forward_1"] = round(
            figures["batched_light_1"]["p99_ms"] / figures["raw_1"]["p50_ms"], 2)
    if "batched_single_1" in figures and "raw_1" in figures:  # 8 clients: queueing
        out["p99_1_flood_over_raw_forward_1"] = round(
            figures["batched_single_1"]["p99_ms"] / figures["raw_1"]["p50_ms"], 2)
    health = [r["healthz_p99_ms"] for r in figures.values() if "healthz_p99_ms" in r]
    if health:
        out["healthz_p99_ms_max"] = round(max(health), 1)
    for size in (1, 32):
        for backend in ("merged", "peft"):
            out[f"batched_vs_{backend}_mixed_ratio_{size}"] = ratio(
                f"batched_mixed_{size}", f"{backend}_mixed_{size}")
    for key, r in figures.items():
        out[f"{key}_texts_per_s"] = round(r["texts_per_s"], 1)
        out[f"{key}_p50_ms"] = round(r["p50_ms"], 1)
        out[f"{key}_p99_ms"] = round(r["p99_ms"], 1)
    out.update({k: round(v, 1) for k, v in mem.items()})
    if "merged_rss_8_mib" in mem and "batched_rss_8_mib" in mem:
        out["merged_extra_memory_per_language_mib"] = round(
            (mem["merged_rss_8_mib"] - mem["batched_rss_8_mib"]) / 8, 2)
    for backend in ("batched", "peft"):
        if f"{backend}_rss_50_mib" in mem:
            out[f"{backend}_memory_per_language_mib"] = round(
                (mem[f"{backend}_rss_50_mib"] - mem[f"{backend}_rss_8_mib"]) / 42, 2)
    return {k: v for k, v in out.items() if v is not None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="minilm,me5-small",
                    help="comma-separated: minilm, me5-small, tiny (a quick run)")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--backends", default="batched")
    ap.add_argument("--memory", action="store_true",
                    help="also the resident size with 50 languages' champions")
    ap.add_argument("--no-mlflow", dest="mlflow", action="store_false")
    ap.add_argument("--sweep", default="",
                    help="also xlt at model threads x max_wait_ms, e.g. 1,2x0,2,5")
    args = ap.parse_args(argv)
    # the raw pass runs with the servers' thread count: 1 (xlt's default; mlflow's server
    # gets OMP_NUM_THREADS=1 below). 2 threads on the shared cores were 8-30x slower.
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"

    bases: dict[str, Any] = {}
    table = []
    for kind in args.base.split(","):
        with tempfile.TemporaryDirectory(prefix="xlt-serve-bench-") as tmp_name:
            rows, figures, mem = bench_base(kind, Path(tmp_name), args)
        bases[kind] = summary(figures, mem)
        table += [(kind, *row) for row in rows]

    print(f"{'base':10} {'server':10} {'traffic':7} {'texts/req':>9} {'texts/s':>9} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'healthz p99':>11}")
    for kind, backend, mix, size, r in table:
        print(f"{kind:10} {backend:10} {mix:7} {size:9d} {r['texts_per_s']:9.1f} "
              f"{r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r.get('healthz_p99_ms', 0):11.1f}")
    last = bases[args.base.split(",")[-1]]
    goals = ("xlt_over_mlflow_1", "xlt_over_mlflow_32", "xlt_over_raw_32",
             "mixed_over_single_1", "p99_1_over_raw_forward_1", "healthz_p99_ms_max",
             "drift_embedding_cost_32")
    out: dict[str, Any] = {k: last.get(k) for k in goals}
    out.update({"base": args.base.split(",")[-1], "clients": args.clients,
                "seconds": args.seconds, "cores": len(os.sched_getaffinity(0)),
                "date": time.strftime("%Y-%m-%d"), "bases": bases})
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
