"""Start-up time of the `xlt` commands a person runs in an incident, against `mlflow --help`
and `alembic --help` measured in the same run.

Each command is a fresh process (as a person's shell starts it) on an initialised SQLite
registry holding one track with a champion; promote and rollback alternate so that every
call is a real state change. Wall time per call; the table shows the median and the
slowest of N runs. The last line is one JSON object of the figures.

    python bench/cli_bench.py [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASK, LANG = "emoji-group", "sw"


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ, XLT_HOME=str(home), HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                        os.environ.get("PYTHONPATH")])))
    env.pop("XLT_DATABASE_URL", None)
    return env


def setup(home: Path, adapters: int) -> None:
    """A registry with a tiny base and `adapters` adapter versions, v1 the champion."""
    sys.path.insert(0, str(ROOT))
    from registry.service import Registry
    from tests.support.tiny import build_tiny_bert, write_adapter_file

    reg = Registry.open(home=home, actor="bench")
    reg.init()
    enc = reg.register_encoder("tiny", "1", build_tiny_bert(home / "tiny-bert"))
    for i in range(adapters):
        path = write_adapter_file(home / f"a{i}.safetensors", enc.fingerprint, seed=i)
        reg.register_adapter(task=TASK, language=LANG, base="tiny@1", weights=path)
    reg.promote(TASK, LANG, 1)


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    py = sys.executable
    xlt = [py, "-m", "controller.cli"]
    bindir = Path(py).parent
    work = Path(tempfile.mkdtemp(prefix="xlt-cli-bench-"))
    try:
        home = work / "home"
        setup(home, adapters=args.runs + 2)
        env = _env(home)
        samples: dict[str, list[float]] = {k: [] for k in (
            "xlt --help", "xlt status", "xlt history", "xlt promote", "xlt rollback",
            "mlflow --help", "alembic --help")}
        timed(xlt + ["--help"], env)  # warm the OS file cache once, for every row alike
        timed([str(bindir / "mlflow"), "--help"], env)
        for i in range(args.runs):
            # interleaved, so that a burst of load from other processes hits every row
            samples["xlt --help"].append(timed(xlt + ["--help"], env))
            samples["xlt status"].append(timed(xlt + ["status"], env))
            samples["xlt history"].append(timed(xlt + ["history", "--limit", "20"], env))
            samples["xlt promote"].append(timed(xlt + ["promote", "--task", TASK, "--lang",
                                                       LANG, "--version", str(i + 2)], env))
            samples["xlt rollback"].append(timed(xlt + ["rollback", "--task", TASK, "--lang",
                                                        LANG], env))
            samples["mlflow --help"].append(timed([str(bindir / "mlflow"), "--help"], env))
            samples["alembic --help"].append(timed([str(bindir / "alembic"), "--help"], env))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    medians = {k: round(statistics.median(v), 3) for k, v in samples.items()}
    mlflow = medians["mlflow --help"]
    print(f"{'command':<16} {'median s':>9} {'max s':>7} {'vs mlflow --help':>17}")
    for name, values in samples.items():
        print(f"{name:<16} {medians[name]:>9.3f} {max(values):>7.3f} "
              f"{medians[name] / mlflow:>16.2f}x")
    print(f"({args.runs} runs each, {os.cpu_count()} CPUs, python {sys.version.split()[0]})")
    xlt_cmds = [k for k in medians if k.startswith("xlt")]
    figures = {"runs": args.runs, "cpus": os.cpu_count(),
               "median_s": medians,
               "slowest_xlt_median_s": max(medians[k] for k in xlt_cmds),
               "ratio_to_mlflow_help": {k: round(medians[k] / mlflow, 3) for k in xlt_cmds},
               "target_s": 0.7,
               "all_within_target": all(medians[k] <= 0.7 for k in xlt_cmds)}
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
