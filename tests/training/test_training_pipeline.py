"""Training and evaluation through the registry with a tiny random BERT as the base: the
adapter is registered with metrics and lineage, evaluated from its stored artifact, and
continued from; the shipped dataset is registered with the sha256 of its files."""

from __future__ import annotations

import pytest

from controller.data import cldr
from controller.training.distill import DistillConfig
from controller.training.pipeline import evaluate_adapter, train_adapter
from registry import queries

TASK = "emoji-group"
SMALL = DistillConfig(r=4, alpha=8, batch_size=16, max_length=24, warmup_steps=2)


def test_cldr_task_registered_through_the_public_path(tiny_registry) -> None:
    """The demo task's data is registered as any team's is: per language and split, in the
    store (normalised, sha256), with its provenance; registering again adds nothing."""
    assert cldr.register_task(tiny_registry, ["sw"]) == []  # the fixture registered it
    rows = {r["split"]: r for r in tiny_registry.query(queries.task_datasets, TASK)
            if r["language"] == "sw"}
    manifest = cldr.load_manifest()
    assert set(rows) == set(cldr.SPLITS)
    for split in ("train", "dev"):
        assert rows[split]["rows"] == manifest["per_language"]["sw"][split]
    # test rows whose text is also a train text of the language are left out (a held-out
    # text seen in training): none in sw, some in other languages
    assert rows["test"]["rows"] == manifest["per_language"]["sw"]["test"]
    every = tiny_registry.query(queries.task_datasets, TASK)
    tests = {r["language"]: r["rows"] for r in every if r["split"] == "test"}
    assert sum(manifest["per_language"][lg]["test"] - n for lg, n in tests.items()) > 0
    for r in rows.values():
        assert r["licence"] == "Unicode-DFS-2016" and r["uri"] == f"store:{r['sha256']}"
        assert tiny_registry.dataset_file(r).is_file()


def test_train_register_evaluate_and_continue(tiny_registry) -> None:
    out = train_adapter(tiny_registry, TASK, "sw", base="tiny@1", epochs=1, device="cpu", seed=1,
                        config=SMALL, limit_pairs=64, drift_report_id=None)
    assert out["version"] == 1 and out["teacher"] == "en"
    row = tiny_registry.query(queries.show_adapter, TASK, "sw", 1)
    assert row["teacher_language"] == "en"
    # lineage: every dataset it read (en and sw train, sw dev and test), with sha256
    read = {(d["language"], d["split"]) for d in row["hyperparams"]["datasets"]}
    assert {("en", "train"), ("sw", "train"), ("sw", "test")} <= read
    assert sorted(row["dataset_ids"]) == sorted(d["id"] for d in row["hyperparams"]["datasets"])
    assert row["hyperparams"]["recipe"] in ("transfer", "transfer+labels")
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
    cldr.register_task(registry, ["en", "sw"])
    train_adapter(registry, TASK, "sw", base="tiny@1", epochs=1, device="cpu", seed=1,
                  config=replace(SMALL, frozen_layers=1), limit_pairs=32)
    cont = train_adapter(registry, TASK, "sw", epochs=1, device="cpu", continue_from=1,
                         config=replace(SMALL, frozen_layers=2), limit_pairs=32)
    row = registry.query(queries.show_adapter, TASK, "sw", cont["version"])
    assert row["hyperparams"]["frozen_layers"] == 1
    assert row["config"]["layers_to_transform"] == [1, 2]
