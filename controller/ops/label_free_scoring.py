"""What label-free judgement (controller.analysis.label_free) asks of the live models: labels and
confidences of an adapter on the requests' text, its isotonic confidence -> P(correct) map,
and the sharper per-request P(correct) of controller.analysis.estimation_features. Each map is the
one stored with the adapter at training time (controller.training.crossfit) where there is
one, else fitted on the dev split of what the track serves, once per adapter version."""

from __future__ import annotations

from itertools import islice
from typing import Any

import numpy as np

from controller.data.access import TaskData
from controller.ops.model_cache import ModelCache
from registry import queries
from registry.service import Registry

# requests whose (label, P(correct)) one process keeps (~200 bytes each plus the text, so
# ~40 MB when full): a guard re-reads its sliding window every tick, and a request's score
# by an immutable adapter version never changes, so each is scored once, not once per tick
CORRECTNESS_MEMO = 200_000


class LabelFreeScoring:
    """Mixed into LiveOperations, which sets these attributes."""

    reg: Registry
    models: ModelCache
    _calibrators: dict[tuple[str, str, int], Any]
    _feature_maps: dict[tuple[str, str, int], Any]
    _knn_refs: dict[tuple[str, str, int], tuple[Any, Any]]
    # (task, language, version, text) -> (label, P(correct)), least recently read first
    _correctness: dict[tuple[str, str, int, str], tuple[str, float]]

    def _served_rows(self, task: str, language: str, split: str) -> Any:
        """`split`'s labelled rows of what the track serves: its language and variants."""
        data = TaskData(self.reg, task)
        return data.labelled(split, [language, *data.variants(language)])

    def predict(self, task: str, language: str, version: int,
                texts: list[str]) -> tuple[list[str], Any]:
        return self.models.predict(task, language, version, texts)

    def calibrator(self, task: str, language: str, version: int) -> Any:
        """Isotonic confidence -> P(correct) of adapter `version`; CBPE assumes calibration.
        The cross-fitted map stored at training time when there is one (policy
        `calibration_folds`, in `[training]` or per track; controller.training.crossfit),
        else fitted on the dev split of what the track serves (its language and
        variants)."""
        from controller.analysis.estimation import fit_calibrator
        from controller.training.crossfit import calibrator_from_record

        key = (task, language, version)
        if key not in self._calibrators:
            row = self.reg.query(queries.show_adapter, task, language, version)
            stored = calibrator_from_record((row.get("metrics") or {}).get("calibrator"))
            if stored is not None:
                self._calibrators[key] = stored
                return stored
            dev = self._served_rows(task, language, "dev")
            labels, conf = self.models.predict(task, language, version, dev["text"].tolist())
            self._calibrators[key] = fit_calibrator(
                conf, [a == b for a, b in zip(labels, dev["label"], strict=True)])
        return self._calibrators[key]

    def _agreement(self, task: str, language: str, version: int, emb: Any, predicted: Any,
                   k: int) -> Any:
        """knn_agreement against the adapter's training rows of its language, embedded by
        the adapter (as crossfit.score_rows fitted it); cached per adapter version."""
        from controller.analysis.estimation_features import knn_agreement

        key = (task, language, version)
        if key not in self._knn_refs:
            rows = TaskData(self.reg, task).labelled("train", [language])
            _, labels = self.models.adapter(task, language, version)
            index = {name: i for i, name in enumerate(labels)}
            _, _, ref = self.models.probabilities(task, language, version,
                                                  rows["text"].tolist())
            self._knn_refs[key] = (ref, [index[x] for x in rows["label"]])
        ref, ref_y = self._knn_refs[key]
        return knn_agreement(emb, predicted, ref, ref_y, min(k, len(ref_y)))

    def feature_map(self, task: str, language: str, version: int) -> Any:
        """(FeatureCalibrator, k) of adapter `version`, or None: stored beside its isotonic
        map at training time; fitted on the dev split here when the adapter has no stored
        map at all (as `calibrator` is); None when only an isotonic map was stored (an
        adapter from before the feature map) or the adapter has no training rows."""
        from controller.training.crossfit import feature_calibrator_from_record

        key = (task, language, version)
        if key not in self._feature_maps:
            row = self.reg.query(queries.show_adapter, task, language, version)
            record = (row.get("metrics") or {}).get("calibrator")
            if record is not None or TaskData(self.reg, task).labelled("train", [language]).empty:
                self._feature_maps[key] = feature_calibrator_from_record(record)
            else:
                self._fit_on_dev(task, language, version)
        return self._feature_maps[key]

    def _fit_on_dev(self, task: str, language: str, version: int) -> None:
        """Both maps of an adapter that stored none, from one pass over the dev split of
        what the track serves (crossfit.fit_maps, as training fits them); the isotonic one
        is kept unless `calibrator` already fitted it."""
        from controller.analysis.estimation_features import request_features
        from controller.training.crossfit import KNN_K, Scored, fit_maps

        key = (task, language, version)
        dev = self._served_rows(task, language, "dev")
        labels, probs, emb = self.models.probabilities(task, language, version,
                                                       dev["text"].tolist())
        agree = self._agreement(task, language, version, emb, probs.argmax(1), KNN_K)
        correct = np.asarray(labels) == dev["label"].to_numpy()
        fitted = fit_maps(Scored(probs.max(1), correct, request_features(probs, agree)))
        self._calibrators.setdefault(key, fitted.isotonic)
        self._feature_maps[key] = (None if fitted.features is None
                                   else (fitted.features, KNN_K))

    def request_features(self, task: str, language: str, version: int, texts: list[str],
                         k: int) -> tuple[list[str], np.ndarray]:
        """Labels and the sharper map's features (estimation_features.FEATURES) of adapter
        `version` on `texts`."""
        from controller.analysis.estimation_features import request_features

        labels, probs, emb = self.models.probabilities(task, language, version, texts)
        agree = self._agreement(task, language, version, emb, probs.argmax(1), k)
        return labels, request_features(probs, agree)

    def correctness(self, task: str, language: str, version: int,
                    texts: list[str]) -> tuple[list[str], Any] | None:
        """Labels and P(correct) per request by the sharper map
        (controller.analysis.estimation_features), or None where the adapter has no feature map
        (label_free then uses `predict` and the isotonic `calibrator`). Requests already
        scored by this adapter version in this process are not scored again."""
        fm = self.feature_map(task, language, version)
        if fm is None:
            return None
        cal, k = fm
        memo = self._correctness
        todo = list(dict.fromkeys(t for t in texts if (task, language, version, t) not in memo))
        fresh: dict[str, tuple[str, float]] = {}
        if todo:
            labels, features = self.request_features(task, language, version, todo, k)
            fresh = {t: (label, float(p))
                     for t, label, p in zip(todo, labels, cal(features), strict=True)}
        scored = [fresh[t] if t in fresh else memo[(task, language, version, t)]
                  for t in texts]
        for t in dict.fromkeys(texts):  # least recently read last: a window's requests stay
            key = (task, language, version, t)
            memo[key] = fresh[t] if t in fresh else memo.pop(key)
        if len(memo) > CORRECTNESS_MEMO:  # the least recently read first
            for stale in list(islice(memo, len(memo) - CORRECTNESS_MEMO)):
                del memo[stale]
        return [label for label, _ in scored], np.array([p for _, p in scored])
