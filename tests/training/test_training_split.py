"""Frozen-prefix distillation (deep bases) and the per-base English head cache, on the
tiny random BERT: the cached-prefix path computes what the full model computes, only the
blocks above the cut get LoRA, the adapter file records them and reloads to the same
logits, and a second run on the same base reads the cached head instead of training it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from controller.encoders.text import TextEncoder
from controller.training import head_cache
from controller.training.artifact import load_adapter, save_adapter
from controller.training.distill import DistillConfig, ParallelData, distill, for_base
from controller.training.embed import embed_sorted, tokenize_ids
from controller.training.split import pad_states, prefix_states, top_embeddings
from registry.fingerprint import loaded_model_fingerprint
from tests.support.tinymodel import make_tiny_bert
from tests.training.test_training import ITEMS, LABELS

SPLIT = DistillConfig(r=4, alpha=8, epochs=6, batch_size=4, lr=1e-2, warmup_steps=2,
                      max_length=16, seed=3, frozen_layers=1)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> TextEncoder:
    return TextEncoder(make_tiny_bert(tmp_path_factory.mktemp("tiny-split"), layers=3),
                       device="cpu", max_length=16)


def test_prefix_then_top_equals_the_full_forward(encoder: TextEncoder) -> None:
    texts = [t for _, t, _ in ITEMS]
    ids = tokenize_ids(encoder, texts, 16)
    pad = encoder.tokenizer.pad_token_id or 0
    for cut in (1, 2):
        states = prefix_states(encoder.model, ids, cut, pad, encoder.device, batch_size=5)
        hidden, mask = pad_states(states, encoder.device)
        with torch.no_grad():
            ours = top_embeddings(encoder.model, hidden, mask, cut)
        assert torch.allclose(ours, embed_sorted(encoder, texts), atol=1e-5)


def test_frozen_prefix_student_trains_top_blocks_only_and_reloads(
        tmp_path: Path, encoder: TextEncoder) -> None:
    emb = embed_sorted(encoder, [en for en, _, _ in ITEMS]).numpy()
    head = head_cache.train_head(emb, [y for _, _, y in ITEMS], len(LABELS), steps=100)
    data = ParallelData([t for _, t, _ in ITEMS], [en for en, _, _ in ITEMS])
    result = distill(encoder, head, data, SPLIT, progress=False)
    assert result.history[-1]["mse"] < result.history[0]["mse"]
    lora = [n for n, p in result.model.named_parameters() if p.requires_grad]
    assert lora and not any(".layer.0." in n for n in lora)
    assert any(".layer.1." in n for n in lora) and any(".layer.2." in n for n in lora)

    path = tmp_path / "a.safetensors"
    fp = loaded_model_fingerprint(encoder.model, encoder.tokenizer)
    meta = save_adapter(path, result.model, head, LABELS, fp)
    assert meta["config"]["layers_to_transform"] == [1, 2]
    loaded = load_adapter(path, encoder.model, encoder.tokenizer)
    texts = [t for _, t, _ in ITEMS]
    before = head(embed_sorted(encoder, texts, model=result.model))
    after = loaded.head(embed_sorted(encoder, texts, model=loaded.model))
    assert torch.allclose(before, after, atol=1e-5)


def test_for_base_picks_the_deep_base_defaults(encoder: TextEncoder) -> None:
    deep = type("C", (), {"num_hidden_layers": 12})()
    assert for_base(deep).frozen_layers == 6 and for_base(deep).max_length == 32
    assert for_base(deep).epochs == 3 and for_base(deep).ce_weight > 0
    assert for_base(deep).source_labels and for_base(deep).calibrate
    assert for_base(encoder.model.config) == DistillConfig()
    assert for_base(deep, epochs=5).epochs == 5
    # the policy's top_blocks: how many top blocks a deep base adapts; all at or past depth
    assert for_base(deep, top_blocks=2).frozen_layers == 10
    assert for_base(deep, top_blocks=12).frozen_layers == 0
    assert for_base(deep, top_blocks=40).frozen_layers == 0
    # shallow bases (MiniLM) keep their full-depth recipe whatever the policy says
    assert for_base(encoder.model.config, top_blocks=1) == DistillConfig()
    with pytest.raises(ValueError, match="top_blocks must be at least 1"):
        for_base(deep, top_blocks=0)


def test_teacher_head_is_trained_once_per_base(tmp_path: Path, encoder: TextEncoder,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    train = pd.DataFrame([{"language": "en", "text": en, "label": LABELS[y]}
                          for en, _, y in ITEMS])
    calls = []
    real = head_cache.train_teacher_head
    monkeypatch.setattr(head_cache, "train_teacher_head",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    first = head_cache.cached_teacher_head(encoder, "fp-a", train, "en", LABELS, root=tmp_path)
    again = head_cache.cached_teacher_head(encoder, "fp-a", train, "en", LABELS, root=tmp_path)
    other = head_cache.cached_teacher_head(encoder, "fp-b", train, "en", LABELS, root=tmp_path)
    assert len(calls) == 2  # fp-a once, fp-b once
    assert torch.equal(first.linear.weight, again.linear.weight)
    assert other is not None
