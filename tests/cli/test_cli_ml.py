"""`xlt train`, `xlt evaluate`, `xlt events ingest`, `xlt drift check` as a user runs them
(the tiny model: model quality is not under test here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.data.cldr import load_split


def xlt(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XLT_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("XLT_DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    home = tmp_path_factory.mktemp("cli-ml") / "home"
    assert xlt(home, "init").returncode == 0
    assert xlt(home, "encoder", "register", "tiny@1", str(tiny_model_dir)).returncode == 0
    assert xlt(home, "task", "create", "emoji-group", "--demo").returncode == 0
    p = xlt(home, "train", "--task", "emoji-group", "--lang", "sw", "--base", "tiny@1",
            "--epochs", "1", "--device", "cpu", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["version"] == 1 and out["teacher"] == "en" and 0 <= out["accuracy"] <= 1
    assert xlt(home, "promote", "--task", "emoji-group", "--lang", "sw",
               "--version", "1").returncode == 0
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    runs = [r for e in client.search_experiments()
            for r in client.search_runs([e.experiment_id])]
    assert any(r.data.metrics.get("accuracy") == pytest.approx(out["accuracy"])
               for r in runs), f"xlt train logged no MLflow run with its accuracy:\n{p.stderr}"
    # the run page lists each registered dataset the training read (digest: its sha256)
    (run,) = [r for r in runs if r.data.metrics.get("accuracy") == pytest.approx(
        out["accuracy"]) and r.data.tags.get("xlt.kind") == "training"]
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert {"emoji-group/en/train@cldr-41.1", "emoji-group/sw/train@cldr-41.1",
            "emoji-group/sw/test@cldr-41.1"} <= set(inputs)
    assert json.loads(inputs["emoji-group/sw/train@cldr-41.1"].dataset.profile)["num_rows"] > 0
    return home


def test_evaluate(trained: Path) -> None:
    p = xlt(trained, "evaluate", "--task", "emoji-group", "--lang", "sw", "--json")
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert result["version"] == 1 and 0 <= result["ece"] <= 1
    assert set(result["per_class"]) and "english_accuracy" in result
    human = xlt(trained, "evaluate", "--task", "emoji-group", "--lang", "sw")
    assert "macro_f1" in human.stdout and "PRECISION" in human.stdout
    bad = xlt(trained, "train", "--task", "no-such-task", "--lang", "sw", "--epochs", "1")
    assert bad.returncode == 2 and "no task 'no-such-task'" in bad.stderr


def _events(n: int, lang: str = "sw") -> list[dict]:
    rows = load_split("dev", [lang]).head(n)
    return [{"task": "emoji-group", "language": lang, "text": t, "prediction": lab,
             "confidence": 0.7, "adapter_version": 1, "routing_key": f"u{i}"}
            for i, (t, lab) in enumerate(zip(rows["text"], rows["label"], strict=True))]


def test_events_ingest_reports_rejects(trained: Path, tmp_path: Path) -> None:
    good = _events(5)
    bad = [{"task": "emoji-group", "language": "zz", "text": "x", "prediction": "a",
            "confidence": 0.5},
           {"task": "emoji-group", "language": "sw", "text": "x", "prediction": "a",
            "confidence": 7},
           {"task": "emoji-group", "language": "sw", "prediction": "a", "confidence": 0.5}]
    f = tmp_path / "events.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in good + bad) + "\n{not json\n")
    strict = xlt(trained, "events", "ingest", str(f), "--all-or-nothing", "--json")
    assert strict.returncode == 2 and json.loads(strict.stdout)["stored"] == 0
    p = xlt(trained, "events", "ingest", str(f), "--json")
    assert p.returncode == 2 and "4 rows rejected" in p.stderr
    report = json.loads(p.stdout)
    assert report["stored"] == 5
    reasons = {r["line"]: r["reason"] for r in report["rejects"]}
    assert "unknown language tag" in reasons[6] and "confidence" in reasons[7]
    assert "text or descriptors" in reasons[8] and "not JSON" in reasons[9]


def test_policy_withholds_text_and_drift_check(trained: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('no_text_languages = ["sw"]\n')
    f = tmp_path / "many.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in _events(260)) + "\n")
    p = xlt(trained, "events", "ingest", str(f), "--policy", str(policy), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["text_dropped"] == 260
    from registry.service import Registry

    reg = Registry.open(home=trained)
    from controller.traffic.log import read_window

    window = read_window(reg, "emoji-group", "sw")
    assert len(window) >= 260 and window["text"].isna().sum() >= 260
    check = xlt(trained, "drift", "check", "--lang", "sw", "--json")
    assert check.returncode == 0, check.stderr
    rows = json.loads(check.stdout)
    assert rows[0]["language"] == "sw" and rows[0]["verdict"] in ("stable", "drift")
    assert rows[0]["report_id"] >= 1
    assert any((trained / "reports" / "emoji-group" / "sw").glob("*.json"))
    # the drift run names the registered split its reference was read from
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{trained / 'mlflow.db'}")
    drift_runs = [r for e in client.search_experiments()
                  for r in client.search_runs([e.experiment_id])
                  if r.data.tags.get("xlt.kind") == "drift"]
    assert drift_runs and "emoji-group/sw/test@cldr-41.1" in {
        d.dataset.name for d in drift_runs[0].inputs.dataset_inputs}
    none = xlt(trained, "drift", "check", "--lang", "yo")
    assert none.returncode == 2 and "no tracks with a champion" in none.stderr
