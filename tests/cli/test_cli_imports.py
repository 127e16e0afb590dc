"""Imports follow the command: the registry and the registry commands of the CLI load no ML
library (torch, transformers, peft, Evidently, MLflow, pandas), so a person rolling back in
an incident does not wait on them. Checked in a fresh interpreter, after the commands ran."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "peft", "evidently", "mlflow", "pandas", "sklearn", "scipy")

SCRIPT = r"""
import json, sys
from click.testing import CliRunner
import registry.service, registry.commands.catalog, registry.commands.deployment
import registry.commands.outbox, registry.commands.records, registry.routing
from controller.cli import cli
from tests.support.tiny import write_adapter_file

home = sys.argv[1]
fingerprint = sys.argv[2]
runner = CliRunner()
outputs = []

def xlt(*args):
    result = runner.invoke(cli, ["--home", home, *args], catch_exceptions=False)
    outputs.append([list(args), result.exit_code, result.output[-300:]])

xlt("--help")
xlt("status")
for i in (1, 2):
    path = write_adapter_file(__import__("pathlib").Path(home) / f"a{i}.safetensors",
                              fingerprint, seed=i)
    xlt("adapter", "register", "--task", "t", "--lang", "sw", "--base", "tiny@1",
        "--weights", str(path))
xlt("promote", "--task", "t", "--lang", "sw", "--version", "1")
xlt("promote", "--task", "t", "--lang", "sw", "--version", "2")
xlt("rollback", "--task", "t", "--lang", "sw")
xlt("history", "--json")
xlt("status", "--json")
heavy = sorted({name.split(".")[0] for name in sys.modules} & set(sys.argv[3].split(",")))
print(json.dumps({"heavy": heavy, "outputs": outputs}))
"""


def test_registry_commands_import_no_ml_library(tmp_path: Path, tiny_model_dir: Path) -> None:
    from registry.service import Registry

    home = tmp_path / "home"
    reg = Registry.open(home=home, actor="tester")
    reg.init()
    enc = reg.register_encoder("tiny", "1", tiny_model_dir)
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    env.pop("XLT_DATABASE_URL", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(home), enc.fingerprint,
                           ",".join(HEAVY)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # every command really ran (a failing command could import less and pass by accident)
    assert [code for _, code, _ in result["outputs"]] == [0] * len(result["outputs"]), result
    assert "rolled back" in result["outputs"][6][2] or "v1" in result["outputs"][6][2], result
    assert result["heavy"] == [], f"registry commands imported {result['heavy']}"


def test_policy_validation_imports_no_evidently() -> None:
    """Validating a policy file (the controller's start, `xlt drift check --policy`) needs
    pydantic only: the drift thresholds live apart from the Evidently-based signals."""
    code = ("import sys; from controller.policy import parse_policy; "
            "p = parse_policy('[drift]\\nembedding = 3.0\\n'); assert p.drift.embedding == 3.0; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'evidently', 'torch', "
            "'mlflow', 'pandas'}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_drift_signals_still_use_the_policy_thresholds() -> None:
    from controller.drift.signals import DriftThresholds as FromSignals
    from controller.policy import DriftPolicy

    assert FromSignals is DriftPolicy
