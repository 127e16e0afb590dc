"""The lexical half fitted again on train + dev once dev has weighed the halves
(controller.training.calibrate.shipped_head), and the confidence map it leaves honest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from controller.data import cldr
from controller.encoders.text import TextEncoder
from controller.runtime.bootstrap import build_operations
from controller.training.calibrate import shipped_head
from controller.training.distill import DistillConfig
from controller.training.head import LinearHead
from tests.support.serve_support import TASK

CFG = DistillConfig(r=4, alpha=8, batch_size=16, max_length=24, warmup_steps=2,
                    ce_weight=1.0, source_labels=True, calibrate=True, lexical=True)


def _accuracy(encoder: TextEncoder, head: LinearHead, rows: Any) -> float:
    from controller.training.evaluate import predict_probs

    index = {name: i for i, name in enumerate(cldr.LABELS)}
    probs = predict_probs(encoder, None, head, rows["text"].tolist())
    return float((probs.argmax(1) == np.array([index[x] for x in rows["label"]])).mean())


def test_the_refit_half_reads_dev_and_the_honest_one_does_not(tiny_model_dir: Path) -> None:
    encoder = TextEncoder(tiny_model_dir, device="cpu", max_length=24)
    torch.manual_seed(0)
    head = LinearHead(encoder.model.config.hidden_size, len(cldr.LABELS))
    train = cldr.load_split("train", ["sw"]).head(300)
    dev = cldr.load_split("dev", ["sw"])
    index = {name: i for i, name in enumerate(cldr.LABELS)}
    texts, y = train["text"].tolist(), [index[x] for x in train["label"]]

    out = shipped_head(encoder, None, head, texts, y, dev, "sw", cldr.LABELS,
                       calibrate=True, lexical=True)
    assert out.refitted and out.head.lexical is not None and out.honest.lexical is not None
    # the same linear half (one stacking weight a) and the same lexical weight b: the refit
    # half knows dev's n-grams too, and has learnt dev's labels
    assert torch.equal(out.head.linear.weight, out.honest.linear.weight)
    assert out.head.lexical.ids.size > out.honest.lexical.ids.size
    assert _accuracy(encoder, out.head, dev) > _accuracy(encoder, out.honest, dev) + 0.2

    kept = shipped_head(encoder, None, head, texts, y, dev, "sw", cldr.LABELS,
                        calibrate=True, lexical=True, refit=False)
    assert not kept.refitted and kept.head is kept.honest
    assert np.array_equal(kept.head.lexical.ids, out.honest.lexical.ids)
    assert kept.temperature == pytest.approx(out.temperature)


def test_a_refit_adapter_stores_the_dev_map_of_its_honest_half(tiny_registry: Any) -> None:
    from controller.policy import parse_policy
    from controller.training.crossfit import calibrator_from_record
    from controller.training.pipeline import train_adapter
    from registry import queries

    out = train_adapter(tiny_registry, TASK, "sw", base="tiny@1", epochs=1, device="cpu",
                        seed=1, config=CFG, limit_pairs=64)
    row = tiny_registry.query(queries.show_adapter, TASK, "sw", out["version"])
    record = row["metrics"]["calibrator"]
    # fitted where LiveOperations would fit it at serving time: dev of sw and its variants
    rows = cldr.load_split("dev", ["sw", *cldr.dataset_variants("sw")])
    assert record["folds"] == 0 and record["n"] == len(rows)
    assert record["method"] == "dev isotonic, before the lexical refit"
    assert record["features"]["n"] == len(rows)  # the sharper map, from the same rows
    assert row["hyperparams"]["lexical_refit"] is True
    ops = build_operations(tiny_registry, parse_policy(""), device="cpu")
    assert ops.calibrator(TASK, "sw", out["version"]) == calibrator_from_record(record)

    # without the refit the adapter has never read dev: the map is fitted on dev when read
    plain = train_adapter(tiny_registry, TASK, "sw", epochs=1, device="cpu", seed=1,
                          config=CFG, limit_pairs=64, lexical_refit=False)
    plain_row = tiny_registry.query(queries.show_adapter, TASK, "sw", plain["version"])
    assert "calibrator" not in plain_row["metrics"]
    assert plain_row["hyperparams"]["lexical_refit"] is False
    assert (plain_row["hyperparams"]["lexical_ngrams"] < row["hyperparams"]["lexical_ngrams"])


def test_the_demo_keeps_dev_unseen() -> None:
    from controller.policy import parse_policy

    # the demo draws its traffic from the dev split: its adapters must not have read it
    demo = Path(__file__).resolve().parents[2] / "controller" / "demo" / "policy.toml"
    assert parse_policy(demo.read_text()).training.lexical_refit is False
