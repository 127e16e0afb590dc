"""Cross-fitted calibration at training time (controller.training.crossfit): every training
row of the language is scored once by a fold model that never saw its item, the map is
stored with the adapter, and the controller's label-free judgement reads it. Tiny model:
the map's quality is measured in bench/estimation_bench.py, not here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from controller.data import cldr
from controller.live_ops import LiveOperations
from controller.policy import parse_policy
from controller.training.crossfit import (
    calibrator_from_record,
    calibrator_record,
    cross_fitted,
)
from controller.training.distill import DistillConfig
from controller.training.pipeline import load_base, train_adapter
from registry import queries
from registry.errors import InvalidInput, XltError

TASK = "emoji-group"
CFG = DistillConfig(r=4, alpha=8, batch_size=16, max_length=24, warmup_steps=2,
                    ce_weight=1.0, source_labels=True, calibrate=True)


def test_adapter_stores_a_cross_fitted_map_that_the_controller_reads(tiny_registry) -> None:
    out = train_adapter(tiny_registry, TASK, "sw", base="tiny@1", epochs=1, device="cpu",
                        seed=1, config=CFG, limit_pairs=48, calibration_folds=3)
    row = tiny_registry.query(queries.show_adapter, TASK, "sw", out["version"])
    record = row["metrics"]["calibrator"]
    # one out-of-fold score per sw training row, plus the adapter's own dev rows
    rows = len(cldr.load_split("train", ["sw"])) + len(cldr.load_split("dev", ["sw"]))
    assert record["folds"] == 3 and record["n"] == rows
    assert row["hyperparams"]["calibration_folds"] == 3
    stored = calibrator_from_record(record)
    assert stored is not None and list(stored.x) == record["x"]

    ops = LiveOperations(tiny_registry, parse_policy(""))
    assert ops.calibrator(TASK, "sw", out["version"]) == stored

    # an adapter without a stored map is calibrated on dev, as before
    plain = train_adapter(tiny_registry, TASK, "sw", epochs=1, device="cpu", seed=2,
                          config=CFG, limit_pairs=48)
    plain_row = tiny_registry.query(queries.show_adapter, TASK, "sw", plain["version"])
    assert "calibrator" not in plain_row["metrics"]
    assert ops.calibrator(TASK, "sw", plain["version"]).n == len(cldr.load_split("dev", ["sw"]))


def test_no_fold_model_sees_the_items_it_scores(tiny_registry) -> None:
    """The recipe is called once per fold, without the fold's emoji in any language; the
    rows scored are exactly the held-out emoji's rows of the language."""
    _, encoder = load_base(tiny_registry, "tiny@1", "cpu")
    train = cldr.load_split("train", ["en", "sw"])
    train = train[train["emoji"].isin(sorted(set(train["emoji"]))[:40])].reset_index(drop=True)
    kept_sets: list[set[str]] = []

    def recipe(kept: pd.DataFrame):  # noqa: ANN202
        from controller.training.head import LinearHead

        kept_sets.append(set(kept["emoji"]))
        return encoder.model, LinearHead(encoder.hidden_size, len(cldr.LABELS)).eval()

    cal = cross_fitted(encoder, train, "sw", cldr.LABELS, recipe, folds=4, seed=0,
                       extra=(np.array([0.5]), np.array([True])))
    every = set(train["emoji"])
    held = [every - kept for kept in kept_sets]
    assert len(held) == 4 and all(held)
    assert set().union(*held) == every  # every item held out once ...
    assert sum(len(h) for h in held) == len(every)  # ... and only once
    assert cal.n == (train["language"] == "sw").sum() + 1


def test_bad_fold_counts_are_refused(tiny_registry) -> None:
    with pytest.raises(InvalidInput, match="calibration_folds"):
        train_adapter(tiny_registry, TASK, "sw", base="tiny@1", epochs=1, device="cpu",
                      config=CFG, limit_pairs=16, calibration_folds=1)
    assert tiny_registry.query(queries.list_adapters, TASK, "sw", None) == []
    with pytest.raises(XltError, match="at least 2 folds"):
        parse_policy("[training]\ncalibration_folds = 1\n")
    with pytest.raises(XltError):
        parse_policy("[training]\ncalibration_folds = -2\n")
    assert parse_policy("[training]\ncalibration_folds = 5\n").training.calibration_folds == 5


def test_calibration_folds_reach_the_training_job() -> None:
    from controller.phase_status import PhaseStatus
    from controller.reconciler import TrackState, training_params

    t = TrackState("e", "sw", "STEADY", PhaseStatus(), 1, 1, None, 0.0, base="me5-small@1")
    assert training_params(parse_policy(""), t, None)["calibration_folds"] == 0
    five = parse_policy("[training]\ncalibration_folds = 5\n")
    assert training_params(five, t, None)["calibration_folds"] == 5


@pytest.mark.parametrize("record", [None, "x", {"x": [0.1], "y": [0.2, 0.3], "n": 3},
                                    {"x": [0.5, 0.2], "y": [0.1, 0.2], "n": 2},
                                    {"x": ["a"], "y": [0.1], "n": 1}, {"x": [], "y": [], "n": 0}])
def test_malformed_stored_maps_are_ignored(record) -> None:
    assert calibrator_from_record(record) is None


def test_record_round_trip() -> None:
    from controller.estimation import fit_calibrator

    rng = np.random.default_rng(0)
    conf = rng.random(300)
    cal = fit_calibrator(conf, rng.random(300) < conf)
    back = calibrator_from_record(calibrator_record(cal, 5))
    assert back is not None and back.n == 300
    assert np.array_equal(back(conf), cal(conf))
