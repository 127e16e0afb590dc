"""Training and evaluation through the registry with a tiny random BERT as the base: the
adapter is registered with metrics and lineage, evaluated from its stored artifact, and
continued from; the shipped dataset is registered with the sha256 of its files."""

from __future__ import annotations

import pytest

from controller.data import cldr
from controller.training.distill import DistillConfig
from controller.training.pipeline import ensure_dataset, evaluate_adapter, train_adapter
from registry import queries

TASK = "emoji-group"
SMALL = DistillConfig(r=4, alpha=8, batch_size=16, max_length=24, warmup_steps=2)


def test_shipped_dataset_sha256_matches_registry(tiny_registry) -> None:
    manifest = cldr.load_manifest()
    ids = {split: ensure_dataset(tiny_registry, "sw", split) for split in cldr.SPLITS}
    assert ensure_dataset(tiny_registry, "sw", "train") == ids["train"]  # idempotent
    rows = {r["split"]: r
            for r in tiny_registry.query(queries.list_datasets, cldr.DATASET_NAME, "sw")}
    for split in cldr.SPLITS:
        assert rows[split]["sha256"] == manifest["splits"][split]["sha256"]
        assert rows[split]["rows"] == manifest["per_language"]["sw"][split]
        assert rows[split]["licence"] == "Unicode-DFS-2016"


def test_train_register_evaluate_and_continue(tiny_registry) -> None:
    out = train_adapter(tiny_registry, TASK, "sw", base="tiny@1", epochs=1, device="cpu", seed=1,
                        config=SMALL, limit_pairs=64, drift_report_id=None)
    assert out["version"] == 1 and out["teacher"] == "en"
    row = tiny_registry.query(queries.show_adapter, TASK, "sw", 1)
    assert row["teacher_language"] == "en" and len(row["dataset_ids"]) == 2
    assert row["config"]["kind"] == "lora" and row["config"]["r"] == 4
    assert row["hyperparams"]["epochs"] == 1 and row["hyperparams"]["data_languages"] == ["sw"]
    assert 0.0 <= row["metrics"]["accuracy"] <= 1.0

    full = evaluate_adapter(tiny_registry, TASK, "sw", 1, device="cpu")
    assert full["accuracy"] == pytest.approx(row["metrics"]["accuracy"])
    assert len(full["correct"]) == full["n"] == cldr.load_manifest()["per_language"]["sw"]["test"]
    assert full["english_accuracy"] is not None

    cont = train_adapter(tiny_registry, TASK, "sw", epochs=1, device="cpu", continue_from=1,
                         config=SMALL, limit_pairs=32, data_languages=["sw", "fil"])
    assert cont["version"] == 2
    row2 = tiny_registry.query(queries.show_adapter, TASK, "sw", 2)
    assert row2["parent_adapter_id"] == row["id"] and row2["hyperparams"]["l2_pull"] > 0
    assert row2["hyperparams"]["data_languages"] == ["sw", "fil"]


def test_continuation_adapts_at_least_the_blocks_its_parent_adapted(
        registry, tmp_path) -> None:
    """A champion trained on the top 2 of 3 blocks, continued under a config that adapts
    only the top block (a policy that lowered top_blocks): the child keeps the parent's
    cut, so the parent's LoRA weights of block 1 carry over instead of being refused."""
    from dataclasses import replace

    from tests.support.tinymodel import make_tiny_bert

    registry.init()
    registry.register_encoder("tiny", "1", make_tiny_bert(tmp_path / "tiny3", layers=3))
    train_adapter(registry, TASK, "sw", base="tiny@1", epochs=1, device="cpu", seed=1,
                  config=replace(SMALL, frozen_layers=1), limit_pairs=32)
    cont = train_adapter(registry, TASK, "sw", epochs=1, device="cpu", continue_from=1,
                         config=replace(SMALL, frozen_layers=2), limit_pairs=32)
    row = registry.query(queries.show_adapter, TASK, "sw", cont["version"])
    assert row["hyperparams"]["frozen_layers"] == 1
    assert row["config"]["layers_to_transform"] == [1, 2]
