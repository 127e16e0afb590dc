"""The reconciler's operations, done for real: drift checks on logged traffic against a
cached reference, training through the pipeline, evaluation on held-out items, and reads
of live traffic. Models are cached per process (ModelCache)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from controller.data.access import TaskData
from controller.drift.check import check_language
from controller.drift.reference import build_reference, get_or_build, reference_key
from controller.drift.store import RegistryReferenceStore, record_result
from controller.drift.traffic_reference import traffic_reference
from controller.loop.clock import Clock, SystemClock
from controller.loop.gate_steps import fairness_targets
from controller.loop.operations import DriftOutcome
from controller.ops.label_free_scoring import LabelFreeScoring
from controller.ops.model_cache import ModelCache
from controller.policy import DriftPolicy, Policy
from controller.traffic.log import read_window
from controller.training.evaluate import evaluate_split
from controller.training.pipeline import train_adapter
from registry import queries
from registry.service import Registry

log = logging.getLogger("xlt.controller")


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class LiveOperations(LabelFreeScoring):
    def __init__(self, registry: Registry, policy: Policy, device: str | None = None,
                 models: ModelCache | None = None, clock: Clock | None = None,
                 html: str = "drifted") -> None:
        self.reg = registry
        self.html = html
        self.clock = clock or SystemClock()
        self.policy = policy
        self.device = device or policy.training.device
        self.models = models or ModelCache(registry, "cpu" if self.device == "auto"
                                           else self.device)
        self.references = RegistryReferenceStore(registry)
        # evaluations of registered (immutable) adapters on the shipped test split
        self._evaluations: dict[tuple[str, str, int], dict[str, Any]] = {}
        self._calibrators: dict[tuple[str, str, int], Any] = {}
        self._feature_maps: dict[tuple[str, str, int], Any] = {}
        self._knn_refs: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._correctness: dict[tuple[str, str, int, str], tuple[str, float]] = {}
        # the registered datasets each track's drift reference was read from
        self._reference_data: dict[tuple[str, str], list[dict[str, Any]]] = {}

    # -- drift -------------------------------------------------------------------------
    def _track(self, task: str, language: str) -> dict[str, Any]:
        return self.reg.status(task, language)[0]  # this track's row alone

    def reference(self, task: str, language: str) -> Any:
        """The test split the champion was evaluated on, embedded by the base and labelled
        by the champion; cached per (dataset version, base, champion version)."""
        track = self._track(task, language)
        encoder_row = self.reg.query(queries.show_encoder, track["base"])
        champion = track["champion"]
        # the languages the champion was trained for (hi, or hi + hi-Latn after a drift
        # retrain): traffic in those is what the champion is expected to serve
        langs = [language]
        if champion:
            row = self.reg.query(queries.show_adapter, task, language, champion)
            langs = list(row["hyperparams"].get("data_languages") or [language])
            report_id = row["hyperparams"].get("drift_report_id")
            if report_id is not None:  # a drift retrain: the reference follows the traffic
                traffic = traffic_reference(self, task, language, encoder_row["fingerprint"],
                                            int(champion), int(report_id))
                if traffic is not None:
                    self._reference_data[(task, language)] = []  # traffic, no dataset
                    return traffic
        data = TaskData(self.reg, task)
        rows = data.labelled("test", langs)
        if len(rows) < 100:  # a tiny test split is its own noise: add the dev split
            rows = pd.concat([data.labelled("dev", langs), rows], ignore_index=True)
        # named by the datasets read (their sha256), so new data means a new reference
        source = (f"{task}/{'+'.join(langs)}/test@"
                  + ",".join(d["sha256"][:12] for d in data.lineage()))
        self._reference_data[(task, language)] = data.lineage()  # named by its MLflow run
        key = reference_key(source, encoder_row["fingerprint"],
                            f"v{champion}" if champion else None)

        def build() -> Any:
            texts = rows["text"].tolist()
            emb = self.models.embed(track["base"], texts)
            labels = conf = None
            if champion:
                labels, conf = self.models.predict(task, language, champion, texts)
            return build_reference(task, language, key, texts=texts, embeddings=emb,
                                   predictions=labels, confidences=conf, source=source)

        return get_or_build(self.references, task, language, key, build)

    def check_drift(self, task: str, language: str, policy: DriftPolicy) -> DriftOutcome:
        reference = self.reference(task, language)
        # the traffic since the previous check (its newest events, at most the window size)
        now = self.clock.now()
        events = read_window(self.reg, task, language,
                             start=_dt(now - self.policy.check_interval_s), end=_dt(now),
                             limit=self.policy.drift_window_events)
        result = check_language(reference, events, policy,
                                reports_dir=self.reg.settings.reports_dir,
                                html=self.html)  # type: ignore[arg-type]
        row = record_result(self.reg, result)
        self._log_drift_run(result, row.id)
        return DriftOutcome(result.verdict, row.id, result.drifted_signals)

    def _log_drift_run(self, result: Any, report_id: int) -> None:
        from controller.mlflow_mirror.runs import log_drift_run

        paths = getattr(result, "report_paths", None) or {}
        scores = {name: sig.get("score") for name, sig in result.to_dict()["signals"].items()
                  if isinstance(sig, dict)}
        log_drift_run(result.task, result.language, paths.get("json"), paths.get("html"),
                      scores, verdict=result.verdict, target=self.reg, report_id=report_id,
                      pictures=[paths["projection"]] if paths.get("projection") else [],
                      datasets=self._reference_data.get((result.task, result.language), []))

    def reference_datasets(self, task: str, language: str) -> list[dict[str, Any]]:
        """The registered datasets the track's last reference was read from."""
        return list(self._reference_data.get((task, language), []))

    # -- jobs --------------------------------------------------------------------------
    def run_job(self, kind: str, params: dict[str, Any]) -> dict[str, Any]:
        """What a worker runs for a job of `kind` (controller.executors: run_claimed)."""
        from controller.ops import model_jobs

        if kind == "train":
            return self.train(params["task"], params["language"], params)
        if kind == "gate":
            return model_jobs.run_gate(self, params)
        if kind == "drift":
            return model_jobs.run_drift(self, params)
        raise ValueError(f"unknown job kind {kind!r}")

    # -- training and evaluation -------------------------------------------------------
    def train(self, task: str, language: str, params: dict[str, Any]) -> dict[str, Any]:
        job_id = params.get("job_id")
        if job_id is not None:
            # a crash between registering the adapter and recording the job's success
            # leaves a registered candidate: the rerun of the job takes it, not a new one
            for a in self.reg.query(queries.list_adapters, task, language, "registered"):
                if a["hyperparams"].get("job_id") == job_id:
                    return {"version": a["version"], "teacher": a["teacher_language"],
                            "accuracy": a["metrics"].get("accuracy"), "reused": True}
        data_languages = list(params.get("data_languages") or [language])
        if not params.get("data_languages") and (
                params.get("drift_report_id") is not None or params.get("with_variants")):
            data_languages += TaskData(self.reg, task).variants(language)
        result = train_adapter(
            self.reg, task, language, base=params.get("base"), teacher=params.get("teacher"),
            epochs=params.get("epochs"), device=params.get("device", self.device),
            seed=int(params.get("seed", 0)), continue_from=params.get("continue_from"),
            data_languages=data_languages, shuffle_pairs=bool(params.get("shuffle_pairs")),
            drift_report_id=params.get("drift_report_id"), job_id=job_id,
            target_labels=bool(params.get("target_labels")),
            target_label_weight=float(params.get("target_label_weight", 1.0)),
            top_blocks=params.get("top_blocks"),
            calibration_folds=int(params.get("calibration_folds") or 0),
            lexical=params.get("lexical"),
            lexical_refit=params.get("lexical_refit"),
            max_rows_per_epoch=params.get("max_rows_per_epoch"),
            inputs_fingerprint=params.get("inputs_fingerprint"),
            **({"upgrade_id": params["upgrade_id"]} if params.get("upgrade_id") else {}))
        # no MLflow call here: the mirror logs the run from the job's `job_succeeded` event,
        # so the MLflow view is the same whichever executor ran it
        return {"version": result["version"], "teacher": result["teacher"],
                "accuracy": result["metrics"]["accuracy"],
                "train_seconds": round(result["train_seconds"], 2)}

    def _evaluate_on(self, task: str, adapter_language: str, version: int,
                     eval_language: str, also: list[str] | None = None) -> dict[str, Any]:
        """Evaluate on `eval_language`'s test items, plus those of `also` (counted as
        `eval_language`: the variants a track serves by fallback)."""
        data = TaskData(self.reg, task)
        labels = data.labels
        loaded, _ = self.models.adapter(task, adapter_language, version)
        row = self.reg.query(queries.show_adapter, task, adapter_language, version)
        teacher = row["teacher_language"] or "en"
        data.require(eval_language, "test", "a candidate cannot be gated")
        df = data.labelled("test", [teacher, eval_language, *(also or [])]).copy()
        df.loc[df["language"].isin(also or []), "language"] = eval_language
        return evaluate_split(self.models.base(row["base"]), loaded.model, loaded.head, df,
                              eval_language, labels, source_language=teacher,
                              cache=self.models.memo(row["base"]))

    def evaluate(self, task: str, language: str, version: int) -> dict[str, Any]:
        """On what the track serves: its language and the variants that fall back to it
        (hi with hi-Latn), the same items, in the same order, for candidate and champion."""
        key = (task, language, version)
        if key not in self._evaluations:
            self._evaluations[key] = self._evaluate_on(
                task, language, version, language, TaskData(self.reg, task).variants(language))
        return self._evaluations[key]

    def fairness(self, task: str, language: str, version: int,
                 policy: Policy) -> dict[str, tuple[float, float]]:
        return self.fairness_of(task, language, version,
                                fairness_targets(self.reg, task, language, policy))

    def fairness_of(self, task: str, language: str, version: int,
                    targets: dict[str, float]) -> dict[str, tuple[float, float]]:
        """(accuracy, floor) of the candidate in each language of `targets`."""
        return {lang: (float(self._evaluate_on(task, language, version, lang)["accuracy"]),
                       floor) for lang, floor in targets.items()}

    # -- traffic -----------------------------------------------------------------------
    def live_events(self, task: str, language: str, since: float,
                    until: float) -> list[dict[str, Any]]:
        frame = read_window(self.reg, task, language, start=_dt(since), end=_dt(until))
        # text and routing key: label-free analysis re-scores both arms on the same requests
        cols = ["adapter_version", "prediction", "confidence", "feedback_label", "text",
                "routing_key"]
        return frame[cols].to_dict(orient="records") if len(frame) else []


def log_training_result(registry: Registry, task: str, language: str,
                        result: dict[str, Any], params: dict[str, Any]) -> None:
    """The MLflow run of a training (params, metrics, a link to the artifact); shared by
    the controller's jobs and `xlt train`. MLflow being down only warns."""
    from controller.mlflow_mirror.runs import log_training_run

    adapter = registry.query(queries.show_adapter, task, language, result["version"])
    metrics = {k: v for k, v in result["metrics"].items() if isinstance(v, int | float)}
    log_training_run(registry, adapter, {k: v for k, v in params.items()
                                         if isinstance(v, int | float | str)},
                     metrics, artifact=registry.store.blob_path(adapter["artifact_sha256"]))
