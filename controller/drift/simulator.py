"""A traffic simulator: inference events for one track language, drawn from the shipped
CLDR emoji data, under a scenario.

Scenarios (the variant's or the favoured labels' share rises linearly over the window,
from 0 at its start to `final_share` at its end, as a real migration would):

* ``stable``: texts of the track language only.
* ``script_shift``: the language's users move to another script (sr -> sr-Latn,
  hi -> hi-Latn, pa -> pa-Arab).
* ``orthography``: same script, another orthography (yo -> yo-BJ: ẹ ọ become ɛ ɔ).
* ``label_mix``: what users talk about changes: items of the favoured labels take over.

An event keeps the *track* language (`hi`) even when its text is `hi-Latn`: that is what
the router saw, and the drift the check must find. Embeddings come from a provided encoder
(every pool row is embedded once and cached), predictions and confidences from a provided
head (`head(embeddings) -> (labels, confidences)`). Everything is drawn from one
`numpy.random.Generator` seeded per call, so the same arguments give the same events.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd

from controller.traffic import descriptors as desc

ScenarioKind = Literal["stable", "script_shift", "orthography", "label_mix"]
SCRIPT_VARIANTS = {"sr": "sr-Latn", "hi": "hi-Latn", "pa": "pa-Arab"}
ORTHOGRAPHY_VARIANTS = {"yo": "yo-BJ"}
EmbedFn = Callable[[list[str]], np.ndarray]
HeadFn = Callable[[np.ndarray], tuple[Sequence[str], np.ndarray]]
# one head for every language, or the champion of each track language
Heads = HeadFn | Mapping[str, HeadFn]


@dataclass(frozen=True)
class Scenario:
    kind: ScenarioKind = "stable"
    final_share: float = 0.6
    variant: str | None = None  # default: SCRIPT_VARIANTS / ORTHOGRAPHY_VARIANTS
    labels: tuple[str, ...] = ("Food & Drink",)  # favoured by label_mix

    def variant_of(self, language: str) -> str:
        if self.variant:
            return self.variant
        table = SCRIPT_VARIANTS if self.kind == "script_shift" else ORTHOGRAPHY_VARIANTS
        if language not in table:
            raise ValueError(f"no {self.kind} variant known for {language!r}; "
                             f"known: {sorted(table)} (or pass variant=...)")
        return table[language]


def as_scenario(value: Scenario | str) -> Scenario:
    return value if isinstance(value, Scenario) else Scenario(kind=value)  # type: ignore[arg-type]


class TrafficSimulator:
    """Draws events from `pool` (default: the task's registered labelled `split` in every
    language, read through controller.data.access from `registry`)."""

    def __init__(self, *, task: str = "emoji-group", embed: EmbedFn | None = None,
                 head: Heads | None = None, split: str = "dev",
                 pool: pd.DataFrame | None = None, feedback_rate: float = 0.0,
                 embedding_noise: float = 0.0, registry: Any = None) -> None:
        if pool is None and registry is None:
            raise ValueError("give the simulator a pool of rows or the registry to read "
                             "the task's data from")
        self.task = task
        self.registry = registry
        self.embed = embed
        self.head = head
        self.split = split
        self._pool_frame = pool
        self.feedback_rate = feedback_rate
        # >0: Gaussian noise added to each event's embedding (then re-normalised), so that
        # repeated texts are not bit-identical (the benchmark's "around the reference")
        self.embedding_noise = embedding_noise
        self._pools: dict[str, tuple[pd.DataFrame, np.ndarray | None]] = {}

    def head_for(self, language: str) -> HeadFn | None:
        if isinstance(self.head, Mapping):
            return self.head.get(language)
        return self.head

    # -- pools ---------------------------------------------------------------------------
    def _all_rows(self) -> pd.DataFrame:
        if self._pool_frame is None:
            from controller.data.access import TaskData

            data = TaskData(self.registry, self.task)
            self._pool_frame = data.labelled(self.split, data.languages_with(self.split))
        return self._pool_frame

    def pool(self, language: str) -> tuple[pd.DataFrame, np.ndarray | None]:
        """A language's rows and their embeddings (embedded once, then cached)."""
        if language not in self._pools:
            frame = self._all_rows()
            rows = frame[frame["language"] == language].reset_index(drop=True)
            if rows.empty:
                raise ValueError(f"no {self.split} rows for language {language!r}")
            emb = (np.asarray(self.embed(rows["text"].tolist()), dtype=np.float32)
                   if self.embed is not None else None)
            self._pools[language] = (rows, emb)
        return self._pools[language]

    # -- events --------------------------------------------------------------------------
    def _draw(self, language: str, n: int, scenario: Scenario, rng: np.random.Generator
              ) -> tuple[pd.DataFrame, np.ndarray | None]:
        rows, emb = self.pool(language)
        ramp = np.linspace(0.0, scenario.final_share, n) if n > 1 else np.zeros(n)
        if scenario.kind == "label_mix":
            favoured = np.flatnonzero(rows["label"].isin(scenario.labels).to_numpy())
            if favoured.size == 0:
                raise ValueError(f"no {language} rows with labels {scenario.labels}")
            take = rng.integers(0, len(rows), n)
            shift = rng.random(n) < ramp
            take[shift] = favoured[rng.integers(0, favoured.size, int(shift.sum()))]
            return rows.iloc[take].reset_index(drop=True), (emb[take] if emb is not None
                                                            else None)
        take = rng.integers(0, len(rows), n)
        picked = rows.iloc[take].reset_index(drop=True)
        vectors = emb[take] if emb is not None else None
        if scenario.kind == "stable":
            return picked, vectors
        var_rows, var_emb = self.pool(scenario.variant_of(language))
        shift = rng.random(n) < ramp
        var_take = rng.integers(0, len(var_rows), int(shift.sum()))
        picked.loc[shift, list(picked.columns)] = var_rows.iloc[var_take][
            list(picked.columns)].to_numpy()
        if vectors is not None and var_emb is not None:
            vectors = vectors.copy()
            vectors[shift] = var_emb[var_take]
        return picked, vectors

    def frame(self, language: str, n: int, scenario: Scenario | str = "stable", *,
              seed: int = 0, start: datetime | None = None,
              duration: timedelta = timedelta(hours=24), with_descriptors: bool = True
              ) -> pd.DataFrame:
        """n events as a DataFrame, in time order, with flat descriptor columns."""
        scenario = as_scenario(scenario)
        rng = np.random.default_rng(seed)
        picked, vectors = self._draw(language, n, scenario, rng)
        start = start or datetime(2026, 1, 1, tzinfo=UTC)
        offsets = np.sort(rng.random(n)) * duration.total_seconds()
        events = pd.DataFrame({
            "task": self.task,
            "language": language,
            "routing_key": [f"user-{k}" for k in rng.integers(0, 5000, n)],
            "text": picked["text"].to_numpy(),
            "source_language": picked["language"].to_numpy(),  # what the text really is
            "at": pd.Timestamp(start) + pd.to_timedelta(offsets, unit="s"),
            "latency_ms": np.round(rng.lognormal(np.log(12.0), 0.35, n), 3),
        })
        if vectors is not None:
            if self.embedding_noise > 0:
                vectors = vectors + rng.normal(0.0, self.embedding_noise, vectors.shape
                                               ).astype(np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            events["embedding"] = list(vectors.astype(np.float32))
            head = self.head_for(language)
            if head is not None:
                labels, conf = head(vectors)
                events["prediction"] = list(labels)
                events["confidence"] = np.asarray(conf, dtype=np.float64)
        if self.feedback_rate > 0:
            given = rng.random(n) < self.feedback_rate
            events["feedback_label"] = np.where(given, picked["label"].to_numpy(), None)
        if with_descriptors:
            events = pd.concat([events, desc.describe(events["text"].tolist())], axis=1)
        return events

    def events(self, language: str, n: int, scenario: Scenario | str = "stable", **kw: Any
               ) -> list[dict[str, Any]]:
        """The same events as dicts, one per inference (descriptors as a dict, as logged)."""
        frame = self.frame(language, n, scenario, with_descriptors=False, **kw)
        records = frame.to_dict(orient="records")
        for record, text in zip(records, frame["text"], strict=True):
            record["descriptors"] = desc.describe_one(text)
            record["at"] = record["at"].to_pydatetime()
        return records

    def traffic(self, scenarios: Mapping[str, Scenario | str], n: int, *, seed: int = 0,
                **kw: Any) -> dict[str, pd.DataFrame]:
        """{language: events frame} for many languages; each language gets its own seed
        derived from `seed`, so adding a language does not change the others' events."""
        out = {}
        for language, scenario in scenarios.items():
            lang_seed = int(np.random.SeedSequence([seed, _stable_hash(language)])
                            .generate_state(1)[0])
            out[language] = self.frame(language, n, scenario, seed=lang_seed, **kw)
        return out


def _stable_hash(text: str) -> int:
    import zlib

    return zlib.crc32(text.encode())
