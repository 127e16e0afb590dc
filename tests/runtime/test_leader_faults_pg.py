"""Leadership survives database faults (PostgreSQL): two real `xlt controller run`
processes; 20 trials, each one a fault followed by a due track. 18 faults terminate every
backend of both controllers (pg_terminate_backend, by application_name); 2 are a real
server restart (pg_ctlcluster ... restart). After each fault, within 30 s, a replica leads
again, acts on the due track, and the outbox is drained.

Never two leaders acting: each replica logs, with its time, every term it starts
("leader: leading"); every transition the controllers recorded must come from the
replica whose term started last before it. And an outage is a line, not a traceback.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from controller.data import cldr
from registry import queries
from registry.service import Registry
from registry.settings import load_settings
from tests.conftest import PG_ADMIN_URL
from tests.support.task_data import TEST_LANGUAGES
from tests.support.tiny import write_adapter_file

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TASK, LANG = "emoji-group", "sw"
REPLICAS = ("replica-A", "replica-B")
TRIALS = 20
RESTART_TRIALS = {10, 20}  # the server is shared by other tests: restart it sparingly
RECOVERY_S = 30
POLICY = f"""
tick_interval_s = 0.3
outbox_interval_s = 0.3
check_interval_s = 1e12
tracks = [{{ task = "{TASK}", language = "{LANG}" }}]
"""
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) (.*)$")


def _with_app_name(url: str, name: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}application_name={name}"


def _terminate_controllers(dbname: str) -> int:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            return len(conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :d AND application_name LIKE 'xlt-ctl-%'"),
                {"d": dbname}).all())
    finally:
        admin.dispose()


def _restart_server() -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main",
                    "restart"], check=True, timeout=60, capture_output=True)


def _terms(log_text: str, replica: str) -> list[tuple[float, str]]:
    out = []
    for line in log_text.splitlines():
        m = STAMP.match(line)
        if m and m.group(2).startswith("leader: leading"):
            out.append((datetime.fromisoformat(m.group(1)).timestamp(), replica))
    return out


def _wait(what: str, cond: Any, timeout: float, logs: Any) -> float:
    start = time.monotonic()
    while True:
        try:
            if cond():
                return time.monotonic() - start
        except Exception:  # noqa: S110 (the test's own reads during a server restart)
            pass
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:g}s waiting: {what}\n{logs()}")
        time.sleep(0.1)


def test_leader_recovers_from_terminated_backends_and_restarts(
        pg_url: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    home = tmp_path / "home"
    reg = Registry(load_settings(home=home, database_url=pg_url), actor="tester")
    reg.init()
    cldr.register_task(reg, TEST_LANGUAGES)  # the demo task's data
    enc = reg.register_encoder("tiny", "1", tiny_model_dir)
    reg.register_adapter(task=TASK, language=LANG, base="tiny@1",
                         weights=write_adapter_file(tmp_path / "a1.safetensors",
                                                    enc.fingerprint))
    reg.promote(TASK, LANG, 1)
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    dbname = pg_url.rsplit("/", 1)[1]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", XLT_HOME=str(home),
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    env.pop("XLT_DATABASE_URL", None)
    logs = {r: tmp_path / f"{r}.log" for r in REPLICAS}
    procs = {}
    for r in REPLICAS:
        url = _with_app_name(pg_url, f"xlt-ctl-{r}")
        with open(logs[r], "w") as out:
            procs[r] = subprocess.Popen(
                [sys.executable, "-m", "controller.cli", "--db", url, "--actor", r,
                 "controller", "run", "--policy", str(policy)],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def log_text() -> str:
        return "\n".join(f"--- {r}\n{logs[r].read_text(errors='replace')[-4000:]}"
                         for r in REPLICAS)

    def drained() -> bool:
        return reg.outbox_backlog()["pending"] == 0

    recoveries: list[float] = []
    try:
        # starting imports torch, transformers and MLflow: minutes on a loaded 2-core box
        _wait("both controllers running", lambda: all(
            "controller running" in logs[r].read_text() for r in REPLICAS), 300, log_text)
        _wait("a leader drains the setup's outbox", drained, 120, log_text)
        for trial in range(1, TRIALS + 1):
            assert all(p.poll() is None for p in procs.values()), log_text()
            if trial in RESTART_TRIALS:
                _restart_server()
            else:
                assert _terminate_controllers(dbname) >= 1  # the leader's lock session
            # a due track: a guard window that is over, set by someone else
            now = time.time()
            _wait("the test's own write after the fault", lambda n=now, t=trial: reg.set_phase(
                TASK, LANG, "STEADY", {"guard": {"since": n - 10, "until": n - 1}},
                reason=f"trial {t}: due") is not None, 30, log_text)
            due = max(e["id"] for e in reg.query(queries.history))

            def acted(due: int = due) -> bool:
                return any(e["id"] > due and e["actor"] in REPLICAS
                           and e["reason"] == "guard window over"
                           for e in reg.query(queries.history)) and drained()

            recoveries.append(_wait(f"trial {trial}: a leader acts and drains", acted,
                                    RECOVERY_S, log_text))
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
    print(f"recovery after each fault (s): {[round(r, 2) for r in recoveries]}")
    texts = {r: logs[r].read_text(errors="replace") for r in REPLICAS}
    codes = {r: p.returncode for r, p in procs.items()}
    assert set(codes.values()) == {0}, f"{codes}\n{log_text()}"  # SIGTERM: a clean stop
    assert len(recoveries) == TRIALS
    # an outage is one line (and one when leading again), never a traceback per job
    for r, body in texts.items():
        assert "Traceback" not in body, f"{r}:\n{body[-4000:]}"
        outage_lines = [ln for ln in body.splitlines()
                        if "database unavailable" in ln or "lost the leader lock" in ln]
        assert len(outage_lines) <= TRIALS, outage_lines
    # every transition by a replica falls in a term of that replica: the last term started
    # (by either replica) before the event is its own
    terms = sorted(_terms(texts["replica-A"], "replica-A") + _terms(texts["replica-B"],
                                                                     "replica-B"))
    acts = [e for e in reg.query(queries.history) if e["actor"] in REPLICAS]
    assert len(acts) >= TRIALS
    for e in acts:
        at = datetime.fromisoformat(e["at"]).timestamp()
        before = [r for t, r in terms if t <= at]
        assert before and before[-1] == e["actor"], (e, terms)
    print(f"terms: {[(round(t - terms[0][0], 2), r) for t, r in terms]}")
