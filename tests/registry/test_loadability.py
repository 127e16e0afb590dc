"""Register proves loadability: a file whose tensors and config cannot serve its base is
refused at register (exit 2, nothing stored), and each refused file is one that the
loaders really fail on -- so register refuses what load would, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from registry.errors import ArtifactError, IncompatibleAdapter, InvalidInput
from tests.registry.test_artifact_refusals import refused, snapshot
from tests.support.tiny import adapter_config, adapter_tensors, write_adapter_file

TASK = "emoji-group"


@pytest.fixture
def world(registry: Any, tiny_model_dir: Path) -> Any:
    registry.init()
    registry.fingerprint = registry.register_encoder("tiny", "1", tiny_model_dir).fingerprint
    return registry


def write(path: Path, tensors: dict[str, np.ndarray], config: dict[str, Any] | None,
          fingerprint: str) -> Path:
    meta: dict[str, Any] = {"format": 1, "base_fingerprint": fingerprint}
    if config is not None:
        meta["config"] = config
    save_file(tensors, str(path), metadata={"xlt": json.dumps(meta)})
    return path


def failing_loaders(world: Any, path: Path) -> set[str]:
    """Which of the two loaders fail on `path`: "train" (controller.training.artifact,
    used by gates, evaluation and continued training: load, then the head on one
    embedding, since a head of the wrong width loads and fails on first use) and "serve"
    (controller.serve.lora: load into a slot, classify one text)."""
    import torch

    from controller.serve.lora import MultiAdapterBase
    from controller.training.artifact import load_adapter
    from controller.training.pipeline import load_base

    _, encoder = load_base(world, "tiny@1", "cpu")
    failed = set()
    try:
        loaded = load_adapter(path, encoder.model, encoder.tokenizer)
        loaded.head(torch.as_tensor(encoder.embed(["cat smile"])))
    except Exception:
        failed.add("train")
    try:
        served = MultiAdapterBase("tiny@1", encoder)
        served.load("k", path)
        served.classify(["cat smile"], ["k"])
    except Exception:
        failed.add("serve")
    return failed


def register(world: Any, path: Path, **kw: Any) -> Any:
    return world.register_adapter(task=TASK, language="sw", base="tiny@1", weights=path, **kw)


def test_a_good_file_registers_and_loads(world: Any, tmp_path: Path) -> None:
    """The helper's file is accepted and really loads (otherwise the refusals below would
    prove nothing)."""
    from controller.serve.lora import MultiAdapterBase
    from controller.training.artifact import load_adapter
    from controller.training.pipeline import load_base

    a = register(world, write_adapter_file(tmp_path / "good.safetensors", world.fingerprint))
    _, blob = world.adapter_weights(TASK, "sw", a.version)
    _, encoder = load_base(world, "tiny@1", "cpu")
    loaded = load_adapter(blob, encoder.model, encoder.tokenizer)
    assert list(loaded.head.shape) == [32, 8]
    assert MultiAdapterBase("tiny@1", encoder).load("k", blob).labels[0] == "Smileys & Emotion"


def _drop(config: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != key}


CASES = {
    # (what the file is, the refusal's words)
    "no_head_shape": (lambda t, c: (t, _drop(c, "head_shape")), "records no 'head_shape'"),
    "no_alpha": (lambda t, c: (t, _drop(c, "alpha")), "records no 'alpha'"),
    "no_config": (lambda t, c: (t, None), "adapter kind None"),
    "lone_tensor": (lambda t, c: ({"lora.A": t["head.weight"][:4]}, {"kind": "lora", "r": 4}),
                    "records no 'alpha'"),
    "lone_tensor_full_config": (
        lambda t, c: ({"lora.A": t["head.weight"][:4], "head.weight": t["head.weight"],
                       "head.bias": t["head.bias"]}, c), "tensor lora.A is not a LoRA weight"),
    "missing_layer": (lambda t, c: ({k: v for k, v in t.items() if ".layer.1." not in k}, c),
                      "no LoRA tensors for encoder.layer.1.attention.self.query"),
    "unknown_layer": (lambda t, c: ({**t, "lora.base_model.model.encoder.layer.7.attention.self"
                                     ".query.lora_A.weight": t[next(iter(t))]}, c),
                      "encoder.layer.7.attention.self.query, not a linear layer of the base"),
    "wrong_in_features": (lambda t, c: ({k: (v[:, :16] if k.endswith("lora_A.weight") else v)
                                         for k, v in t.items()}, c),
                          r"lora_A has shape \[4, 16\], the base layer \[32, 32\]"),
    "half_pair": (lambda t, c: ({k: v for k, v in t.items()
                                 if not k.endswith("layer.0.attention.self.value.lora_B.weight")},
                                c), "has no lora_B tensor"),
    "hidden_mismatch": (lambda t, c: ({**t, "head.weight": np.zeros((8, 16), np.float32)},
                                      {**c, "head_shape": [16, 8]}),
                        "takes 16-d embeddings, the base's hidden size is 32"),
    "targets_match_nothing": (lambda t, c: (t, {**c, "target_modules": ["nothing"]}),
                              "match no linear layer"),
    "short_labels": (lambda t, c: (t, {**c, "labels": ["a", "b"]}), "are not 8 label names"),
    "zero_rank": (lambda t, c: (t, {**c, "r": 0}), "rank r=0"),
}


# where only one loader fails: the other does not read what is wrong (serving takes the
# LoRA pairs it finds and never reads head_shape or target_modules; training checks the
# state dict against target_modules). Register refuses what either would fail on.
FAILS = {"missing_layer": {"train"}, "no_head_shape": {"train"},
         "targets_match_nothing": {"train"},
         "short_labels": {"serve"}}  # labels[argmax] with argmax >= 2 (seeded weights)


@pytest.mark.parametrize("case", sorted(CASES))
def test_unloadable_file_refused_at_register(world: Any, tmp_path: Path, case: str) -> None:
    make, words = CASES[case]
    tensors, config = make(adapter_tensors(np.random.default_rng(0)), adapter_config())
    path = write(tmp_path / f"{case}.safetensors", tensors, config, world.fingerprint)
    msg = refused(world, ArtifactError, words, lambda: register(world, path))
    assert f"{case}.safetensors" in msg
    assert failing_loaders(world, path) == FAILS.get(case, {"train", "serve"})


def test_cli_refuses_unloadable_adapter_with_exit_2(world: Any, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from controller.cli import cli

    tensors = adapter_tensors(np.random.default_rng(0))
    path = write(tmp_path / "nohead.safetensors", tensors,
                 _drop(adapter_config(), "head_shape"), world.fingerprint)
    before = snapshot(world)
    result = CliRunner().invoke(cli, ["--home", str(world.settings.home), "--db", world.db.url,
                                      "adapter", "register", "--task", TASK, "--lang", "sw",
                                      "--base", "tiny@1", "--weights", str(path)])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "records no 'head_shape'" in result.output
    assert snapshot(world) == before


def test_given_config_cannot_contradict_the_file(world: Any, tmp_path: Path) -> None:
    """A load reads the file: --config may add registry facts, not change the file's."""
    path = write_adapter_file(tmp_path / "a.safetensors", world.fingerprint)
    refused(world, InvalidInput, "config r 8 contradicts a.safetensors, which records 4",
            lambda: register(world, path, config={"r": 8}))
    # a fingerprint only in --config is not where a load looks for it
    nofp = write_adapter_file(tmp_path / "nofp.safetensors", None)
    refused(world, IncompatibleAdapter, "records no base fingerprint",
            lambda: register(world, nofp, config={"base_fingerprint": world.fingerprint}))
    assert register(world, path, config={"r": 4, "note": "x"}).config["note"] == "x"


def test_head_must_have_the_tasks_label_count(world: Any, tmp_path: Path) -> None:
    register(world, write_adapter_file(tmp_path / "eight.safetensors", world.fingerprint))
    rng = np.random.default_rng(1)
    five = write(tmp_path / "five.safetensors", adapter_tensors(rng, labels=5),
                 adapter_config(labels=5), world.fingerprint)
    msg = refused(world, IncompatibleAdapter, "has a head of 5 labels, but task emoji-group "
                  "has 8", lambda: world.register_adapter(task=TASK, language="yo",
                                                          base="tiny@1", weights=five))
    assert "five.safetensors" in msg
    # another task may have another label set
    assert world.register_adapter(task="other-task", language="yo", base="tiny@1",
                                  weights=five).version == 1
