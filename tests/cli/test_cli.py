"""The `xlt` command as a user runs it: exit codes, one-line errors, --json, the actor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.tiny import write_adapter_file


def xlt(home: Path, *args: str, db: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XLT_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("XLT_DATABASE_URL", None)
    if db:
        env["XLT_DATABASE_URL"] = db
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def assert_clean_error(proc: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.fixture
def home(tmp_path: Path, db_url: str, tiny_model_dir: Path):
    h = tmp_path / "home"
    assert xlt(h, "init", db=db_url).returncode == 0
    reg = xlt(h, "encoder", "register", "tiny@1", str(tiny_model_dir), db=db_url)
    assert reg.returncode == 0, reg.stderr
    fp = json.loads(xlt(h, "encoder", "show", "tiny@1", "--json", db=db_url).stdout)
    for seed in (1, 2):
        f = write_adapter_file(tmp_path / f"a{seed}.safetensors", fp["fingerprint"], seed)
        p = xlt(h, "--actor", "alice", "adapter", "register", "--task", "emoji-group",
                "--lang", "sr_Latn", "--base", "tiny@1", "--weights", str(f), db=db_url)
        assert p.returncode == 0, p.stderr
    return h, db_url


def test_flow_and_json(home) -> None:
    h, db = home
    p = xlt(h, "--actor", "bob", "promote", "--task", "emoji-group", "--lang", "sr-Latn",
            "--version", "1", "--reason", "first", db=db)
    assert p.returncode == 0, p.stderr
    status = json.loads(xlt(h, "status", "--json", db=db).stdout)
    assert status[0]["language"] == "sr-Latn" and status[0]["champion"] == 1
    assert xlt(h, "canary", "start", "--task", "emoji-group", "--lang", "sr-Latn", "--version",
               "2", "--weight", "20", db=db).returncode == 0
    assert xlt(h, "canary", "weight", "--task", "emoji-group", "--lang", "sr-Latn", "50",
               db=db).returncode == 0
    hist = json.loads(xlt(h, "history", "--task", "emoji-group", "--lang", "sr-Latn",
                          "--json", db=db).stdout)
    actions = [e["action"] for e in hist]
    assert actions[-3:] == ["promote", "canary_start", "canary_weight"]
    assert {e["actor"] for e in hist if e["action"] == "register_adapter"} == {"alice"}
    assert next(e for e in hist if e["action"] == "promote")["actor"] == "bob"
    r = json.loads(xlt(h, "resolve", "--task", "emoji-group", "--lang", "sr-Latn-RS",
                       "--key", "u1", "--json", db=db).stdout)
    assert r["served_language"] == "sr-Latn" and r["role"] in ("champion", "canary")
    for cmd in (["encoder", "list"], ["adapter", "list"], ["dataset", "list"],
                ["encoder", "impact", "tiny@1"], ["db", "current"],
                ["adapter", "show", "--task", "emoji-group", "--lang", "sr-Latn"]):
        out = xlt(h, *cmd, "--json", db=db)
        assert out.returncode == 0, (cmd, out.stderr)
        json.loads(out.stdout)
        human = xlt(h, *cmd, db=db)
        assert human.returncode == 0 and human.stdout.strip()
    assert xlt(h, "canary", "abort", "--task", "emoji-group", "--lang", "sr-Latn",
               db=db).returncode == 0
    assert xlt(h, "db", "check", db=db).returncode == 0


def test_errors_exit_codes(home) -> None:
    h, db = home
    assert_clean_error(xlt(h, "promote", "--task", "emoji-group", "--lang", "xx-bogus",
                           "--version", "1", db=db), 2, "unknown language tag")
    assert_clean_error(xlt(h, "promote", "--task", "emoji-group", "--lang", "sr-Latn",
                           "--version", "9", db=db), 2, "no adapter emoji-group/sr-Latn@v9")
    assert_clean_error(xlt(h, "rollback", "--task", "emoji-group", "--lang", "sr-Latn",
                           db=db), 3, "no previous champion")
    assert_clean_error(xlt(h, "promote", "--task", "emoji-group", "--lang", "sr-Latn",
                           "--version", "1", "--revision", "99", db=db), 3, "you expected 99")
    assert_clean_error(xlt(h, "canary", "start", "--task", "emoji-group", "--lang", "sr-Latn",
                           "--version", "2", "--weight", "20", db=db), 3, "has no champion")
    assert_clean_error(xlt(h, "encoder", "show", "nope", db=db), 2, "NAME@VERSION")
    assert_clean_error(xlt(h, "promote", "--task", "emoji-group", db=db), 2, "Missing option")
    before = xlt(h, "history", "--json", db=db).stdout
    xlt(h, "canary", "weight", "--task", "emoji-group", "--lang", "sr-Latn", "500", db=db)
    assert xlt(h, "history", "--json", db=db).stdout == before  # refused: nothing written


def test_uninitialised_home_is_refused_without_side_effects(tmp_path: Path) -> None:
    h = tmp_path / "nothing"
    assert_clean_error(xlt(h, "status"), 2, "run `xlt init` first")
    assert not h.exists()
    assert_clean_error(xlt(h, "--db", "mysql://x/y", "status"), 2, "unsupported database URL")


def test_encoder_upgrade_and_impact(home, tiny_model_dir_v2: Path) -> None:
    h, db = home
    assert xlt(h, "encoder", "register", "tiny@2", str(tiny_model_dir_v2), db=db).returncode == 0
    before = xlt(h, "history", "--json", db=db).stdout
    assert_clean_error(xlt(h, "encoder", "upgrade", "tiny@9", "--task", "emoji-group", db=db),
                       2, "no base encoder tiny@9")
    assert_clean_error(xlt(h, "encoder", "upgrade", "tiny@2", "--task", "emoji-group",
                           "--lang", "yo", db=db), 2, "no track")
    assert xlt(h, "history", "--json", db=db).stdout == before  # refused: nothing written
    done = xlt(h, "--actor", "alice", "encoder", "upgrade", "tiny@2", "--task", "emoji-group",
               "--lang", "sr_Latn", "--json", db=db)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tracks"] == {"sr-Latn": "requested"}
    table = xlt(h, "encoder", "impact", "tiny@2", db=db)
    assert "pending" in table.stdout and "UPGRADE" in table.stdout.upper()
    rows = json.loads(xlt(h, "encoder", "impact", "tiny@2", "--json", db=db).stdout)
    assert rows[0]["upgrade"]["status"] == "pending"
    assert rows[0]["upgrade"]["from_base"] == "tiny@1"
