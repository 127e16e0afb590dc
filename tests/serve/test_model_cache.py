"""The controller's model cache (the demo's Server, the gates, label-free analysis), on the
tiny BERT with real LoRA files: an adapter that leaves the bottom blocks frozen stays a
peft model and runs only its top blocks from the base's memoised states, a full-depth one
is merged; both predict what the merged model's full forward predicts, and a text crosses
the frozen blocks once however often it is served."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from controller.encoders.text import TextEncoder
from controller.ops.model_cache import ModelCache
from controller.training.artifact import load_adapter
from tests.support.serve_support import TASK, register_lora

TEXTS = ["paka mweusi", "mbwa", "ndizi tamu", "gari la moshi", "mpira wa miguu", "mbwa"]


@pytest.mark.parametrize("layers", [[1], None], ids=["top-block", "full-depth"])
def test_predictions_equal_the_merged_full_forward(registry: Any, tiny_model_dir: Path,
                                                   tmp_path: Path,
                                                   layers: list[int] | None) -> None:
    registry.init()
    registry.register_encoder("tiny", "1", tiny_model_dir)
    adapter = register_lora(registry, tiny_model_dir, tmp_path, "sw", seed=1, layers=layers)
    models = ModelCache(registry, "cpu")
    labels, conf = models.predict(TASK, "sw", adapter.version, TEXTS)

    encoder = TextEncoder(tiny_model_dir, device="cpu")
    _, path = registry.adapter_weights(TASK, "sw", adapter.version)
    reference = load_adapter(path, encoder.model, encoder.tokenizer)
    merged = reference.model.merge_and_unload().eval()
    with torch.inference_mode():
        probs = torch.softmax(reference.head(torch.as_tensor(
            encoder.embed(TEXTS, model=merged))), dim=-1).numpy()
    names = reference.meta["config"]["labels"]
    assert labels == [names[i] for i in probs.argmax(1)]
    assert np.allclose(conf, probs.max(1), atol=1e-5)

    served = models.adapter(TASK, "sw", adapter.version)[0].model
    assert hasattr(served, "peft_config") == (layers is not None)
    # the base's own embeddings (what drift reads) come from the same memo
    assert np.allclose(models.embed("tiny@1", TEXTS), encoder.embed(TEXTS), atol=1e-5)
    memo = models.memo("tiny@1")
    assert memo is not None
    rows = len(memo)
    assert rows == (2 if layers else 1) * len(set(TEXTS))  # prefix states and pooled rows
    models.predict(TASK, "sw", adapter.version, list(reversed(TEXTS)))
    models.embed("tiny@1", TEXTS)
    assert len(memo) == rows  # served again: nothing recomputed below the cut

    # without the memo (the bench's baseline): merged, every block run, the same answers
    plain = ModelCache(registry, "cpu", memo=False)
    assert plain.predict(TASK, "sw", adapter.version, TEXTS)[0] == labels
    assert not hasattr(plain.adapter(TASK, "sw", adapter.version)[0].model, "peft_config")
    assert plain.memo("tiny@1") is None
