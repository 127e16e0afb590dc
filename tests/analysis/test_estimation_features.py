"""The sharper P(correct) map (controller.analysis.estimation_features): neighbours' agreement, the
request features, and a logistic map that uses them. Its real-data figures (the share of
windows within 3 points, beside the isotonic map) are in bench/estimation_bench.py."""

from __future__ import annotations

import numpy as np
import pytest

from controller.analysis import estimation_features
from controller.analysis.estimation import fit_calibrator
from controller.analysis.estimation_features import (
    FEATURES,
    FeatureCalibrator,
    fit_feature_calibrator,
    knn_agreement,
    request_features,
)

REF_X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
REF_Y = np.array([0, 0, 1, 1])


def test_knn_agreement_counts_neighbours_labelled_as_the_prediction() -> None:
    x = np.array([[1.0, 0.05], [1.0, 0.05], [0.05, 1.0]])
    assert knn_agreement(x, [0, 1, 0], REF_X, REF_Y, k=2).tolist() == [1.0, 0.0, 0.0]
    assert knn_agreement(x, [0, 1, 1], REF_X, REF_Y, k=4).tolist() == [0.5, 0.5, 0.5]
    # cosine, not distance: a long vector in the same direction has the same neighbours
    assert knn_agreement(x * 50, [0, 1, 1], REF_X, REF_Y, k=2).tolist() == [1.0, 0.0, 1.0]


def test_knn_agreement_is_the_same_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    x, ref = rng.normal(size=(7, 5)), rng.normal(size=(30, 5))
    pred, labels = rng.integers(0, 3, 7), rng.integers(0, 3, 30)
    whole = knn_agreement(x, pred, ref, labels, k=5)
    monkeypatch.setattr(estimation_features, "_CHUNK", 2)
    assert np.array_equal(knn_agreement(x, pred, ref, labels, k=5), whole)


@pytest.mark.parametrize("x, pred, ref_y, k, message", [
    (np.ones((2, 3)), [0, 1], REF_Y, 2, "same width"),
    (np.ones((2, 2)), [0], REF_Y, 2, "one predicted label per row"),
    (np.ones((2, 2)), [0, 1], REF_Y[:3], 2, "one label per reference row"),
    (np.ones((2, 2)), [0, 1], REF_Y, 5, "k must be between 1 and the 4"),
    (np.ones((2, 2)), [0, 1], REF_Y, 0, "k must be between 1 and the 4"),
])
def test_knn_agreement_refuses_bad_input(x, pred, ref_y, k, message) -> None:
    with pytest.raises(ValueError, match=message):
        knn_agreement(x, pred, REF_X, ref_y, k=k)


def test_request_features_in_their_declared_order() -> None:
    f = request_features(np.array([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]]), np.array([0.3, 1.0]))
    assert f.shape == (2, len(FEATURES))
    expected_entropy = -(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1))
    assert np.allclose(f[0], [np.log(0.7 / 0.3), 0.5, expected_entropy, 0.3])
    assert np.allclose(f[1], [0.0, 0.0, np.log(2), 1.0])
    with pytest.raises(ValueError, match="one agreement per row"):
        request_features(np.array([[0.7, 0.3]]), np.array([0.1, 0.2]))


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Requests whose correctness follows their neighbours' agreement (0.9 where the
    neighbourhood agrees, 0.2 where it does not) more than their confidence."""
    rng = np.random.default_rng(seed)
    agree = (rng.random(n) < 0.6).astype(float)
    p_true = np.where(agree == 1.0, 0.9, 0.2)
    top = np.clip(0.45 + 0.2 * rng.random(n) + 0.1 * agree, 0.34, 0.99)
    probs = np.column_stack([top, (1 - top) * 0.6, (1 - top) * 0.4])
    return request_features(probs, agree), probs.max(1), rng.random(n) < p_true


def test_sharper_map_is_calibrated_and_sharper_than_confidence_alone() -> None:
    feats, conf, hit = synthetic(4000, seed=1)
    test_feats, test_conf, test_hit = synthetic(4000, seed=2)
    sharper = fit_feature_calibrator(feats, hit)
    iso = fit_calibrator(conf, hit)
    p_sharp, p_iso = sharper(test_feats), iso(test_conf)
    assert abs(p_sharp.mean() - test_hit.mean()) < 0.02  # calibrated on unseen rows
    # sharper: less realisation variance per request, and a lower Brier score
    assert (p_sharp * (1 - p_sharp)).mean() < 0.8 * (p_iso * (1 - p_iso)).mean()
    assert ((p_sharp - test_hit) ** 2).mean() < ((p_iso - test_hit) ** 2).mean() - 0.01


def test_feature_calibrator_round_trips_and_refuses_what_it_cannot_read() -> None:
    feats, _, hit = synthetic(500, seed=3)
    cal = fit_feature_calibrator(feats, hit)
    again = FeatureCalibrator.from_dict(cal.to_dict())
    assert again == cal and np.array_equal(again(feats), cal(feats))
    with pytest.raises(ValueError, match="not \\['logit_confidence'"):
        FeatureCalibrator.from_dict({**cal.to_dict(), "features": ["confidence"]})
    with pytest.raises(ValueError, match="3 coefficients, expected 4"):
        FeatureCalibrator.from_dict({**cal.to_dict(), "coef": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="expected an \\(n, 4\\) feature array"):
        cal(feats[:, :3])
    with pytest.raises(ValueError, match="both right and wrong"):
        fit_feature_calibrator(feats, np.ones(len(feats), dtype=bool))
    with pytest.raises(ValueError, match="one correctness flag per row"):
        fit_feature_calibrator(feats, hit[:-1])
