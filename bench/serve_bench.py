"""Benchmark of `xlt serve` through its real HTTP server: requests of 1 and 32 texts,
spread over 8 languages (mixed) or all in one language (single), sent by concurrent clients;
throughput and p50/p99 latency for three ways of running the adapters:

- batched (the product): one forward pass per batch, per-row LoRA deltas over one base;
- merged: one merged model per language, one pass per language in a batch;
- peft: one PeftModel, `set_adapter` per language in a batch.

Memory: resident size of the server with 8 and with 50 languages' champions loaded.
Adapters are random LoRA weights (r=16 on query/key/value/dense, as xlt trains them) on the
real all-MiniLM-L6-v2 (--base tiny for a quick run): speed and memory do not depend on the
weights' values. Texts are CLDR emoji names and keywords of the 8 languages.

    python bench/serve_bench.py [--base minilm|tiny] [--seconds 6] [--clients 8]

Prints a table, then as its LAST line one JSON object with the figures.
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

        return make_tiny_bert(tmp / "tiny", hidden=64, layers=2)
    from controller.encoders.text import demo_base_dir

    return demo_base_dir()


def make_adapters(reg: Registry, model_dir: Path, tmp: Path, languages: list[str]) -> None:
    """Random r=16 LoRA (xlt's default targets) + head per language, registered."""
    from peft import LoraConfig, get_peft_model

    from controller.data.cldr import LABELS
    from controller.encoders.text import TextEncoder
    from controller.training.artifact import save_adapter
    from controller.training.head import LinearHead
    from tests.support.serve_support import randomize_lora

    encoder = TextEncoder(model_dir, device="cpu")
    fp = reg.query(encoder_by_ref, "bench@1").fingerprint
    student = get_peft_model(encoder.model, LoraConfig(
        r=16, lora_alpha=32, target_modules=["query", "key", "value", "dense"]))
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
    def __init__(self, home: Path, db: str, backend: str) -> None:
        self.port = free_port()
        env = {**os.environ, "XLT_HOME": str(home), "XLT_DATABASE_URL": db,
               "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
        self.log = open(home / f"serve-{backend}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", "serve", "--port", str(self.port),
             "--backend", backend, "--max-batch", "64"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((home / f"serve-{backend}.log").read_text()[-3000:])
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError("xlt serve not ready")

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


def load(port: int, languages: list[str], texts: dict[str, list[str]], size: int,
         seconds: float, clients: int) -> dict[str, float]:
    """Concurrent clients for `seconds`; each request holds `size` texts of one language,
    the languages taken in turn (so concurrent requests mix them)."""
    latencies: list[float] = []
    done = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(cid: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        i = cid
        while time.monotonic() < stop_at:
            lang = languages[i % len(languages)]
            pool = texts[lang]
            body = json.dumps({"task": TASK, "language": lang, "routing_key": f"u{i}",
                               "texts": [pool[(i * size + k) % len(pool)]
                                         for k in range(size)]})
            t0 = time.perf_counter()
            conn.request("POST", "/v1/predict", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
            with lock:
                latencies.append((time.perf_counter() - t0) * 1000)
                done[0] += size
            i += clients

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies)
    return {"texts_per_s": done[0] / wall, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "requests": len(lat)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", choices=["minilm", "tiny"], default="minilm")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--backends", default="batched,merged,peft")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)

    with tempfile.TemporaryDirectory(prefix="xlt-serve-bench-") as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "home"
        db = f"sqlite:///{tmp / 'registry.db'}"
        reg = Registry(load_settings(home=home, database_url=db,
                                     mlflow_tracking_uri=f"sqlite:///{tmp / 'ml.db'}"), "bench")
        reg.init()
        reg.register_encoder("bench", "1", base_dir(args.base, tmp))
        make_adapters(reg, base_dir(args.base, tmp), tmp, FIFTY)
        for lang in EIGHT:
            reg.promote(TASK, lang, 1)
        texts = texts_for(EIGHT)
        rows, figures = [], {}
        mem: dict[str, float] = {}
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
            finally:
                server.stop()
        for lang in FIFTY[8:]:
            reg.promote(TASK, lang, 1)
        for backend in [b for b in args.backends.split(",") if b != "merged"]:
            server = Server(home, db, backend)  # warms all 50 champions at start
            try:
                load(server.port, EIGHT, texts, 1, 1.0, 2)
                mem[f"{backend}_rss_50_mib"] = server.rss_mib()
            finally:
                server.stop()

    print(f"{'backend':8} {'traffic':7} {'texts/req':>9} {'texts/s':>9} {'p50 ms':>8} "
          f"{'p99 ms':>8}")
    for backend, mix, size, r in rows:
        print(f"{backend:8} {mix:7} {size:9d} {r['texts_per_s']:9.1f} {r['p50_ms']:8.1f} "
              f"{r['p99_ms']:8.1f}")
    for key, value in mem.items():
        print(f"{key:24} {value:8.1f} MiB")

    def ratio(a: str, b: str) -> float:
        return round(figures[a]["texts_per_s"] / figures[b]["texts_per_s"], 3)

    out: dict[str, Any] = {"base": args.base, "clients": args.clients,
                           "seconds": args.seconds, "machine": "2 CPU cores, shared"}
    for size in (1, 32):
        if "batched_mixed_1" in figures:
            out[f"mixed_vs_single_throughput_ratio_{size}"] = ratio(f"batched_mixed_{size}",
                                                                    f"batched_single_{size}")
        for backend in ("merged", "peft"):
            if f"{backend}_mixed_{size}" in figures:
                out[f"batched_vs_{backend}_mixed_ratio_{size}"] = ratio(
                    f"batched_mixed_{size}", f"{backend}_mixed_{size}")
    out["mixed_vs_single_throughput_ratio"] = out.get("mixed_vs_single_throughput_ratio_32")
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
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
