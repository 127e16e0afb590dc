"""Pools and windows for bench/estimation_bench.py: where a window's requests come from
(re-splits of all emoji, or the shipped splits), how one is drawn, and how an estimate's
error on it is measured and budgeted."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from controller.analysis.estimation import (
    Calibrator,
    clustered_se,
    estimate_accuracy,
    fit_calibrator,
    label_shift_weights,
    share_within,
)
from controller.data import cldr

Split = tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]


def shipped_split(language: str, pool: str) -> Split:
    """English training rows, L's training and dev rows, and the window pool, from the
    shipped splits (pool: the test split, or dev + test)."""
    english = cldr.load_split("train", ["en"])
    train, dev = cldr.load_split("train", [language]), cldr.load_split("dev", [language])
    rows = cldr.load_split("test", [language])
    if pool == "dev+test":
        rows = pd.concat([dev, rows])
    return english, train, dev, rows.reset_index(drop=True)


def heldout_split(every: pd.DataFrame, language: str, seed: int, train_share: float,
                  dev_share: float) -> Split:
    """A re-split of all emoji by `seed` (the same emoji sets in every language): English
    and L training rows, L's dev rows, and the pool (L's rows of the remaining emoji)."""
    emoji = np.array(sorted(every["emoji"].unique()))
    order = np.random.default_rng(seed).permutation(len(emoji))
    n_train, n_dev = int(train_share * len(emoji)), int(dev_share * len(emoji))
    train_set, dev_set = set(emoji[order[:n_train]]), set(emoji[order[n_train:n_train + n_dev]])
    mine = every[every["language"] == language]
    in_train, in_dev = mine["emoji"].isin(train_set), mine["emoji"].isin(dev_set)
    english = every[(every["language"] == "en") & every["emoji"].isin(train_set)]
    return (english.reset_index(drop=True), mine[in_train].reset_index(drop=True),
            mine[in_dev].reset_index(drop=True), mine[~in_train & ~in_dev].reset_index(drop=True))


def draw(pool: Any, n: int, rng: np.random.Generator, shifted: bool, distinct: bool
         ) -> np.ndarray:
    """Row indices of a window: uniform, or a label-mix shift (two groups favoured 4:1);
    `distinct`: n different requests of the pool, else n draws with replacement."""
    weight = np.ones(len(pool))
    if shifted:
        favoured = rng.choice(cldr.LABELS, 2, replace=False)
        weight = np.where(pool["label"].isin(favoured), 4.0, 1.0)
    return rng.choice(len(pool), n, replace=not distinct, p=weight / weight.sum())


def window_errors(cal: Calibrator, cal_rows: tuple[np.ndarray, ...], conf: np.ndarray,
                  sharp: np.ndarray, predicted: np.ndarray, correct: np.ndarray,
                  idx: np.ndarray, ridge: float, rng: np.random.Generator
                  ) -> dict[str, float]:
    """Estimate minus truth on one window: CBPE; CBPE with the sharper map (`sharp`: the
    pool's P(correct) from confidence, margin, entropy and neighbours' agreement); CBPE with
    the calibration rows reweighted by the window's estimated label shift (RLLS); and the
    floor of this window design: a
    perfectly calibrated estimator, whose pool items are right with exactly their
    calibrated probability (one simulated draw), still misses by the items' own chance."""
    truth = float(correct[idx].mean())
    out = {"cbpe": estimate_accuracy(cal, conf[idx]).accuracy - truth,
           "sharper": float(sharp[idx].mean()) - truth}
    c_conf, c_hit, c_pred, c_true, *_ = cal_rows
    w = label_shift_weights(c_true, c_pred, predicted[idx], len(cldr.LABELS), ridge=ridge)
    shifted = fit_calibrator(c_conf, c_hit, weights=w[c_true] + 1e-9)
    out["rlls"] = estimate_accuracy(shifted, conf[idx]).accuracy - truth
    p = cal(conf)
    simulated = rng.random(p.size) < p
    out["perfect"] = float(p[idx].mean() - simulated[idx].mean())
    return out


def error_budget(p_pool: np.ndarray, correct: np.ndarray, pool_groups: np.ndarray,
                 p_cal: np.ndarray, cal_rows: tuple[np.ndarray, ...], window: int
                 ) -> dict[str, float]:
    """Where an estimate's error comes from, for one model and one map (its P(correct) on
    the pool rows, `p_pool`, and on its calibration rows, `p_cal`):
    - realisation (`sigma_window`): even with an exact map to P(correct), a window's
      realised accuracy scatters around its expectation; measured from the pool's
      residuals (P(correct) minus correctness), clustered by emoji, scaled to the window's
      size; a sharper map (P(correct) nearer 0 or 1) has less of it;
    - calibration level (`sigma_map`): the map is fitted on finitely many calibration rows
      (clustered by emoji too), so its level is itself an estimate with this standard error.
    `floor` is the share of windows within 3 points an exact map would reach; `predicted`
    adds the map's own error, for comparison with the observed share."""
    residual = p_pool - correct
    sigma_window = clustered_se(residual, pool_groups) * np.sqrt(residual.size / window)
    _, c_hit, _, _, c_groups, _ = cal_rows
    sigma_map = clustered_se(p_cal - c_hit, c_groups)
    return {"sigma_window": sigma_window, "sigma_map": sigma_map,
            "floor": share_within(sigma_window),
            "predicted": share_within(float(np.hypot(sigma_window, sigma_map)))}


def share(errors: list[float], mask: np.ndarray | None = None) -> float:
    e = np.abs(np.asarray(errors))
    return round(float(np.mean((e if mask is None else e[mask]) <= 0.03)), 4)
