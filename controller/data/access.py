"""The one door to a task's data: every consumer (training, the gates' and the canary's
evaluation, the drift reference, the label-free maps, the attempts ladder, the reports)
reads registered datasets through `TaskData`, never a file.

What is read is the newest registered dataset of each (language, kind, split), verified
by sha256 (Registry.dataset_file) and remembered in `used`, so that what a training read
is what its lineage and its MLflow run record.

Frames:
* labelled: columns `id`, `text`, `label`, `language` (ids name items: the same id in two
  languages is the same item, which is how pairs are derived without a parallel file);
* pairs: `id`, `text_source`, `text_target`, `label` (None where unknown).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from registry import queries
from registry.datafiles import read_stored
from registry.errors import InvalidInput, NotFound
from registry.languages import canonical_language, parent_languages

LABELLED_COLUMNS = ["id", "text", "label", "language"]
PAIR_COLUMNS = ["id", "text_source", "text_target", "label"]

# one process reads the same verified file many times (gates, maps, reference): by sha256
_FRAMES: dict[str, pd.DataFrame] = {}
_FRAMES_MAX = 256


@dataclass
class PairSource:
    """Where a language's training pairs come from, and what they carry."""

    kind: str  # "parallel" (a registered pair file), "by-id" (two labelled files), or
    #            "self" (the target's own text on both sides: no pivot data at all)
    datasets: list[dict[str, Any]]
    labelled: bool


@dataclass
class TaskData:
    registry: Any
    task: str
    used: dict[int, dict[str, Any]] = field(default_factory=dict)
    _rows: list[dict[str, Any]] | None = None
    _labels: tuple[str, ...] | None = None
    _keep: frozenset[str] | None = None  # only these item ids (a cross-fitting fold)

    def without(self, kept: pd.DataFrame) -> TaskData:
        """This task's data restricted to the items (ids) of `kept`: what a fold of the
        cross-fitted map trains on; reads are shared with this object."""
        view = TaskData(self.registry, self.task, self.used, self._rows, self._labels,
                        frozenset(map(str, kept["id"])))
        return view

    # -- what the task has ---------------------------------------------------------------
    @property
    def labels(self) -> tuple[str, ...]:
        if self._labels is None:
            self._labels = tuple(self.registry.query(queries.get_task, self.task)["labels"])
        return self._labels

    def datasets(self) -> list[dict[str, Any]]:
        if self._rows is None:
            self._rows = self.registry.query(queries.task_datasets, self.task)
        return self._rows

    def find(self, language: str, kind: str, split: str = "train",
             source_language: str | None = None) -> dict[str, Any] | None:
        language = canonical_language(language)
        for d in self.datasets():
            if (d["language"], d["kind"], d["split"]) == (language, kind, split) and (
                    source_language is None
                    or d["meta"].get("source_language") == source_language):
                return d
        return None

    def per_language(self) -> dict[str, dict[str, int]]:
        """{language: {split or kind: rows}}: labelled splits by name, plus `parallel` and
        `unlabelled` rows."""
        out: dict[str, dict[str, int]] = {}
        for d in self.datasets():
            part = d["split"] if d["kind"] == "labelled" else d["kind"]
            slot = out.setdefault(d["language"], {})
            slot[part] = slot.get(part, 0) + int(d["rows"])
        return out

    def languages_with(self, split: str = "train") -> list[str]:
        return sorted(lang for lang, parts in self.per_language().items() if parts.get(split))

    def variants(self, language: str) -> list[str]:
        """Script or regional variants of `language` with data of this task (hi ->
        [hi-Latn]): the traffic a track serves by fallback, and what a drift retrain adds."""
        language = canonical_language(language)
        return sorted(lang for lang in self.per_language()
                      if lang != language and language in parent_languages(lang))

    # -- reading ---------------------------------------------------------------------------
    def _read(self, d: dict[str, Any]) -> pd.DataFrame:
        frame = _FRAMES.get(d["sha256"])
        if frame is None:
            path = self.registry.dataset_file(d)
            frame = pd.DataFrame.from_records(list(read_stored(path)))
            if len(_FRAMES) >= _FRAMES_MAX:
                _FRAMES.pop(next(iter(_FRAMES)))
            _FRAMES[d["sha256"]] = frame
        self.used[int(d["id"])] = d
        return frame

    def labelled(self, split: str, languages: Sequence[str]) -> pd.DataFrame:
        """The labelled rows of `split` in each of `languages` (those without: no rows)."""
        frames = []
        for language in dict.fromkeys(canonical_language(x) for x in languages):
            d = self.find(language, "labelled", split)
            if d is None:
                continue
            frame = self._read(d)
            frames.append(frame.assign(language=language)[LABELLED_COLUMNS])
        if not frames:
            return pd.DataFrame(columns=LABELLED_COLUMNS)
        return pd.concat(frames, ignore_index=True)

    def unlabelled(self, language: str) -> pd.DataFrame:
        d = self.find(language, "unlabelled")
        return (pd.DataFrame(columns=["id", "text"]) if d is None
                else self._read(d)[["id", "text"]])

    def require(self, language: str, split: str, why: str) -> dict[str, Any]:
        """The labelled `split` of `language`, or a refusal that names what to register."""
        d = self.find(language, "labelled", split)
        if d is None:
            raise NotFound(
                f"task {self.task!r} has no labelled {split} split in {language}, so {why}",
                f"register one: `xlt dataset register {self.task} FILE --lang {language} "
                f"--split {split} --licence ... --consent ...` (rows with text and label)")
        return d

    # -- training pairs --------------------------------------------------------------------
    def pair_source(self, teacher: str, language: str) -> PairSource:
        """How `language` learns from `teacher`: a registered parallel file first, else
        pairs by id between the two labelled train files, else the target's own texts."""
        teacher, language = canonical_language(teacher), canonical_language(language)
        target_labels = self.find(language, "labelled", "train")
        parallel = self.find(language, "parallel", source_language=teacher)
        if parallel is not None:
            return PairSource("parallel", [parallel] + ([target_labels] if target_labels
                                                        else []), target_labels is not None)
        source = self.find(teacher, "labelled", "train")
        if source is not None and target_labels is not None and language != teacher:
            return PairSource("by-id", [source, target_labels], True)
        if target_labels is not None:
            return PairSource("self", [target_labels], True)
        unlabelled = self.find(language, "unlabelled")
        if unlabelled is not None:
            return PairSource("self", [unlabelled], False)
        raise NotFound(f"task {self.task!r} has no training data in {language}",
                       f"register parallel pairs from {teacher} (`xlt dataset register "
                       f"{self.task} FILE --kind parallel --source-language {teacher} "
                       f"--lang {language}`), or labelled or unlabelled {language} text")

    def pairs(self, teacher: str, language: str) -> pd.DataFrame:
        """Training pairs (teacher-side text, target text, label or None)."""
        pairs = self._pairs(teacher, language)
        if self._keep is not None:
            pairs = pairs[pairs["id"].astype(str).isin(self._keep)].reset_index(drop=True)
        return pairs

    def _pairs(self, teacher: str, language: str) -> pd.DataFrame:
        src = self.pair_source(teacher, language)
        if src.kind == "parallel":
            pairs = self._read(src.datasets[0]).rename(
                columns={"source_text": "text_source", "text": "text_target"})
            pairs = pairs.assign(label=None)
            if src.labelled:  # the target's labels by id, where its labelled rows name them
                by_id = self._read(src.datasets[1]).set_index("id")["label"]
                pairs["label"] = pairs["id"].map(by_id)
                pairs["label"] = pairs["label"].astype(object).where(pairs["label"].notna(),
                                                                     None)
            return pairs[PAIR_COLUMNS]
        if src.kind == "by-id":
            source, target = (self._read(d) for d in src.datasets)
            merged = source[["id", "text", "label"]].merge(
                target[["id", "text"]], on="id", suffixes=("_source", "_target"))
            if merged.empty:
                raise InvalidInput(
                    f"{teacher}'s and {language}'s labelled train rows of task "
                    f"{self.task!r} share no id, so no pairs can be derived",
                    "give the same item the same id in both files, or register "
                    "parallel pairs")
            return merged.sort_values("id", kind="stable").reset_index(drop=True)[PAIR_COLUMNS]
        own = self._read(src.datasets[0])
        return pd.DataFrame({"id": own["id"], "text_source": own["text"],
                             "text_target": own["text"],
                             "label": own["label"] if src.labelled else None})[PAIR_COLUMNS]

    def lineage(self) -> list[dict[str, Any]]:
        """Every dataset read so far: id, ref, kind, sha256, rows, source (for the
        adapter's lineage and the MLflow run's dataset inputs)."""
        return [{k: d[k] for k in ("id", "ref", "kind", "split", "language", "sha256",
                                   "rows", "source")}
                for _, d in sorted(self.used.items())]
