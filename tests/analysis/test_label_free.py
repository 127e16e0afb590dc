"""Label-free judgement on the tiny model and the shipped CLDR data: CBPE estimates from
calibrated confidences, canary verdicts with no labels (agreement + paired estimate), the
policy's evidence per language, and the guard's label-free regression check. The real-data
figures (MiniLM, 3-point criterion) are in bench/estimation_bench.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from controller.analysis.canary import analyse
from controller.analysis.estimation import (
    clustered_se,
    estimate_accuracy,
    fit_calibrator,
    share_within,
    wilson_upper,
)
from controller.analysis.gates import guard_verdict
from controller.analysis.label_free import gather
from controller.data import cldr
from controller.encoders.text import TextEncoder
from controller.policy import CanaryPolicy, parse_policy
from controller.training.embed import embed_sorted
from controller.training.head import LinearHead, train_head

TASK, LANG = "emoji-group", "en"


class HeadModels:
    """Versions 1..3 of one language served by heads over the tiny base's embeddings:
    1 trained on the labels, 2 on shuffled labels, 3 always the rarest group."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.encoder = encoder
        self.cache: dict[str, np.ndarray] = {}
        index = {name: i for i, name in enumerate(cldr.LABELS)}
        train = cldr.load_split("train", [LANG])
        x = self.embed(train["text"].tolist())
        y = np.array([index[v] for v in train["label"]])
        constant = LinearHead(x.shape[1], len(cldr.LABELS))
        with torch.no_grad():
            constant.linear.weight.zero_()
            constant.linear.bias.copy_(torch.tensor(
                [3.0 if name == "Component" else 0.0 for name in cldr.LABELS]))
        self.heads = {1: train_head(x, y, len(cldr.LABELS)),
                      2: train_head(x, np.random.default_rng(0).permutation(y),
                                    len(cldr.LABELS)),
                      3: constant.eval()}
        dev = cldr.load_split("dev", [LANG])
        self.calibrators = {}
        for version in self.heads:
            labels, conf = self.predict(TASK, LANG, version, dev["text"].tolist())
            self.calibrators[version] = fit_calibrator(
                conf, np.asarray(labels) == dev["label"].to_numpy())

    def embed(self, texts: list[str]) -> np.ndarray:
        todo = sorted({t for t in texts if t not in self.cache})
        if todo:
            for t, v in zip(todo, embed_sorted(self.encoder, todo).numpy(), strict=True):
                self.cache[t] = v
        return np.stack([self.cache[t] for t in texts])

    def predict(self, task: str, language: str, version: int, texts: list[str]
                ) -> tuple[list[str], np.ndarray]:
        probs = self.heads[version].predict_proba(self.embed(list(texts)))
        return [cldr.LABELS[i] for i in probs.argmax(1)], probs.max(1)

    def calibrator(self, task: str, language: str, version: int):  # noqa: ANN201
        return self.calibrators[version]

    def feature_map(self, task: str, language: str, version: int) -> None:
        return None  # these heads have no sharper map: judged by the isotonic one

    def correctness(self, task: str, language: str, version: int,
                    texts: list[str]) -> None:
        return None


@pytest.fixture(scope="module")
def models(tiny_model_dir: Path) -> HeadModels:
    return HeadModels(TextEncoder(tiny_model_dir, device="cpu"))


@pytest.fixture(scope="module")
def test_rows():
    return cldr.load_split("test", [LANG]).reset_index(drop=True)


def window(models: HeadModels, rows, canary: int, champion: int, n: int, seed: int,
           labelled: float = 0.0) -> list[dict]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(rows), n)
    arm = rng.random(n) < 0.5
    texts = [rows["text"][i] for i in idx]
    out = []
    for version in (canary, champion):
        labels, conf = models.predict(TASK, LANG, version, texts)
        for j, i in enumerate(idx):
            if bool(arm[j]) == (version == canary):
                out.append({"adapter_version": version, "prediction": labels[j],
                            "confidence": float(conf[j]), "text": texts[j],
                            "routing_key": f"user-{j}",
                            "feedback_label": rows["label"][i] if rng.random() < labelled
                            else None})
    return out


def test_cbpe_estimate_tracks_true_accuracy_with_labels_hidden(models, test_rows) -> None:
    labels, conf = models.predict(TASK, LANG, 1, test_rows["text"].tolist())
    correct = np.asarray(labels) == test_rows["label"].to_numpy()
    rng = np.random.default_rng(1)
    errors = []
    for _ in range(20):
        idx = rng.integers(0, len(test_rows), 1000)
        est = estimate_accuracy(models.calibrators[1], conf[idx])
        errors.append(abs(est.accuracy - correct[idx].mean()))
        assert 0 < est.std_error < 0.03
    assert np.mean(np.array(errors) <= 0.05) >= 0.9, errors


def test_canary_with_no_labels_passes_better_and_fails_worse(models, test_rows) -> None:
    policy = CanaryPolicy(min_estimate_events=50)
    for canary, champion, expected in ((1, 3, "pass"), (3, 1, "fail")):
        events = window(models, test_rows, canary, champion, 1000, seed=canary)
        evidence = gather(models, TASK, LANG, canary, champion, events, policy,
                          policy.evidence)
        assert evidence is not None and evidence.paired is not None
        verdict = analyse([e for e in events if e["adapter_version"] == canary],
                          [e for e in events if e["adapter_version"] == champion], policy,
                          None, policy.evidence, evidence)
        assert verdict.verdict == expected, verdict.reason
        assert verdict.evidence == "estimate"
        assert verdict.label_free and verdict.label_free["paired"]["n"] == 1000
        assert "interval" in verdict.reason  # the uncertainty is in the verdict


def test_policy_decides_which_evidence_counts(models, test_rows) -> None:
    policy = parse_policy("""
[[tracks]]
task = "emoji-group"
language = "en"
evidence = ["labels"]
""")
    assert policy.evidence_for(TASK, "en") == ["labels"]
    assert policy.evidence_for(TASK, "sw") == ["labels", "estimate", "agreement"]
    events = window(models, test_rows, 3, 1, 400, seed=5)
    # labels only: no label-free evidence is gathered, and no labels means no verdict
    assert gather(models, TASK, LANG, 3, 1, events, policy.canary, ["labels"]) is None
    verdict = analyse([e for e in events if e["adapter_version"] == 3],
                      [e for e in events if e["adapter_version"] == 1], policy.canary,
                      None, ["labels"], None)
    assert verdict.verdict == "inconclusive"
    # the same model on both arms agrees everywhere: agreement alone may pass it
    models.heads[4] = models.heads[1]
    models.calibrators[4] = models.calibrators[1]
    same = window(models, test_rows, 4, 1, 400, seed=6)
    evidence = gather(models, TASK, LANG, 4, 1, same, policy.canary, ["agreement"])
    verdict = analyse([e for e in same if e["adapter_version"] == 4],
                      [e for e in same if e["adapter_version"] == 1], policy.canary, None,
                      ["agreement"], evidence)
    assert (verdict.verdict, verdict.evidence) == ("pass", "agreement"), verdict.reason
    # enough labels: labels decide, the estimate is not even computed
    labelled = window(models, test_rows, 3, 1, 400, seed=7, labelled=1.0)
    assert gather(models, TASK, LANG, 3, 1, labelled, policy.canary,
                  ["labels", "estimate"]) is None
    verdict = analyse([e for e in labelled if e["adapter_version"] == 3],
                      [e for e in labelled if e["adapter_version"] == 1], policy.canary)
    assert (verdict.verdict, verdict.evidence) == ("fail", "labels")


def test_guard_rolls_back_on_an_estimated_regression(models, test_rows) -> None:
    policy = CanaryPolicy(min_estimate_events=50)
    base_acc = estimate_accuracy(models.calibrators[1],
                                 models.predict(TASK, LANG, 1,
                                                test_rows["text"].tolist())[1]).accuracy
    for version, expected in ((3, "regression"), (1, "ok")):
        rows = [e for e in window(models, test_rows, version, 2, 1200, seed=9)
                if e["adapter_version"] == version]
        est = estimate_accuracy(models.calibrators[version], [r["confidence"] for r in rows])
        judged = guard_verdict(rows, base_acc, 0.05, policy, policy.evidence, est)
        assert (judged.state, judged.evidence) == (expected, "estimate"), judged.reason
    judged = guard_verdict(rows, base_acc, 0.05, policy, ["labels"], est)
    assert judged.state == "waiting"


def test_wilson_bound() -> None:
    assert wilson_upper(0, 1000, 0.05) < 0.004
    assert 0.05 < wilson_upper(50, 1000, 0.05) < 0.07
    assert wilson_upper(0, 0, 0.05) == 1.0


def test_cross_fitted_calibrator_holds_out_every_group_once() -> None:
    """Each group is scored by exactly one fold, and the calibration set is the out-of-fold
    rows plus the extra (dev) rows: a model that is right exactly when its confidence is
    above 0.5 gets a calibrator that says so."""
    from controller.analysis.estimation import cross_fitted_calibrator

    groups = [f"e{i // 2}" for i in range(40)]  # 20 groups of 2 rows (name, keywords)
    conf = np.linspace(0.05, 0.95, 40)
    seen: list[frozenset[str]] = []

    def fit_score(held: frozenset[str]) -> tuple[np.ndarray, np.ndarray]:
        seen.append(held)
        rows = np.array([g in held for g in groups])
        return conf[rows], conf[rows] > 0.5

    cal = cross_fitted_calibrator(groups, fit_score, folds=4,
                                  extra=([0.1, 0.9], [False, True]))
    assert len(seen) == 4 and sorted(g for h in seen for g in h) == sorted(set(groups))
    assert cal.n == 42
    assert cal([0.2])[0] == 0.0 and cal([0.8])[0] == 1.0
    with pytest.raises(ValueError, match="groups"):
        cross_fitted_calibrator(groups[:4], fit_score, folds=5)


def test_label_shift_weights_recover_a_known_shift() -> None:
    """BBSE/RLLS on a classifier that is right on 3 classes and confuses the last two
    evenly: weights come from the predicted labels only, recover q(y)/p(y) where the
    confusion matrix can be inverted, and a large ridge pulls them to "no shift"."""
    from controller.analysis.estimation import label_shift_weights

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 4000)
    yhat = np.where(y < 2, y, 2 + rng.integers(0, 2, y.size))  # classes 2 and 3 mixed up
    prior = np.bincount(y, minlength=4) / y.size
    target = np.array([0.55, 0.05, 0.2, 0.2])
    window_y = rng.choice(4, 3000, p=target)
    window = np.where(window_y < 2, window_y, 2 + rng.integers(0, 2, window_y.size))
    w = label_shift_weights(y, yhat, window, 4, ridge=1e-6)
    assert np.allclose(w[:2], target[:2] / prior[:2], rtol=0.12)
    # 2 and 3 are not told apart: only their total mass is identified
    assert abs((w[2:] * prior[2:]).sum() - 0.4) < 0.05
    assert np.allclose(label_shift_weights(y, yhat, window, 4, ridge=1e3), 1.0, atol=0.01)
    with pytest.raises(ValueError, match="class indices"):
        label_shift_weights(y, yhat, window + 1, 4)
    with pytest.raises(ValueError, match="non-empty window"):
        label_shift_weights(y, yhat, [], 4)


def test_weighted_calibrator_counts_rows_by_weight() -> None:
    """Zero weight drops a row; a weight of 2 counts it twice; bad weights are refused."""
    conf = np.array([0.2, 0.4, 0.6, 0.8, 0.8])
    hit = np.array([False, True, False, True, False])
    dropped = fit_calibrator(conf, hit, weights=[1, 1, 1, 1, 0])
    assert np.allclose(dropped([0.2, 0.4, 0.6, 0.8]),
                       fit_calibrator(conf[:4], hit[:4])([0.2, 0.4, 0.6, 0.8]))
    doubled = fit_calibrator(conf, hit, weights=[1, 1, 1, 2, 1])
    assert np.allclose(doubled([0.8]), fit_calibrator(np.r_[conf, 0.8], np.r_[hit, True])([0.8]))
    with pytest.raises(ValueError, match="non-negative"):
        fit_calibrator(conf, hit, weights=[1, 1, -1, 1, 1])


def test_clustered_standard_error_counts_groups_not_rows() -> None:
    rng = np.random.default_rng(0)
    r = rng.normal(0, 1, 2000)
    plain = float(np.sqrt(((r - r.mean()) ** 2).sum()) / r.size)
    assert clustered_se(r, np.arange(r.size)) == pytest.approx(plain)
    # every value twice (an emoji's two rows, right or wrong together): no more information
    # than the 2,000 values, where counting rows would claim sqrt(2) less error
    twice = np.repeat(r, 2)
    naive = float(np.sqrt(((twice - twice.mean()) ** 2).sum()) / twice.size)
    clustered = clustered_se(twice, np.repeat(np.arange(r.size), 2))
    assert clustered == pytest.approx(plain, rel=1e-6)
    assert clustered == pytest.approx(naive * np.sqrt(2), rel=1e-6)
    with pytest.raises(ValueError):
        clustered_se(r, np.arange(3))
    assert share_within(0.03 / 1.959964) == pytest.approx(0.95, abs=1e-4)
    assert share_within(0.0) == 1.0
