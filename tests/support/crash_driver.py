"""Child processes for the controller's crash and replica drills
(tests/runtime/test_controller_crash.py and tests/runtime/test_controller_replicas.py), and the
invariants both check.

Children come from a multiprocessing *forkserver* that has imported this module (torch,
transformers, the controller) once: each child is a fresh process, so nothing in memory
survives a kill, without paying ~10 s of imports per restart on 2 CPU cores.

The drills use the loop of tests.support.loop_support with two test-only changes: a long cooldown
after a promotion, so that the loop settles (hi traffic keeps drifting to hi-Latn, and with
no cooldown the controller would retrain every few hours and no final state would exist to
compare), and training on at most LIMIT_PAIRS parallel pairs (the tiny random model is not
under test for quality; this keeps a training to a second or two).
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sqlite3
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import select
from tqdm.std import tqdm as std_tqdm

from controller.loop import failpoints
from controller.ops import live as live_ops
from controller.policy import Policy, parse_policy
from controller.training import pipeline
from registry import migrate, queries
from registry.schema import Job
from registry.service import Registry
from tests.support.loop_support import HOUR, LOOP_POLICY, START, TASK, Drill, open_registry, setup

LIMIT_PAIRS = 128
NEXT_HOUR = "drill_next_hour"  # in the drill's home: the hour a (re)started child runs next
ACTIVE = ("CANARY", "PAUSED")
log = logging.getLogger("xlt.drill")


def drill_policy() -> Policy:
    assert "cooldown_s = 0\n" in LOOP_POLICY
    return parse_policy(LOOP_POLICY.replace("cooldown_s = 0\n", "cooldown_s = 360000\n"))


def context() -> Any:
    """The forkserver context, preloading this module (once per test session)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def start(ctx: Any, target: Any, *args: Any) -> Any:
    proc = ctx.Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def run_child(ctx: Any, target: Any, *args: Any, timeout: float) -> int:
    """Run target(*args) in a child; its exit code (-9 when it was SIGKILLed)."""
    proc = start(ctx, target, *args)
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join(10)
        raise AssertionError(f"{target.__name__}{args} still running after {timeout:g}s")
    return int(proc.exitcode)


def log_tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def sqlite_url(run_dir: Path) -> str:
    return f"sqlite:///{run_dir / 'registry.db'}"


# -- in the child ------------------------------------------------------------------------
def _child_init(log_path: Path, kill_after: int | None) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format=f"%(asctime)s {os.getpid()} %(name)s %(message)s")
    warnings.simplefilter("ignore")
    if kill_after is None:
        os.environ.pop("XLT_FAILPOINT_KILL_AFTER_COMMITS", None)
    else:
        os.environ["XLT_FAILPOINT_KILL_AFTER_COMMITS"] = str(kill_after)
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(1)  # 2 shared cores
    # tqdm's default lock is a multiprocessing semaphore, leaked (and warned about at exit)
    # by every child that is SIGKILLed: a thread lock is all a child needs
    std_tqdm.set_lock(threading.RLock())
    assert live_ops.train_adapter is pipeline.train_adapter  # what LiveOperations.train calls
    live_ops.train_adapter = functools.partial(pipeline.train_adapter,  # type: ignore[assignment]
                                               limit_pairs=LIMIT_PAIRS)


def _snapshot(run_dir: Path, dest: Path) -> None:
    """A consistent copy of the registry database (SQLite backup API) and of the home."""
    dest.mkdir(parents=True)
    src, dst = sqlite3.connect(run_dir / "registry.db"), sqlite3.connect(dest / "registry.db")
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    shutil.copytree(run_dir / "home", dest / "home",
                    ignore=shutil.ignore_patterns("controller.lock"))


def run_hours(run_dir: str, first: int, last: int, kill_after: int | None,
              tiny_dir: str | None = None, snapshots: str | None = None,
              tiny_dir_v2: str | None = None, upgrade: bool = False) -> None:
    """Run the drill's hours first..last on the SQLite registry in run_dir (a restarted
    child resumes at the hour in home/NEXT_HOUR: an interrupted hour is redone at the same
    clock). tiny_dir: set the registry up first. snapshots: after each hour h, copy the
    registry to snapshots/after-h and record the cumulative count of committed transitions
    in run_dir/commits.json. upgrade: the base-upgrade drill (tests.support.loop_support.Drill);
    tiny_dir_v2 registers its second base at setup."""
    run = Path(run_dir)
    home = run / "home"
    _child_init(run / f"child-{os.getpid()}.log", kill_after)
    log.info("child started")
    url = sqlite_url(run)
    if tiny_dir is not None:
        migrate.upgrade(url)
        setup(url, home, Path(tiny_dir), Path(tiny_dir_v2) if tiny_dir_v2 else None)
    state = home / NEXT_HOUR
    begin = int(state.read_text()) if state.exists() else first
    drill = Drill(url, home, policy=drill_policy(), upgrade=upgrade)
    commits: dict[int, int] = {}
    log.info("drill ready: hours %d..%d, failpoint %s", begin, last, kill_after)
    for hour in range(begin, last + 1):
        lines = drill.hour(hour)
        log.info("hour %d: %s", hour, lines)
        write_atomic(state, str(hour + 1))
        if snapshots is not None:
            commits[hour] = failpoints._commits
            write_atomic(run / "commits.json", json.dumps(commits))
            _snapshot(run, Path(snapshots) / f"after-{hour}")


def _revisions(reg: Registry) -> list[int]:
    return [int(r["revision"]) for r in reg.status(TASK)]


def run_replica(url: str, home: str, actor: str, work_dir: str, limit_s: float) -> None:
    """One controller replica: tick at the hour the parent announces in work_dir/hour
    (clock at the end of that hour) every 0.1 s, until work_dir/stop appears or limit_s
    passes. After each tick it writes work_dir/<actor>.json: whether it led, and how many
    ticks in a row at this hour changed nothing (the parent's cue to serve the next hour)."""
    work = Path(work_dir)
    _child_init(work / f"{actor}.log", None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    drill = Drill(url, Path(home), policy=drill_policy(), actor=actor)
    end = time.monotonic() + limit_s
    ticks = idle = 0
    led_ticks = 0
    last_hour = None
    while not (work / "stop").exists() and time.monotonic() < end:
        hour = int((work / "hour").read_text())
        if hour != last_hour:
            idle, last_hour = 0, hour
        drill.clock._now = START + (hour + 1) * HOUR
        before = _revisions(drill.reg)
        lines = drill.controller.tick()
        leader = bool(lines)
        lines += drill.controller.settle_training()
        ticks += 1
        led_ticks += leader
        idle = idle + 1 if leader and _revisions(drill.reg) == before else 0
        write_atomic(work / f"{actor}.json", json.dumps({
            "actor": actor, "pid": os.getpid(), "hour": hour, "leader": leader, "idle": idle,
            "ticks": ticks, "led_ticks": led_ticks, "lines": lines}))
        time.sleep(0.1)


# -- the invariants ----------------------------------------------------------------------
def invariant_problems(reg: Registry) -> list[str]:
    """What is wrong with the registry after a drill: a duplicate promotion, an orphaned
    canary, a second champion, a job left queued or running."""
    problems = []
    tracks = {r["language"]: r for r in reg.status(TASK)}
    adapters = reg.query(queries.list_adapters, TASK)
    promoted = [(e["language"], (e["after"] or {}).get("champion_id"))
                for e in reg.query(queries.history, TASK) if e["action"] == "promote"]
    if len(set(promoted)) != len(promoted):
        problems.append(f"an adapter was promoted twice: {promoted}")
    for a in adapters:
        track = tracks[a["language"]]
        if a["status"] == "canary" and track["canary"] != a["version"]:
            problems.append(f"orphaned canary {a['language']} v{a['version']} (track canary "
                            f"{track['canary']})")
        if a["status"] == "champion" and track["champion"] != a["version"]:
            problems.append(f"{a['language']} v{a['version']} has status champion but the "
                            f"track's champion is {track['champion']}")
    for lang, track in tracks.items():
        if track["canary"] is not None and track["phase"] not in ACTIVE:
            problems.append(f"{lang} has canary v{track['canary']} in phase {track['phase']}")
        if track["phase"] in ACTIVE and track["canary"] is None:
            problems.append(f"{lang} is {track['phase']} without a canary")
        if track["canary"] is None and track["canary_weight"]:
            problems.append(f"{lang} has canary weight {track['canary_weight']} and no canary")
        champions = [a for a in adapters if a["language"] == lang and a["status"] == "champion"]
        if len(champions) > 1:
            problems.append(f"{lang} has {len(champions)} champion adapters")
    # the contract: the champion runs on the track's base; a canary on it or on the target
    # of the track's active upgrade; a done upgrade left its track on the target base
    base_of = {(a["language"], a["version"]): a["base"] for a in adapters}
    upgrades = {u.language: u for u in reg.query(queries.upgrades)}
    for lang, track in tracks.items():
        up = upgrades.get(lang)
        if track["champion"] and base_of[(lang, track["champion"])] != track["base"]:
            problems.append(f"{lang} champion v{track['champion']} is on "
                            f"{base_of[(lang, track['champion'])]}, the track on {track['base']}")
        allowed = {track["base"]} | ({up.to_base} if up is not None and up.active else set())
        if track["canary"] and base_of[(lang, track["canary"])] not in allowed:
            problems.append(f"{lang} canary v{track['canary']} is on a base it cannot serve")
        if up is not None and str(up.status) == "done" and track["base"] != up.to_base:
            problems.append(f"{lang} upgrade to {up.to_base} is done, the track is on "
                            f"{track['base']}")
    with reg.reading() as s:
        jobs = [(j.id, j.status) for j in s.scalars(select(Job).order_by(Job.id))]
    left = [(i, st) for i, st in jobs if st not in ("succeeded", "failed")]
    if left:  # every drill process has exited: nobody owns a queued or running job
        problems.append(f"jobs left unfinished: {left}")
    return problems


def open_run_registry(run_dir: Path) -> Registry:
    return open_registry(sqlite_url(run_dir), run_dir / "home", "test")


CHILD_TIMEOUT_S = 300  # one drill child; generous for a loaded 2-core box


def unsettled(reg: Registry) -> list[str]:
    """Tracks not yet at rest: any phase but STEADY, or a guard window still open."""
    return [f"{r['language']}: {r['phase']} {r['phase_data']}" for r in reg.status(TASK)
            if r["phase"] != "STEADY" or "guard" in (r["phase_data"] or {})]


def last_transition(reg: Registry) -> str:
    """The controller's last recorded step, to name where a child was killed."""
    events = [e for e in reg.query(queries.history, TASK) if e["actor"] == "controller"]
    last = events[-1]
    return f"{last['language']} {last['action']}: {last['reason'] or ''}".strip()
