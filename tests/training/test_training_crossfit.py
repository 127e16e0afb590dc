"""Cross-fitted calibration at training time (controller.training.crossfit): every training
row of the language is scored once by a fold model that never saw its item, the map is
stored with the adapter, and the controller's label-free judgement reads it. Tiny model:
the map's quality is measured in bench/estimation_bench.py, not here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from controller.analysis.estimation_features import FEATURES, FeatureCalibrator
from controller.analysis.label_free import arm_estimate, gather
from controller.data import cldr
from controller.data.access import TaskData
from controller.policy import parse_policy
from controller.runtime.bootstrap import build_operations
from controller.training.crossfit import (
    Fitted,
    Scored,
    calibrator_from_record,
    calibrator_record,
    cross_fitted,
    feature_calibrator_from_record,
)
from controller.training.distill import DistillConfig
from controller.training.pipeline import load_base, train_adapter
from registry import queries
from registry.errors import InvalidInput, XltError

TASK = "emoji-group"
CFG = DistillConfig(r=4, alpha=8, batch_size=16, max_length=24, warmup_steps=2,
                    ce_weight=1.0, source_labels=True, calibrate=True)


def test_adapter_stores_a_cross_fitted_map_that_the_controller_reads(tiny_registry,
                                                                     monkeypatch) -> None:
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

    # the sharper map, from the same rows, with its neighbour count
    assert record["features"]["n"] == rows and record["features"]["k"] == 10
    assert len(record["features"]["coef"]) == len(FEATURES)

    ops = build_operations(tiny_registry, parse_policy(""))
    assert ops.calibrator(TASK, "sw", out["version"]) == stored
    sharper, k = ops.feature_map(TASK, "sw", out["version"])
    assert sharper == FeatureCalibrator.from_dict(record["features"]) and k == 10
    texts = cldr.load_split("test", ["sw"])["text"].tolist()[:40]
    labels, p = ops.correctness(TASK, "sw", out["version"], texts)
    assert labels == ops.predict(TASK, "sw", out["version"], texts)[0]
    assert p.shape == (40,) and np.all((p > 0) & (p < 1))

    # a request is scored once per adapter version and process (a guard re-reads its
    # sliding window every tick): only the 10 new texts are scored, duplicates once
    batches: list[int] = []
    real = ops.request_features

    def counting(task: str, language: str, version: int, todo: list[str], k: int):
        batches.append(len(todo))
        return real(task, language, version, todo, k)

    ops.request_features = counting  # type: ignore[method-assign]
    more = cldr.load_split("test", ["sw"])["text"].tolist()[:50]
    again, p_again = ops.correctness(TASK, "sw", out["version"], [*more, *more[:5]])
    assert batches == [10] and again[:40] == labels and np.array_equal(p_again[:40], p)
    assert again[50:] == again[:5] and np.array_equal(p_again[50:], p_again[:5])
    # the same figures as scoring them afresh; the memo keeps its newest entries
    monkeypatch.setattr("controller.ops.label_free_scoring.CORRECTNESS_MEMO", 45)
    fresh = build_operations(tiny_registry, parse_policy(""))
    labels_fresh, p_fresh = fresh.correctness(TASK, "sw", out["version"], more)
    assert labels_fresh == again[:50] and np.allclose(p_fresh, p_again[:50], atol=1e-5)
    assert len(fresh._correctness) == 45
    assert (TASK, "sw", out["version"], more[0]) not in fresh._correctness
    # a request read again moves to the back: the next one out is the least recently read
    fresh.correctness(TASK, "sw", out["version"], [more[5]])
    fresh.correctness(TASK, "sw", out["version"], [more[0]])
    assert (TASK, "sw", out["version"], more[5]) in fresh._correctness
    assert (TASK, "sw", out["version"], more[6]) not in fresh._correctness

    # an adapter without a stored map is calibrated on dev, as before
    plain = train_adapter(tiny_registry, TASK, "sw", epochs=1, device="cpu", seed=2,
                          config=CFG, limit_pairs=48)
    plain_row = tiny_registry.query(queries.show_adapter, TASK, "sw", plain["version"])
    assert "calibrator" not in plain_row["metrics"]
    assert ops.calibrator(TASK, "sw", plain["version"]).n == len(cldr.load_split("dev", ["sw"]))
    # ... and so is its sharper map, with the adapter's sw training rows as neighbours
    fm = ops.feature_map(TASK, "sw", plain["version"])
    assert fm is not None and fm[0].n == len(cldr.load_split("dev", ["sw"]))
    # one dev pass fits both maps: asked for the sharper map first, a process keeps the
    # isotonic map of the same pass, the one `calibrator` fits on its own
    other = build_operations(tiny_registry, parse_policy(""))
    first = other.feature_map(TASK, "sw", plain["version"])[0]
    assert (TASK, "sw", plain["version"]) in other._calibrators  # before `calibrator` asks
    assert first.n == fm[0].n and first.coef == pytest.approx(fm[0].coef, abs=1e-4)
    iso, own = (o.calibrator(TASK, "sw", plain["version"]) for o in (other, ops))
    assert iso.n == own.n and iso.y == pytest.approx(own.y, abs=1e-4)

    # label-free evidence on requests with text: both arms re-scored by the sharper map
    canary, champion = out["version"], plain["version"]
    events = [{"adapter_version": canary if i % 2 else champion, "confidence": 0.5,
               "text": t, "feedback_label": None} for i, t in enumerate(texts)]
    policy = parse_policy("").canary
    evidence = gather(ops, TASK, "sw", canary, champion, events, policy, policy.evidence)
    assert evidence is not None and evidence.estimator == "features"
    assert evidence.paired is not None and evidence.paired.n == 40
    assert evidence.canary is not None and evidence.canary.n == 20
    _, p_champion = ops.correctness(TASK, "sw", champion, texts)
    assert evidence.champion.accuracy == pytest.approx(float(np.mean(p_champion[0::2])))
    guard = arm_estimate(ops, TASK, "sw", canary, events[1::2], policy, policy.evidence)
    assert guard is not None
    assert guard.accuracy == pytest.approx(evidence.canary.accuracy, abs=1e-4)
    # a guard whose baseline came from the isotonic map stays on it
    iso = arm_estimate(ops, TASK, "sw", canary, events[1::2], policy, policy.evidence,
                       "confidence")
    assert iso is not None and iso.accuracy == pytest.approx(
        float(ops.calibrator(TASK, "sw", canary)([0.5] * 20).mean()))
    # the policy may keep the isotonic map of the logged confidence ...
    plain_policy = parse_policy("[canary]\nestimator = \"confidence\"\n").canary
    evidence = gather(ops, TASK, "sw", canary, champion, events, plain_policy,
                      plain_policy.evidence)
    assert evidence is not None and evidence.estimator == "confidence"
    # ... and a request whose text was not kept leaves the sharper map out
    cut = [*events[:-1], {**events[-1], "text": None}]
    evidence = gather(ops, TASK, "sw", canary, champion, cut, policy, policy.evidence)
    assert evidence is not None and evidence.estimator == "confidence"
    assert evidence.paired is None
    with pytest.raises(XltError, match="estimator"):
        parse_policy("[canary]\nestimator = \"knn\"\n")


def test_no_fold_model_sees_the_items_it_scores(tiny_registry) -> None:
    """The recipe is called once per fold, without the fold's items in any language; the
    rows scored are exactly the held-out items' rows of the language."""
    _, encoder = load_base(tiny_registry, "tiny@1", "cpu")
    # the task's registered rows: one item (emoji and kind) has one id in every language
    train = TaskData(tiny_registry, "emoji-group").labelled("train", ["en", "sw"])
    train = train[train["id"].isin(sorted(set(train["id"]))[:40])].reset_index(drop=True)
    kept_sets: list[set[str]] = []

    def recipe(kept: pd.DataFrame):  # noqa: ANN202
        from controller.training.head import LinearHead

        kept_sets.append(set(kept["id"]))
        return encoder.model, LinearHead(encoder.hidden_size, len(cldr.LABELS)).eval()

    fitted = cross_fitted(encoder, train, "sw", cldr.LABELS, recipe, folds=4, seed=0,
                          extra=Scored(np.array([0.5]), np.array([True]), np.zeros((1, 4))))
    every = set(train["id"])
    held = [every - kept for kept in kept_sets]
    assert len(held) == 4 and all(held)
    assert set().union(*held) == every  # every item held out once ...
    assert sum(len(h) for h in held) == len(every)  # ... and only once
    assert fitted.isotonic.n == (train["language"] == "sw").sum() + 1
    assert fitted.features is None or fitted.features.n == fitted.isotonic.n


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
    from controller.loop.phase_status import PhaseStatus
    from controller.loop.reconciler import TrackState, training_params

    t = TrackState("e", "sw", "STEADY", PhaseStatus(), 1, 1, None, 0.0, base="me5-small@1")
    assert training_params(parse_policy(""), t, None)["calibration_folds"] == 0
    five = parse_policy("[training]\ncalibration_folds = 5\n")
    assert training_params(five, t, None)["calibration_folds"] == 5
    # per track: a language judged without labels alone pays for the folds
    per_track = parse_policy('[[tracks]]\ntask = "e"\nlanguage = "sw"\ncalibration_folds = 5\n'
                             'evidence = ["estimate", "agreement"]\n')
    assert training_params(per_track, t, None)["calibration_folds"] == 5
    other = TrackState("e", "am", "STEADY", PhaseStatus(), 1, 1, None, 0.0, base="me5-small@1")
    assert training_params(per_track, other, None)["calibration_folds"] == 0
    off = parse_policy('[training]\ncalibration_folds = 5\n[[tracks]]\ntask = "e"\n'
                       'language = "sw"\ncalibration_folds = 0\n')
    assert training_params(off, t, None)["calibration_folds"] == 0
    assert training_params(off, other, None)["calibration_folds"] == 5
    for bad in ("1", "-1", '"five"'):
        with pytest.raises(XltError, match="calibration_folds"):
            parse_policy(f'[[tracks]]\ntask = "e"\nlanguage = "sw"\ncalibration_folds = {bad}\n')


@pytest.mark.parametrize("record", [None, "x", {"x": [0.1], "y": [0.2, 0.3], "n": 3},
                                    {"x": [0.5, 0.2], "y": [0.1, 0.2], "n": 2},
                                    {"x": ["a"], "y": [0.1], "n": 1}, {"x": [], "y": [], "n": 0}])
def test_malformed_stored_maps_are_ignored(record) -> None:
    assert calibrator_from_record(record) is None


def test_record_round_trip() -> None:
    from controller.analysis.estimation import fit_calibrator

    rng = np.random.default_rng(0)
    conf = rng.random(300)
    cal = fit_calibrator(conf, rng.random(300) < conf)
    record = calibrator_record(Fitted(cal, None), 5)
    assert "features" not in record and feature_calibrator_from_record(record) is None
    back = calibrator_from_record(record)
    assert back is not None and back.n == 300
    assert np.array_equal(back(conf), cal(conf))


@pytest.mark.parametrize("features", [
    {"coef": [1.0, 0.0, 0.0], "intercept": 0.0, "n": 5, "features": list(FEATURES), "k": 10},
    {"intercept": 0.0, "n": 5, "features": list(FEATURES), "k": 10},
    {"coef": [1, 0, 0, 0], "intercept": "x", "n": 5, "features": list(FEATURES), "k": 10},
    {"coef": [1, 0, 0, 0], "intercept": 0.0, "n": 5, "features": ["conf"], "k": 10},
    {"coef": [1, 0, 0, 0], "intercept": 0.0, "n": 5, "features": None, "k": 10},
    {"coef": [1, 0, 0, 0], "intercept": 0.0, "n": float("inf"), "features": list(FEATURES),
     "k": 10},
    {"coef": [1, 0, 0, 0], "intercept": 0.0, "n": 5, "features": list(FEATURES), "k": 0},
    {"coef": [1, 0, 0, 0], "intercept": float("nan"), "n": 5, "features": list(FEATURES),
     "k": 10},
    "not a map"])
def test_malformed_stored_feature_maps_are_ignored(features) -> None:
    """The isotonic map decides instead: a broken record never reaches a verdict."""
    assert feature_calibrator_from_record({"x": [0.5], "y": [0.5], "n": 1,
                                           "features": features}) is None


def test_feature_map_record_round_trip() -> None:
    from controller.analysis.estimation import fit_calibrator
    from controller.analysis.estimation_features import fit_feature_calibrator

    rng = np.random.default_rng(1)
    f = rng.normal(size=(400, len(FEATURES)))
    hit = rng.random(400) < 1 / (1 + np.exp(-f[:, 0]))
    fitted = Fitted(fit_calibrator(rng.random(400), hit), fit_feature_calibrator(f, hit))
    record = calibrator_record(fitted, 5, k=7)
    back = feature_calibrator_from_record(record)
    assert back is not None and back[1] == 7
    assert np.array_equal(back[0](f), fitted.features(f))  # type: ignore[misc]
    with pytest.raises(ValueError, match="lacks coef"):
        FeatureCalibrator.from_dict({"features": list(FEATURES), "intercept": 0, "n": 3})
