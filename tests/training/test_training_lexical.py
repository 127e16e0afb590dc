"""The lexical half of the task head (controller.training.lexical): stable features, a
model that learns from n-grams, a lossless artifact round trip, every serving path adding
the same logits, stacking weights fitted on dev, and refusals of a malformed lexical half
(nothing registered)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from controller.data import cldr
from controller.encoders.text import TextEncoder
from controller.ops.model_cache import ModelCache
from controller.serve.backends import BatchedBackend, MergedBackend, PeftBackend
from controller.training.artifact import load_adapter, read_adapter
from controller.training.calibrate import fit_stack
from controller.training.head import LinearHead
from controller.training.lexical import FORMAT, LexicalHead, fit_lexical, gram_counts
from registry.errors import ArtifactError
from tests.support.serve_support import LABELS, LEXICAL_TEXTS, TASK, make_lora_file, register_lora
from tests.support.task_data import TEST_LANGUAGES

TEXTS = ["paka mweusi", "mbwa", "ndizi tamu", "gari la moshi", "mpira wa miguu", "mbwa"]


def test_gram_ids_are_the_same_in_another_process() -> None:
    # Python's own hash() is salted per process: an artifact's ids must not depend on it
    mine = sorted(g for part in gram_counts("gari la moshi") for g in part)
    code = ("import json; from controller.training.lexical import gram_counts; "
            "print(json.dumps(sorted(g for p in gram_counts('gari la moshi') for g in p)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert json.loads(out.stdout) == mine
    assert len(mine) > 10


def test_fit_lexical_learns_from_shared_ngrams() -> None:
    texts = ["mbwa mdogo", "mbwa mkubwa", "paka mdogo", "ndizi tamu", "ndizi mbivu",
             "chai tamu", "gari jekundu", "gari la moshi", "basi la shule"]
    y = [2, 2, 2, 3, 3, 3, 4, 4, 4]
    head = fit_lexical(texts, y, 8)
    assert head.weight.shape == (head.ids.size, 8)
    assert np.all(np.diff(head.ids) > 0)
    unseen = head.logits(["mbwa mweusi", "ndizi kubwa", "gari dogo"])
    assert unseen.argmax(1).tolist() == [2, 3, 4]
    # labels absent from training stay unlikely, and a text of unseen n-grams only gets bias
    assert np.all(unseen[:, [0, 1, 5, 6, 7]] < unseen.max(1, keepdims=True) - 5)
    assert np.allclose(head.logits(["zzzz"])[0], head.bias)


def test_two_labels_train_too() -> None:
    head = fit_lexical(["mbwa mdogo", "mbwa mkubwa", "ndizi tamu", "ndizi mbivu"],
                       [2, 2, 3, 3], 8)
    assert head.logits(["mbwa", "ndizi"]).argmax(1).tolist() == [2, 3]


def test_refuses_a_single_label_and_mismatched_rows() -> None:
    with pytest.raises(ValueError, match="at least two labels"):
        fit_lexical(["a b", "c d"], [1, 1], 8)
    with pytest.raises(ValueError, match="one label per training text"):
        fit_lexical(["a b", "c d"], [1], 8)


def test_head_tensors_round_trip_and_linear_half_alone() -> None:
    lexical = fit_lexical([t for t, _ in LEXICAL_TEXTS], [y for _, y in LEXICAL_TEXTS], 8)
    torch.manual_seed(0)
    linear = LinearHead(16, 8)
    head = linear.with_lexical(lexical.scaled(0.5))
    emb = torch.randn(len(TEXTS), 16)
    back = LinearHead.from_tensors(head.tensors())
    assert back.lexical is not None
    with torch.no_grad():
        assert torch.allclose(back.logits(emb, TEXTS), head.logits(emb, TEXTS))
        assert torch.allclose(back(emb), linear(emb))  # forward: the linear half only
        expected = linear(emb) + torch.as_tensor(0.5 * lexical.logits(TEXTS))
        assert torch.allclose(head.logits(emb, TEXTS), expected, atol=1e-5)
    with pytest.raises(ValueError, match="texts for"):
        head.logits(emb, TEXTS[:2])


def test_fit_stack_weighs_the_informative_half() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 8, 400)
    informative = np.eye(8)[y] * 4 + rng.normal(0, 1, (400, 8))
    noise = rng.normal(0, 1, (400, 8))
    a, b = fit_stack(torch.as_tensor(noise, dtype=torch.float32), informative, y)
    assert b > 5 * a
    a, b = fit_stack(torch.as_tensor(informative, dtype=torch.float32), noise, y)
    assert a > 5 * b


def test_every_serving_path_adds_the_lexical_logits(registry: Any, tiny_model_dir: Path,
                                                   tmp_path: Path) -> None:
    registry.init()
    cldr.register_task(registry, TEST_LANGUAGES)  # the demo task's data
    registry.register_encoder("tiny", "1", tiny_model_dir)
    adapter = register_lora(registry, tiny_model_dir, tmp_path, "sw", seed=1, layers=[1],
                            lexical=True)
    _, path = registry.adapter_weights(TASK, "sw", adapter.version)
    encoder = TextEncoder(tiny_model_dir, device="cpu")
    reference = load_adapter(path, encoder.model, encoder.tokenizer)
    assert reference.head.lexical is not None
    assert reference.meta["config"]["lexical"] == {
        "format": FORMAT, "ngrams": int(reference.head.lexical.ids.size)}
    merged = reference.model.merge_and_unload().eval()
    with torch.inference_mode():
        emb = torch.as_tensor(encoder.embed(TEXTS, model=merged))
        probs = torch.softmax(reference.head.logits(emb, TEXTS), dim=-1).numpy()
        linear_only = torch.softmax(reference.head(emb), dim=-1).numpy()
    assert not np.allclose(probs, linear_only, atol=1e-3)  # the lexical half counts

    labels, conf = ModelCache(registry, "cpu").predict(TASK, "sw", adapter.version, TEXTS)
    assert labels == [LABELS[i] for i in probs.argmax(1)]
    assert np.allclose(conf, probs.max(1), atol=1e-5)
    key = (TASK, "sw", adapter.version)
    for backend in (BatchedBackend, MergedBackend, PeftBackend):
        server = backend(lambda ref: TextEncoder(tiny_model_dir, device="cpu"))
        server.load(key, "tiny@1", Path(path))
        _, got, _, _ = server.classify("tiny@1", TEXTS, [key] * len(TEXTS), with_base=False)
        assert np.allclose(got, probs, atol=1e-5), backend.name


def _tampered(src: Path, dst: Path, tensors: Any = None, config: Any = None) -> Path:
    with safe_open(str(src), framework="pt") as fh:
        data = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (not a dict)
        meta = json.loads(fh.metadata()["xlt"])
    if tensors:
        tensors(data)
    if config:
        config(meta["config"])
    save_file(data, str(dst), metadata={"xlt": json.dumps(meta)})
    return dst


@pytest.mark.parametrize("case", ["no-config", "format", "ngrams", "unsorted", "stray"])
def test_a_malformed_lexical_half_is_refused_and_nothing_registered(
        registry: Any, tiny_model_dir: Path, tmp_path: Path, case: str) -> None:
    reg = registry
    reg.init()
    cldr.register_task(reg, TEST_LANGUAGES)  # the demo task's data
    fingerprint = reg.register_encoder("tiny", "1", tiny_model_dir).fingerprint
    src = make_lora_file(tmp_path / "ok.safetensors", tiny_model_dir, fingerprint, 1,
                         lexical=True)
    read_adapter(src)  # the untouched file reads
    edits: dict[str, tuple[Any, Any, str]] = {
        "no-config": (None, lambda c: c.pop("lexical"), "records no lexical head"),
        "format": (None, lambda c: c["lexical"].update(format="tfidf-v0"),
                   "this xlt reads"),
        "ngrams": (None, lambda c: c["lexical"].update(ngrams=3), "the config says"),
        "unsorted": (lambda t: t.update({"head.lexical.ids": t["head.lexical.ids"].flip(0)}),
                     None, "sorted and unique"),
        "stray": (lambda t: t.update({"head.lexical.extra": torch.zeros(2)}), None,
                  "not part of a lexical head"),
    }
    tensors, config, match = edits[case]
    bad = _tampered(src, tmp_path / f"{case}.safetensors", tensors, config)
    encoder = TextEncoder(tiny_model_dir, device="cpu")
    with pytest.raises(ArtifactError, match=match):
        load_adapter(bad, encoder.model, encoder.tokenizer)
    if case != "unsorted":  # the header alone shows it: refused at register too
        with pytest.raises(ArtifactError, match=match):
            reg.register_adapter(task=TASK, language="sw", base="tiny@1", weights=bad)
        assert reg.status(TASK) == []


def test_lexical_head_refuses_tensors_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="do not fit together"):
        LexicalHead(np.arange(3), np.ones(3), np.zeros((2, 8)), np.zeros(8))
    with pytest.raises(ValueError, match="missing"):
        LexicalHead.from_tensors({"ids": torch.arange(3)})


def test_a_trained_adapter_ships_its_lexical_half_and_continues(tiny_registry: Any) -> None:
    from controller.training.distill import DistillConfig
    from controller.training.pipeline import evaluate_adapter, train_adapter
    from registry import queries

    cfg = DistillConfig(r=4, alpha=8, batch_size=16, max_length=24, warmup_steps=2,
                        ce_weight=1.0, source_labels=True, calibrate=True, lexical=True)
    out = train_adapter(tiny_registry, TASK, "sw", base="tiny@1", epochs=1, device="cpu",
                        seed=1, config=cfg, limit_pairs=64)
    row = tiny_registry.query(queries.show_adapter, TASK, "sw", out["version"])
    ngrams = row["hyperparams"]["lexical_ngrams"]
    assert ngrams > 100 and row["config"]["lexical"] == {"format": FORMAT, "ngrams": ngrams}
    # forgetting reads the linear half; English through the served head is reported apart
    assert 0 <= row["metrics"]["english_accuracy_served"] <= 1
    assert row["metrics"]["english_accuracy"] is not None
    full = evaluate_adapter(tiny_registry, TASK, "sw", out["version"], device="cpu")
    assert full["accuracy"] == pytest.approx(row["metrics"]["accuracy"])
    labels, _ = ModelCache(tiny_registry, "cpu").predict(TASK, "sw", out["version"], TEXTS)
    assert len(labels) == len(TEXTS)

    # a warm start distils against the linear half and fits a lexical half afresh
    cont = train_adapter(tiny_registry, TASK, "sw", epochs=1, device="cpu",
                         continue_from=out["version"], config=cfg, limit_pairs=32)
    row2 = tiny_registry.query(queries.show_adapter, TASK, "sw", cont["version"])
    assert 0 < row2["hyperparams"]["lexical_ngrams"] < ngrams  # fitted on its 32 pairs


def test_lexical_is_refused_where_the_recipe_cannot_fit_it(tiny_registry: Any) -> None:
    from controller.training.pipeline import train_adapter
    from registry.errors import InvalidInput

    # the tiny base is shallow: its recipe (MiniLM's) reads no target labels, no dev split
    with pytest.raises(InvalidInput, match="a lexical half needs a recipe"):
        train_adapter(tiny_registry, TASK, "sw", base="tiny@1", epochs=1, device="cpu",
                      limit_pairs=16, lexical=True)
    from registry import queries

    assert tiny_registry.query(queries.list_adapters, TASK, "sw", None) == []
    assert tiny_registry.query(queries.list_datasets, "cldr-emoji", "sw") == []


def test_no_lexical_ships_the_linear_head_alone(tiny_registry: Any) -> None:
    from controller.training.distill import DistillConfig
    from controller.training.pipeline import train_adapter
    from registry import queries

    cfg = DistillConfig(r=4, alpha=8, batch_size=16, max_length=24, warmup_steps=2,
                        ce_weight=1.0, calibrate=True, lexical=True)
    out = train_adapter(tiny_registry, TASK, "sw", base="tiny@1", epochs=1, device="cpu",
                        config=cfg, limit_pairs=32, lexical=False)
    row = tiny_registry.query(queries.show_adapter, TASK, "sw", out["version"])
    assert "lexical" not in row["config"] and row["hyperparams"]["lexical_ngrams"] == 0
    assert row["hyperparams"]["temperature"] > 0


def test_the_policy_switch_reaches_the_training_job() -> None:
    from controller.loop.phase_status import PhaseStatus
    from controller.loop.reconciler import TrackState, training_params
    from controller.policy import parse_policy
    from registry.errors import InvalidInput

    t = TrackState("e", "sw", "STEADY", PhaseStatus(), 1, 1, None, 0.0, base="me5-small@1")
    # the lexical half (None: the recipe's choice) and its refit on train + dev (default on)
    for field, default in (("lexical", None), ("lexical_refit", True)):
        assert training_params(parse_policy(""), t, None)[field] is default
        off = parse_policy(f"[training]\n{field} = false\n")
        assert training_params(off, t, None)[field] is False
        with pytest.raises(InvalidInput, match=f"training.{field}"):
            parse_policy(f'[training]\n{field} = "sometimes"\n')


def test_cli_refuses_lexical_on_a_shallow_base(tmp_path: Path, tiny_model_dir: Path) -> None:
    from tests.cli.test_cli_ml import xlt

    home = tmp_path / "home"
    assert xlt(home, "init").returncode == 0
    assert xlt(home, "encoder", "register", "tiny@1", str(tiny_model_dir)).returncode == 0
    assert xlt(home, "task", "create", TASK, "--demo").returncode == 0
    p = xlt(home, "train", "--task", TASK, "--lang", "sw", "--base", "tiny@1", "--epochs", "1",
            "--device", "cpu", "--lexical")
    assert p.returncode == 2, p.stderr
    assert "a lexical half needs a recipe" in p.stderr and "Traceback" not in p.stderr
    assert json.loads(xlt(home, "status", "--json").stdout) == []
