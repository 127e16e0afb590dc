"""Temperature scaling of an adapter's head: the fit recovers a known temperature, folding
it into the head changes confidences and never predictions, and a calibrated adapter
carries its temperature through the registry (and a warm start undoes it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from controller.training.artifact import read_adapter
from controller.training.calibrate import calibrate_head, fit_temperature, scaled_head
from controller.training.distill import DistillConfig
from controller.training.evaluate import expected_calibration_error
from controller.training.head import LinearHead
from controller.training.pipeline import train_adapter
from registry import queries

TASK = "emoji-group"


def _sampled(n: int, temperature: float, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Logits and labels drawn from softmax(logits / temperature): T is the right answer."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn((n, 8), generator=gen) * 3
    probs = torch.softmax(logits / temperature, dim=-1)
    labels = torch.multinomial(probs, 1, generator=gen).squeeze(1).numpy()
    return logits, labels


@pytest.mark.parametrize("true_t", [0.5, 2.0])
def test_fit_recovers_the_temperature(true_t: float) -> None:
    logits, labels = _sampled(4000, true_t)
    assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.1)
    assert fit_temperature(logits[:0], []) == 1.0


def test_scaled_head_keeps_predictions_and_lowers_ece() -> None:
    torch.manual_seed(0)
    head = LinearHead(16, 8)
    emb = torch.randn(3000, 16)
    with torch.no_grad():
        logits = head(emb)
    # labels from a distribution 4x flatter than the head's: the head is overconfident
    labels = torch.multinomial(torch.softmax(logits / 4.0, dim=-1), 1).squeeze(1).numpy()
    calibrated, t = calibrate_head(head, emb, labels)
    assert t > 1.0
    with torch.no_grad():
        assert torch.allclose(calibrated(emb), logits / t, atol=1e-5)
        before = torch.softmax(logits, -1).numpy()
        after = torch.softmax(calibrated(emb), -1).numpy()
    assert (before.argmax(1) == after.argmax(1)).all()

    def ece(p: np.ndarray) -> float:
        return expected_calibration_error(p.max(1), (p.argmax(1) == labels).astype(int))

    assert ece(after) < ece(before)
    with pytest.raises(ValueError):
        scaled_head(head, 0.0)


def test_calibrated_adapter_ships_its_temperature(tiny_registry) -> None:
    cfg = DistillConfig(r=4, alpha=8, batch_size=16, max_length=24, warmup_steps=2,
                        ce_weight=1.0, source_labels=True, calibrate=True)
    out = train_adapter(tiny_registry, TASK, "sw", base="tiny@1", epochs=1, device="cpu", seed=1,
                        config=cfg, limit_pairs=64)
    row = tiny_registry.query(queries.show_adapter, TASK, "sw", out["version"])
    t = row["hyperparams"]["temperature"]
    assert t > 0 and row["hyperparams"]["target_labels"] is True
    _, path = tiny_registry.adapter_weights(TASK, "sw", out["version"])
    meta, _, head = read_adapter(path)
    assert meta["temperature"] == pytest.approx(t)

    # a warm start distils against the uncalibrated head, and calibrates afresh
    cont = train_adapter(tiny_registry, TASK, "sw", epochs=1, device="cpu", continue_from=1,
                         config=cfg, limit_pairs=32)
    _, path2 = tiny_registry.adapter_weights(TASK, "sw", cont["version"])
    meta2, _, head2 = read_adapter(path2)
    t2 = meta2["temperature"]
    # the head itself is not retrained: both files hold the same head up to their T
    assert torch.allclose(head["weight"] * t, head2["weight"] * t2, atol=1e-5)
