"""Every adapter version is an MLflow model: trained and promoted on the tiny base, the
champion loads with `mlflow.pyfunc.load_model("models:/xlt.<task>.<lang>@champion")` in
another process, from another working directory, with XLT_HOME moved away, and predicts
what `xlt serve`'s engine predicts. The version links its training run, and its page
follows status changes (rejection reason, gate report, every canary step)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from controller.data import cldr
from controller.mlflow_mirror import Mirror, drain, track_model_name
from controller.ops.live import log_training_result
from controller.serve.engine import Engine, Request
from controller.training.distill import DistillConfig
from controller.training.pipeline import train_adapter
from registry.service import Registry
from registry.settings import load_settings
from tests.support.serve_support import TASK, register_lora
from tests.support.task_data import TEST_LANGUAGES

SMALL = DistillConfig(r=4, alpha=8, batch_size=16, max_length=24, warmup_steps=2)
TEXTS = ["uso tabasamu", "paka", "gari basi", "mpira wa miguu", "tunda zabibu"]
NAME = track_model_name(TASK, "sw")
LOAD = """
import json, sys, mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(pd.DataFrame({"text": json.loads(sys.argv[2])}))
print(json.dumps(out.to_dict(orient="list")))
"""


@pytest.fixture
def trained(tmp_path: Path, sqlite_url: str, tiny_model_dir: Path):
    home = tmp_path / "home"
    tracking = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    (tmp_path / "mlflow").mkdir()
    reg = Registry(load_settings(home=home, database_url=sqlite_url,
                                 mlflow_tracking_uri=tracking), "tester")
    reg.init()
    cldr.register_task(reg, TEST_LANGUAGES)  # the demo task's data
    reg.register_encoder("tiny", "1", tiny_model_dir)
    result = train_adapter(reg, TASK, "sw", base="tiny@1", epochs=1, device="cpu", seed=1,
                           config=SMALL, limit_pairs=64)
    log_training_result(reg, TASK, "sw", result, {"epochs": 1, "device": "cpu"})  # as xlt train
    reg.promote(TASK, "sw", 1)
    report = drain(reg, Mirror.open(reg))
    assert report.failed == 0, [e["error"] for e in report.errors]
    return reg, tracking, home


def test_champion_loads_from_mlflow_alone_and_predicts_like_xlt(trained, tmp_path: Path
                                                                ) -> None:
    from mlflow import MlflowClient

    reg, tracking, home = trained
    engine = Engine(reg, log_traffic=False)
    served = engine.predict([Request(TASK, ["sw"] * len(TEXTS), TEXTS, ["k"] * len(TEXTS))])[0]
    assert not isinstance(served, Exception)

    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    mv = client.get_model_version_by_alias(NAME, "champion")
    run = client.get_run(mv.run_id)  # the version links the run that trained it
    assert run.data.tags["xlt.kind"] == "training" and run.data.tags["xlt_version"] == "1"
    assert run.data.params["epochs"] == "1" and "accuracy" in run.data.metrics
    assert mv.source.startswith("models:/m-")
    assert mv.tags["status"] == "champion" and mv.tags["base"] == "tiny@1"
    assert len(mv.tags) <= 6, mv.tags  # few readable tags; details in the description
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "emoji-group" in exp.tags["mlflow.note.content"]
    enc = client.get_model_version("xlt.encoder.tiny", "1")
    assert enc.run_id and enc.source.startswith("models:/m-")

    moved = home.rename(tmp_path / "moved-away")  # nothing of the registry is reachable
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "MLFLOW_REGISTRY_URI": tracking,
           "XLT_HOME": str(tmp_path / "no-such-home"), "HF_HUB_OFFLINE": "1"}
    env.pop("XLT_DATABASE_URL", None)
    proc = subprocess.run([sys.executable, "-c", LOAD, f"models:/{NAME}@champion",
                           json.dumps(TEXTS)], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert moved.exists() and not home.exists()
    assert out["label"] == [s.label for s in served]
    labels = list(served[0].probabilities)
    mine = np.array([[s.probabilities[x] for x in labels] for s in served])
    theirs = np.array([out[f"p_{x}"] for x in labels]).T
    np.testing.assert_allclose(theirs, mine, atol=1e-6)
    np.testing.assert_allclose(out["confidence"], [s.confidence for s in served], atol=1e-6)


def test_version_page_follows_status_gates_and_every_canary_step(tmp_path: Path,
                                                                 sqlite_url: str,
                                                                 tiny_model_dir: Path) -> None:
    from mlflow import MlflowClient

    reg = Registry(load_settings(home=tmp_path / "home", database_url=sqlite_url,
                                 mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
                   "ops")
    reg.init()
    cldr.register_task(reg, TEST_LANGUAGES)  # the demo task's data
    reg.register_encoder("tiny", "1", tiny_model_dir)
    for seed in (1, 2, 3):
        register_lora(reg, tiny_model_dir, tmp_path, "sw", seed)
    reg.promote(TASK, "sw", 1)
    gates = [{"name": "accuracy", "value": 0.61, "threshold": 0.5, "passed": True}]
    reg.record_gate_result(TASK, "sw", 2, gates)
    reg.mark_gated(TASK, "sw", 2)
    reg.start_canary(TASK, "sw", 2, 10.0)
    reg.record_canary_analysis(TASK, "sw", 1, 10.0, {"accuracy_drop": 0.01}, "pass")
    reg.set_canary_weight(TASK, "sw", 50.0)
    reg.record_canary_analysis(TASK, "sw", 2, 50.0, {"accuracy_drop": 0.3}, "fail")
    reg.abort_canary(TASK, "sw", reason="accuracy dropped 0.3 at step 2")
    failed = [{"name": "accuracy", "value": 0.1, "threshold": 0.5, "passed": False}]
    reg.record_gate_result(TASK, "sw", 3, failed)
    reg.reject(TASK, "sw", 3, reason="gate accuracy 0.1 < 0.5")
    assert drain(reg, Mirror.open(reg)).failed == 0

    client = MlflowClient(tracking_uri=reg.settings.mlflow_tracking_uri,
                          registry_uri=reg.settings.mlflow_tracking_uri)
    by = {mv.tags["xlt_version"]: mv for mv in client.search_model_versions(f"name='{NAME}'")}
    v2, v3 = by["2"], by["3"]
    assert v2.tags["status"] == "rejected" and v2.description.startswith("**Status: rejected**")
    assert "accuracy dropped 0.3 at step 2" in v2.description
    assert "| 1 | 10 | pass |" in v2.description and "| 2 | 50 | fail |" in v2.description
    assert "### Gate report (passed" in v2.description and v2.tags["gates"] == "passed"
    assert v3.tags["status"] == "rejected" and "gate accuracy 0.1 < 0.5" in v3.description
    assert "| accuracy | 0.1 | 0.5 | FAIL |" in v3.description and v3.tags["gates"] == "failed"
    assert all(mv.run_id for mv in by.values())
    assert by["1"].description.startswith("**Status: champion**")
