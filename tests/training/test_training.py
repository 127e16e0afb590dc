"""Adapter training end to end on a tiny random BERT (seconds, no network): distillation,
the one-file artifact, reload with identical logits, evaluation metrics, the fingerprint
check at load, warm start, teacher choice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from controller.encoders.text import TextEncoder
from controller.training.artifact import load_adapter, read_adapter, save_adapter
from controller.training.distill import DistillConfig, ParallelData, distill
from controller.training.embed import embed_sorted
from controller.training.evaluate import evaluate_split, expected_calibration_error
from controller.training.head import LinearHead, train_head
from controller.training.teacher import choose_teacher, rank_teachers
from registry.errors import IncompatibleAdapter
from registry.fingerprint import loaded_model_fingerprint
from tests.support.tinymodel import make_tiny_bert

LABELS = ["smileys", "animals", "food", "travel"]
# (english, target-language, label) parallel items
ITEMS = [
    ("face smile", "uso tabasamu", 0), ("grin face", "uso", 0), ("smile", "tabasamu", 0),
    ("face | grin", "uso | tabasamu", 0), ("cat", "paka", 1), ("dog", "mbwa", 1),
    ("monkey", "tumbili", 1), ("cat | dog", "paka | mbwa", 1), ("fruit grape", "tunda zabibu", 2),
    ("melon", "tikiti", 2), ("grape", "zabibu", 2), ("fruit | melon", "tunda | tikiti", 2),
    ("car", "gari", 3), ("bus", "basi", 3), ("train", "basi gari", 3),
    ("car | bus", "gari | basi", 3),
]
FAST = DistillConfig(r=4, alpha=8, epochs=6, batch_size=4, lr=1e-2, warmup_steps=2,
                     max_length=16, source_share=0.25, seed=3)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def encoder(tiny_dir: Path) -> TextEncoder:
    return TextEncoder(tiny_dir, device="cpu", max_length=16)


@pytest.fixture(scope="module")
def head(encoder: TextEncoder) -> LinearHead:
    emb = embed_sorted(encoder, [en for en, _, _ in ITEMS]).numpy()
    return train_head(emb, [y for _, _, y in ITEMS], len(LABELS), steps=200, seed=0)


@pytest.fixture(scope="module")
def trained(encoder: TextEncoder, head: LinearHead):
    data = ParallelData([t for _, t, _ in ITEMS], [en for en, _, _ in ITEMS])
    return distill(encoder, head, data, FAST, progress=False)


def split_frame() -> pd.DataFrame:
    rows = []
    for i, (en, tgt, y) in enumerate(ITEMS):
        rows.append({"id": f"en:{i}", "language": "en", "text": en, "label": LABELS[y]})
        rows.append({"id": f"sw:{i}", "language": "sw", "text": tgt, "label": LABELS[y]})
    return pd.DataFrame(rows)


def test_distillation_reduces_the_embedding_gap(trained) -> None:
    history = trained.history
    assert len(history) == FAST.epochs and trained.steps > 0
    assert history[-1]["mse"] < history[0]["mse"]
    trainable = [n for n, p in trained.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_teacher_base_is_not_modified(encoder: TextEncoder, trained, tiny_dir: Path) -> None:
    fresh = TextEncoder(tiny_dir, device="cpu", max_length=16)
    texts = ["uso tabasamu", "gari"]
    assert torch.allclose(embed_sorted(encoder, texts), embed_sorted(fresh, texts), atol=1e-6)


def test_save_reload_gives_same_logits(tmp_path: Path, encoder: TextEncoder, head: LinearHead,
                                       trained) -> None:
    fp = loaded_model_fingerprint(encoder.model, encoder.tokenizer)
    path = tmp_path / "adapter.safetensors"
    meta = save_adapter(path, trained.model, head, LABELS, fp,
                        extra={"hyperparameters": FAST.to_dict()})
    stored_meta, lora, head_t = read_adapter(path)
    assert stored_meta == json.loads(json.dumps(meta))
    cfg = stored_meta["config"]
    assert cfg["kind"] == "lora" and cfg["r"] == 4 and stored_meta["base_fingerprint"] == fp
    assert cfg["head_shape"] == [32, 4] and cfg["labels"] == LABELS
    assert lora and set(head_t) == {"weight", "bias"}
    loaded = load_adapter(path, encoder.model, encoder.tokenizer)
    texts = [t for _, t, _ in ITEMS]
    before = head(embed_sorted(encoder, texts, model=trained.model))
    after = loaded.head(embed_sorted(encoder, texts, model=loaded.model))
    assert torch.allclose(before, after, atol=1e-5)
    # the student differs from the bare base (the LoRA weights were really stored)
    assert not torch.allclose(embed_sorted(encoder, texts), embed_sorted(encoder, texts,
                                                                         model=loaded.model))


def test_fingerprint_mismatch_is_refused(tmp_path: Path, encoder: TextEncoder,
                                         head: LinearHead, trained) -> None:
    fp = loaded_model_fingerprint(encoder.model, encoder.tokenizer)
    path = tmp_path / "adapter.safetensors"
    save_adapter(path, trained.model, head, LABELS, fp)
    other = TextEncoder(make_tiny_bert(tmp_path / "other", extra_words=["zebra"]), device="cpu")
    other_fp = loaded_model_fingerprint(other.model, other.tokenizer)
    with pytest.raises(IncompatibleAdapter) as err:
        load_adapter(path, other.model, other.tokenizer)
    assert fp in str(err.value) and other_fp in str(err.value)


def test_training_is_deterministic(encoder: TextEncoder, head: LinearHead, trained) -> None:
    data = ParallelData([t for _, t, _ in ITEMS], [en for en, _, _ in ITEMS])
    again = distill(encoder, head, data, FAST, progress=False)
    a = dict(trained.model.named_parameters())
    for name, p in again.model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, a[name]), name


def test_warm_start_with_replay_and_l2_pull(encoder: TextEncoder, head: LinearHead,
                                            trained) -> None:
    from peft import get_peft_model_state_dict

    init = {k: v.clone() for k, v in get_peft_model_state_dict(trained.model).items()}
    new = ParallelData(["uso", "paka"], ["face", "cat"], target_labels=[0, 1])
    replay = ParallelData([t for _, t, _ in ITEMS], [en for en, _, _ in ITEMS])
    cfg = DistillConfig(**{**FAST.to_dict(), "target_modules": FAST.target_modules,
                           "epochs": 1, "l2_pull": 1e3, "ce_weight": 0.5, "replay_share": 2.0})
    cont = distill(encoder, head, new, cfg, replay=replay, unlabeled=["tunda"],
                   init_lora=init, progress=False)
    assert cont.samples == 2 + 1 + 4 + 1  # pairs + source self pair + replay + unlabeled
    after = get_peft_model_state_dict(cont.model)
    drift = max(float((after[k] - init[k]).abs().max()) for k in init)
    assert drift < 0.05  # the strong L2 pull keeps the weights near the champion's


def test_evaluation_metrics_are_sane(encoder: TextEncoder, head: LinearHead, trained) -> None:
    df = split_frame()
    result = evaluate_split(encoder, trained.model, head, df, "sw", LABELS)
    json.dumps(result)  # plain JSON values only
    assert result["n"] == len(ITEMS) and result["correct"] == result["items"]["correct"]
    assert result["english_accuracy"] == result["source_accuracy_student"]
    assert 0.0 <= result["ece"] <= 1.0
    correct = result["items"]["correct"]
    assert result["items"]["ids"] == [f"sw:{i}" for i in range(len(ITEMS))]
    emb = embed_sorted(encoder, [t for _, t, _ in ITEMS], model=trained.model)
    manual = (head(emb).argmax(1).numpy() == np.array([y for _, _, y in ITEMS])).mean()
    assert result["accuracy"] == pytest.approx(manual) == pytest.approx(np.mean(correct))
    assert sum(r["support"] for r in result["per_class"].values()) == len(ITEMS)
    assert result["transfer_gap"] == pytest.approx(
        result["source_accuracy_teacher"] - result["accuracy"])
    assert result["forgetting"] == pytest.approx(
        result["source_accuracy_teacher"] - result["source_accuracy_student"])
    zero = evaluate_split(encoder, None, head, df, "sw", LABELS)
    assert zero["forgetting"] == 0.0


def test_ece_edge_cases() -> None:
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([1, 1])) == 0.0
    assert expected_calibration_error(np.array([0.9, 0.9]), np.array([0, 0])) == \
        pytest.approx(0.9)
    conf = np.array([0.25, 0.75, 0.75, 0.75, 0.75])
    assert expected_calibration_error(conf, np.array([0, 1, 1, 1, 0])) == pytest.approx(0.05)


def test_teacher_choice_defaults_to_english() -> None:
    ranking = rank_teachers("sw")
    distances = [r["distance"] for r in ranking]
    assert distances == sorted(distances) and "sw" not in [r["language"] for r in ranking]
    choice = choose_teacher("sw")
    assert choice.teacher == "en" and choice.ranking == ranking
    # a nearer candidate with a teacher as good as English's is taken
    nearest = ranking[0]["language"]
    if nearest != "en":
        picked = choose_teacher("sw", teacher_quality={"en": 0.8, nearest: 0.8}, margin=0.0)
        assert picked.teacher == nearest
    assert choose_teacher("hi-Latn").target == "hi-Latn"
