"""Training attempts of one track: what each was trained on, why it failed, what comes next.

A rejected candidate is not retrained identically. Each attempt records its inputs (base,
teacher, training languages, epochs, seed, target labels, the champion it continues
from) and a fingerprint of them; the next attempt takes the best attempt so far and
changes one thing along the policy's ladder (`[attempts] ladder`):

* target_labels: add cross-entropy on the language's own labels, where the dataset has them
* variants: add the language's script/regional variants (hi -> hi-Latn) to its data
* teacher: the next-nearest teacher by URIEL distance not tried yet
* epochs: more epochs (x `epoch_growth`)

An input set whose fingerprint an earlier attempt (or any earlier training job of the
track) already used is skipped: the same inputs are never trained twice. Attempts are
bounded by `max_attempts` with exponential backoff between them. When they run out the
plan is exhausted: a track without a champion is marked "not servable on <base>" (its
fallback serves it) and one alert names the failed gates and the best figures reached.

A plan belongs to one (base, champion): a promotion or a base upgrade starts a new one,
so a base upgrade retries a language that could not be served on the old base.

The plan lives in the track's phase_data under "attempts" (`AttemptPlan.to_dict`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.policy import Policy
from registry.schema import Job

# figures kept per attempt (from the gate report): what "best" is judged on, first one first
FIGURES = ("accuracy_floor", "macro_f1_floor", "ece_ceiling", "forgetting_english_accuracy")


@dataclass(frozen=True)
class AttemptInputs:
    base: str
    teacher: str
    data_languages: tuple[str, ...]
    epochs: int
    seed: int
    target_labels: bool = False
    continue_from: int | None = None
    shuffle_pairs: bool = False  # corrupted data: drills and the demo only
    top_blocks: int | None = None  # None: the base's default (policy [training] top_blocks)

    def fingerprint(self) -> str:
        fields = asdict(self)
        if fields["top_blocks"] is None:  # as before the field existed: same fingerprint
            del fields["top_blocks"]
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def params(self) -> dict[str, Any]:
        """What the training job receives (and records)."""
        return {"teacher": self.teacher, "data_languages": list(self.data_languages),
                "epochs": self.epochs, "seed": self.seed, "target_labels": self.target_labels,
                "continue_from": self.continue_from, "shuffle_pairs": self.shuffle_pairs,
                "top_blocks": self.top_blocks, "inputs_fingerprint": self.fingerprint()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttemptInputs:
        return cls(**{**d, "data_languages": tuple(d["data_languages"])})


@dataclass(frozen=True)
class Attempt:
    n: int
    inputs: AttemptInputs
    change: str  # how it differs from the attempt it was built on
    fingerprint: str
    job_id: int | None = None
    version: int | None = None
    outcome: str = "training"  # training | rejected | aborted | passed
    failed_gates: tuple[str, ...] = ()
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def score(self) -> tuple[float, ...]:
        """Higher is better: accuracy first, then macro-F1, then lower ECE."""
        f = self.figures
        return (f.get("accuracy_floor", -1.0), f.get("macro_f1_floor", -1.0),
                -f.get("ece_ceiling", 2.0))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Attempt:
        return cls(**{**d, "inputs": AttemptInputs.from_dict(d["inputs"]),
                      "failed_gates": tuple(d.get("failed_gates") or ())})


@dataclass(frozen=True)
class AttemptPlan:
    base: str
    champion: int | None
    report_id: int | None = None  # the drift report the attempts answer, if any
    attempts: tuple[Attempt, ...] = ()
    retry_at: float | None = None
    exhausted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttemptPlan:
        return cls(**{**d, "attempts": tuple(Attempt.from_dict(a) for a in d["attempts"])})

    @property
    def last(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def best(self) -> Attempt | None:
        judged = [a for a in self.attempts if a.figures]
        return max(judged, key=lambda a: a.score) if judged else self.last

    def fingerprints(self) -> set[str]:
        return {a.fingerprint for a in self.attempts}


# -- reading the plan (controller.loop.phase_status.PhaseStatus.attempts) ------------------------
def current(plan: AttemptPlan | None, base: str, champion: int | None
            ) -> AttemptPlan | None:
    """The plan of this (base, champion), or None when there is none or it is stale."""
    if plan is None or plan.base != base or plan.champion != champion:
        return None
    return plan


def base_changed(plan: AttemptPlan | None, base: str | None) -> bool:
    """True when the track's recorded plan was for another base: the caller starts afresh
    (and lifts a "not servable" mark). A base upgrade retries the track through this."""
    return plan is not None and base is not None and plan.base != base


def settled(plan: AttemptPlan | None, base: str, champion: int | None) -> str:
    """"exhausted" or "pending" when the plan of this (base, champion) already answers a
    drift alarm (no new training), else ""."""
    plan = current(plan, base, champion)
    if plan is None:
        return ""
    return "exhausted" if plan.exhausted else ("pending" if plan.retry_at is not None else "")


# -- choosing inputs ----------------------------------------------------------------------
def trained_fingerprints(session: Session, task: str, language: str) -> set[str]:
    """Fingerprints of every training job ever created for the track (any outcome)."""
    params = session.scalars(select(Job.params).where(
        Job.kind == "train", Job.task == task, Job.language == language)).all()
    return {str(p["inputs_fingerprint"]) for p in params if p.get("inputs_fingerprint")}


def first_inputs(policy: Policy, base: str, language: str, champion: int | None,
                 teacher: str, variants: Sequence[str], drift: bool,
                 extra: dict[str, Any] | None = None) -> AttemptInputs:
    """The default attempt: policy epochs and seed, the chosen teacher, the language (plus
    its variants when answering drift)."""
    langs = (language, *variants) if drift or (extra or {}).get("with_variants") else (language,)
    return AttemptInputs(base=base, teacher=teacher, data_languages=tuple(langs),
                         epochs=int((extra or {}).get("epochs") or policy.training.epochs),
                         seed=policy.training.seed, continue_from=champion,
                         shuffle_pairs=bool((extra or {}).get("shuffle_pairs")),
                         top_blocks=policy.training.top_blocks)


def _variations(best: AttemptInputs, policy: Policy, variants: Sequence[str],
                teachers: Sequence[str], has_labels: bool, tried_teachers: set[str]
                ) -> list[tuple[AttemptInputs, str]]:
    """Each single change the ladder allows on top of `best`, in ladder order."""
    out: list[tuple[AttemptInputs, str]] = []
    for step in policy.attempts.ladder:
        if step == "target_labels" and has_labels and not best.target_labels:
            out.append((replace(best, target_labels=True), "train with target labels"))
        elif step == "variants":
            missing = [v for v in variants if v not in best.data_languages]
            if missing:
                out.append((replace(best, data_languages=(*best.data_languages, *missing)),
                            f"add the variants {', '.join(missing)}"))
        elif step == "teacher":
            for teacher in teachers:
                if teacher not in tried_teachers and teacher != best.teacher:
                    out.append((replace(best, teacher=teacher),
                                f"next-nearest teacher {teacher} (URIEL)"))
                    break
        elif step == "epochs":
            epochs = max(best.epochs + 1, int(round(best.epochs * policy.attempts.epoch_growth)))
            out.append((replace(best, epochs=epochs), f"more epochs ({best.epochs} -> {epochs})"))
    return out


@dataclass(frozen=True)
class Options:
    """What the ladder can vary for one language (from the shipped data and URIEL)."""

    teacher: str  # the default teacher
    teachers: tuple[str, ...]  # other teachers, nearest first by URIEL distance
    variants: tuple[str, ...]
    has_labels: bool


def options(policy: Policy, task: str, language: str, registered: Sequence[str],
            registry: Any) -> Options:
    from controller.data.access import TaskData
    from controller.training.teacher import choose_teacher, load_table, primary, rank_teachers
    from registry.languages import parent_languages

    with_train = set(TaskData(registry, task).languages_with("train"))
    teachers = sorted(lang for lang in with_train if primary(lang) != primary(language))
    teacher = policy.training.teacher or (
        choose_teacher(language, candidates=teachers).teacher if "en" in teachers
        else next((r["language"] for r in rank_teachers(language, teachers)), "en"))
    known = set(load_table()["distances"])
    candidates = sorted(lang for lang in with_train
                        if lang == primary(lang) and lang in known)
    ranking = [r["language"] for r in rank_teachers(language, candidates)
               if r["distance"] is not None]
    variants = sorted(lang for lang in with_train if language in parent_languages(lang))
    return Options(teacher, tuple(ranking), tuple(variants), language in with_train)


def next_inputs(plan: AttemptPlan, policy: Policy, opts: Options, seen: set[str],
                first: AttemptInputs | None = None) -> tuple[AttemptInputs, str] | None:
    """The next inputs nobody trained yet: `first` for an empty plan, else the best
    attempt's inputs with the first change along the ladder; None when all are tried."""
    best = plan.best
    base_inputs = best.inputs if best is not None else first
    if base_inputs is None:
        return None
    taken = seen | plan.fingerprints()
    if best is None and base_inputs.fingerprint() not in taken:
        return base_inputs, "first attempt"
    tried_teachers = {a.inputs.teacher for a in plan.attempts} | {base_inputs.teacher}
    for inputs, change in _variations(base_inputs, policy, opts.variants, opts.teachers,
                                      opts.has_labels, tried_teachers):
        if inputs.fingerprint() not in taken:
            return inputs, change
    return None


# -- recording outcomes --------------------------------------------------------------------
def begin(plan: AttemptPlan, inputs: AttemptInputs, change: str, job_id: int) -> AttemptPlan:
    attempt = Attempt(len(plan.attempts) + 1, inputs, change, inputs.fingerprint(), job_id)
    return replace(plan, attempts=(*plan.attempts, attempt), retry_at=None)


def figures_of(gates: Sequence[dict[str, Any]]) -> dict[str, float]:
    return {g["name"]: round(float(g["value"]), 4) for g in gates
            if g.get("value") is not None and g["name"] in FIGURES}


def failed(plan: AttemptPlan, version: int | None, outcome: str,
           failed_gates: Sequence[str], figures: dict[str, float], now: float,
           policy: Policy, more_possible: bool) -> AttemptPlan:
    """The last attempt failed: record why; schedule the next one (with backoff) or mark
    the plan exhausted."""
    last = plan.last
    if last is None:
        return plan
    done = replace(last, version=version, outcome=outcome, failed_gates=tuple(failed_gates),
                   figures=figures or last.figures)
    attempts = (*plan.attempts[:-1], done)
    if len(attempts) >= policy.attempts.max_attempts or not more_possible:
        return replace(plan, attempts=attempts, retry_at=None, exhausted=True)
    wait = policy.attempts.backoff_s * policy.attempts.backoff_factor ** (len(attempts) - 1)
    return replace(plan, attempts=attempts, retry_at=now + wait)


def exhausted_alert(plan: AttemptPlan, task: str, language: str, servable: bool) -> str:
    """One line: the gates each attempt failed and the best figures reached."""
    best = plan.best
    gates = sorted({g for a in plan.attempts for g in a.failed_gates})
    figures = ", ".join(f"{k} {v:.3f}" for k, v in (best.figures if best else {}).items())
    where = (f"not servable on {plan.base}: serving its fallback" if not servable else
             f"keeps champion v{plan.champion}")
    return (f"{task}/{language}: {len(plan.attempts)} attempts failed (gates: "
            f"{', '.join(gates) or 'none recorded'}); best attempt {best.n if best else '-'}"
            f" ({figures or 'no figures'}); {where}")


def summary(plan: AttemptPlan) -> list[dict[str, Any]]:
    """Per attempt: inputs, change, fingerprint, outcome, gates, figures (for alerts/CLI)."""
    return [{"n": a.n, "change": a.change, "fingerprint": a.fingerprint, "version": a.version,
             "outcome": a.outcome, "failed_gates": list(a.failed_gates), "figures": a.figures,
             "inputs": {**asdict(a.inputs), "data_languages": list(a.inputs.data_languages)}}
            for a in plan.attempts]
