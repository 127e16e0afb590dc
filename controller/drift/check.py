"""The drift check the controller calls: one language's window of events against its reference.

`check_language` computes every signal (controller.drift.signals), the verdict, and writes
the JSON result (always, when a reports dir is given) and an Evidently HTML report
(`html="drifted"`: only for drifted languages, so a stable language never pays for it).
The HTML uses Evidently's `Report([DataDriftPreset(...)])` on the descriptor, script and
prediction columns; embeddings stay out of it (the embeddings metric draws a t-SNE plot).
`check_many` runs it for many languages, sequentially: the machines have two cores, and
the check of one language is tens of milliseconds.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from controller.drift.projection import draw_projection, embed_in_html
from controller.drift.reference import Reference
from controller.drift.signals import (
    VERDICT_DRIFT,
    DriftThresholds,
    SignalResult,
    confidence_signal,
    descriptor_signal,
    embedding_signal,
    prediction_signal,
    script_mix_signal,
    verdict,
)
from controller.drift.window import Window, window_from_events
from controller.traffic import descriptors as desc
from registry.names import safe_path

HtmlMode = Literal["drifted", "always", "never"]


@dataclass
class DriftResult:
    task: str
    language: str
    verdict: str
    n_events: int
    reference: dict[str, Any]
    signals: dict[str, SignalResult]
    thresholds: dict[str, Any]
    checked_at: datetime
    window_start: datetime | None = None
    window_end: datetime | None = None
    report_paths: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def drifted(self) -> bool:
        return self.verdict == VERDICT_DRIFT

    @property
    def drifted_signals(self) -> list[str]:
        return [name for name, s in self.signals.items() if s.drifted]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable (timestamps as ISO strings, NaN scores as null)."""
        return {
            "task": self.task, "language": self.language, "verdict": self.verdict,
            "n_events": self.n_events, "reference": self.reference,
            "signals": {k: v.to_dict() for k, v in self.signals.items()},
            "drifted_signals": self.drifted_signals,
            "thresholds": self.thresholds,
            "checked_at": _iso(self.checked_at),
            "window_start": _iso(self.window_start), "window_end": _iso(self.window_end),
            "report_paths": self.report_paths, "elapsed_s": round(self.elapsed_s, 4),
        }

    def registry_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `Registry.record_drift_report(task, language, **kw)`."""
        return {"verdict": self.verdict,
                "signals": {k: v.to_dict() for k, v in self.signals.items()},
                "reference": {**self.reference, "thresholds": self.thresholds,
                              "n_events": self.n_events},
                "report_paths": self.report_paths,
                "window_start": self.window_start, "window_end": self.window_end}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# -- the check -----------------------------------------------------------------------------
def compute_signals(reference: Reference, window: Window,
                    thresholds: DriftThresholds) -> dict[str, SignalResult]:
    off = set(thresholds.disabled)
    out: dict[str, SignalResult] = {}
    if ("embedding" not in off and window.embeddings is not None
            and reference.embeddings is not None):
        out["embedding"] = embedding_signal(reference.embedding_frame, window.embeddings,
                                            reference.noise_scale, thresholds.embedding)
    if "descriptors" not in off:
        out["descriptors"] = descriptor_signal(reference.descriptors, window.descriptors,
                                               desc.NUMERIC_DESCRIPTORS, thresholds.descriptors)
    if "script_mix" not in off:
        current_mix = window.descriptors[list(desc.SCRIPT_COLUMNS)].mean().to_numpy()
        out["script_mix"] = script_mix_signal(
            reference.script_mix, current_mix, reference.descriptors[desc.DOMINANT],
            window.descriptors[desc.DOMINANT], desc.SCRIPTS, thresholds.script_mix)
    if ("prediction" not in off and window.predictions is not None
            and reference.predictions is not None):
        out["prediction"] = prediction_signal(pd.Series(reference.predictions),
                                              window.predictions, thresholds.prediction)
    if ("confidence" not in off and window.confidences is not None
            and reference.confidences is not None):
        out["confidence"] = confidence_signal(pd.Series(reference.confidences),
                                              window.confidences, thresholds.confidence)
    return out


def check_language(reference: Reference, events: pd.DataFrame | Sequence[Mapping[str, Any]],
                   thresholds: DriftThresholds | None = None, *,
                   reports_dir: str | Path | None = None, html: HtmlMode = "drifted",
                   now: datetime | None = None, pictures: bool = True) -> DriftResult:
    """Compare one (task, language)'s window of events with its reference. `pictures`:
    add the embedding projection PNG to each HTML report."""
    started = time.perf_counter()
    thresholds = thresholds or DriftThresholds()
    window = window_from_events(events)
    enough = window.n >= thresholds.min_events and reference.n >= thresholds.min_reference
    signals = compute_signals(reference, window, thresholds) if enough else {}
    result = DriftResult(
        task=reference.task, language=reference.language,
        verdict=verdict(signals, window.n, thresholds, reference.n), n_events=window.n,
        reference=reference.summary(), signals=signals,
        thresholds=thresholds.model_dump(mode="json"),
        checked_at=now or datetime.now(UTC), window_start=window.start, window_end=window.end)
    if reports_dir is not None:
        write_reports(result, reference, window, Path(reports_dir), html, pictures)
    result.elapsed_s = time.perf_counter() - started
    return result


def check_many(references: Mapping[str, Reference] | Callable[[str], Reference | None],
               events: Mapping[str, Any] | pd.DataFrame,
               thresholds: DriftThresholds | Mapping[str, DriftThresholds] | None = None, *,
               reports_dir: str | Path | None = None, html: HtmlMode = "drifted",
               now: datetime | None = None, pictures: bool = True) -> dict[str, DriftResult]:
    """Check every language that has events. `events`: {language: events} or one frame
    with a `language` column (the track language). `references`: {language: Reference}
    or a function (e.g. a ReferenceStore lookup). `thresholds`: one for all or per
    language (missing languages get the defaults)."""
    if isinstance(events, pd.DataFrame):
        events = {str(lang): grp for lang, grp in events.groupby("language", sort=True)}
    now = now or datetime.now(UTC)
    results: dict[str, DriftResult] = {}
    for language, window in events.items():
        reference = (references(language) if callable(references)
                     else references.get(language))
        if reference is None:
            raise KeyError(f"no drift reference for language {language!r}")
        if isinstance(thresholds, Mapping):
            chosen = thresholds.get(language) or DriftThresholds()
        else:
            chosen = thresholds
        results[language] = check_language(reference, window, chosen,
                                           reports_dir=reports_dir, html=html, now=now,
                                           pictures=pictures)
    return results


# -- reports ---------------------------------------------------------------------------------
def report_stem(reports_dir: Path, result: DriftResult) -> Path:
    """<reports>/<task>/<language>/<UTC timestamp>; sortable and safe in file names, and
    refused (InvalidName) for a name that would leave the reports folder."""
    stamp = result.checked_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return safe_path(reports_dir, result.task, result.language, stamp)


def write_reports(result: DriftResult, reference: Reference, window: Window,
                  reports_dir: Path, html: HtmlMode, pictures: bool = True) -> None:
    stem = report_stem(reports_dir, result)
    stem.parent.mkdir(parents=True, exist_ok=True)
    want_html = html == "always" or (html == "drifted" and result.drifted)
    if want_html and window.n > 0:
        html_path = stem.with_suffix(".html")
        evidently_html(reference, window, html_path)
        result.report_paths["html"] = str(html_path)
        picture = (projection_png(result, reference, window, stem.with_suffix(".png"))
                   if pictures else None)
        if picture is not None:
            embed_in_html(html_path, picture, "Embeddings: reference vs current (PCA)")
            result.report_paths["projection"] = str(picture)
    json_path = stem.with_suffix(".json")
    result.report_paths["json"] = str(json_path)
    json_path.write_text(json.dumps(result.to_dict(), indent=1, sort_keys=True),
                         encoding="utf-8")


def projection_png(result: DriftResult, reference: Reference, window: Window,
                   path: Path) -> Path | None:
    """The 2-D picture of reference vs current embeddings (None without embeddings)."""
    if window.embeddings is None or reference.embeddings is None or window.n == 0:
        return None
    drifted = ", ".join(result.drifted_signals) or "none"
    title = (f"{result.task} / {result.language}: reference ({reference.n}) vs current "
             f"({window.n}) embeddings; verdict {result.verdict} (drifted: {drifted})")
    return draw_projection(
        path, title, reference.embeddings, window.embeddings,
        reference.descriptors[desc.DOMINANT].astype(str).tolist(),
        window.descriptors[desc.DOMINANT].astype(str).tolist(),
        None if reference.predictions is None else list(reference.predictions),
        None if window.predictions is None else window.predictions.tolist())


def _report_frame(descriptors: pd.DataFrame, predictions: Any, confidences: Any,
                  columns: list[str]) -> pd.DataFrame:
    frame = descriptors[columns].reset_index(drop=True).copy()
    if predictions is not None:
        frame["prediction"] = pd.Series(predictions).astype(str).to_numpy()
    if confidences is not None:
        frame["confidence"] = pd.Series(confidences).astype(np.float64).to_numpy()
    return frame


def evidently_html(reference: Reference, window: Window, path: Path) -> None:
    """Evidently's data drift report on the tabular signals (same stattests as the check)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    # script shares that are zero on both sides carry nothing and clutter the page
    shares = [c for c in desc.SCRIPT_COLUMNS
              if reference.descriptors[c].any() or window.descriptors[c].any()]
    columns = list(desc.NUMERIC_DESCRIPTORS) + shares + [desc.DOMINANT]
    has_pred = window.predictions is not None and reference.predictions is not None
    has_conf = window.confidences is not None and reference.confidences is not None
    ref = _report_frame(reference.descriptors, reference.predictions if has_pred else None,
                        reference.confidences if has_conf else None, columns)
    cur = _report_frame(window.descriptors, window.predictions if has_pred else None,
                        window.confidences if has_conf else None, columns)
    numerical = [c for c in ref.columns if c not in (desc.DOMINANT, "prediction")]
    categorical = [c for c in (desc.DOMINANT, "prediction") if c in ref.columns]
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    methods = {c: "wasserstein" for c in numerical} | {c: "jensenshannon" for c in categorical}
    report = Report([DataDriftPreset(per_column_method=methods)])
    with warnings.catch_warnings():
        # constant columns (a script share that is 0 in every reference row) make
        # Evidently's summary widgets divide by a zero std: noise, not a problem
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = report.run(Dataset.from_pandas(cur, data_definition=definition),
                              Dataset.from_pandas(ref, data_definition=definition))
        snapshot.save_html(str(path))
