"""Training and evaluation against the registry: what a training job and the gates run.

`train_adapter` loads the track's base from the registry (verified by sha256 on
materialisation, and by fingerprint after loading), picks the teacher language, reads the
task's registered data through controller.data.access (parallel pairs, pairs by id, target
labels, unlabelled text: `_recipe` says which), trains the LoRA student (warm-started from
a champion when asked, with replay of the champion's training pairs and an L2 pull toward
its weights), evaluates it on the held-out test split, writes the one-file artifact and
registers it with metrics and lineage (teacher, every dataset read with its sha256, base
fingerprint, hyper-parameters, parent version).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from controller.data.access import TaskData
from controller.encoders.text import TextEncoder
from controller.training.artifact import check_base, load_adapter, read_adapter, save_adapter
from controller.training.calibrate import scaled_head, shipped_head
from controller.training.crossfit import calibrator_record, cross_fitted, fit_maps, score_rows
from controller.training.distill import (
    IGNORE_LABEL,
    DistillConfig,
    ParallelData,
    distill,
    for_base,
    stratified_sample,
)
from controller.training.evaluate import evaluate_split
from controller.training.head import LinearHead
from controller.training.head_cache import cached_teacher_head, train_teacher_head
from controller.training.state_cache import BaseStateCache
from controller.training.teacher import (
    DEFAULT_TEACHER,
    TeacherChoice,
    choose_teacher,
    primary,
    rank_teachers,
)
from registry import queries
from registry.errors import IncompatibleAdapter, InvalidInput, NotFound
from registry.fingerprint import loaded_model_fingerprint
from registry.languages import canonical_language

# metrics kept in the registry row (the per-item vectors are recomputed by evaluate_adapter)
SUMMARY_KEYS = ("language", "source_language", "n", "accuracy", "macro_f1", "ece",
                "source_accuracy_teacher", "source_accuracy_student", "transfer_gap",
                "forgetting", "english_accuracy", "per_class")
DEFAULT_L2_PULL = 1e-2  # when continuing from a champion


def task_labels(registry: Any, task: str) -> tuple[str, ...]:
    """The task's label list (a head's output index i is labels[i]), from the registry."""
    return TaskData(registry, task).labels


def load_base(registry: Any, base_ref: str, device: str = "auto",
              max_length: int = 48) -> tuple[Any, TextEncoder]:
    """The registered base, materialised (sha256-verified) and loaded; the loaded model's
    fingerprint must equal the registered one."""
    encoder_row, model_dir = registry.encoder_dir(base_ref)
    encoder = TextEncoder(model_dir, device=device, max_length=max_length)
    actual = loaded_model_fingerprint(encoder.model, encoder.tokenizer)
    if actual != encoder_row.fingerprint:
        raise IncompatibleAdapter(f"{base_ref} is registered with fingerprint "
                                  f"{encoder_row.fingerprint}, the loaded model has {actual}",
                                  "re-register the base encoder")
    return encoder_row, encoder


def _track_base(registry: Any, task: str, language: str, base: str | None) -> str:
    rows = [r for r in registry.status(task) if r["language"] == language]
    if rows and rows[0]["base"]:
        if base and base != rows[0]["base"]:
            if _upgrading_to(registry, task, language, base):
                return base  # an upgrade candidate is trained on the target base (h9loop)
            raise InvalidInput(f"track {task}/{language} is on {rows[0]['base']}, not {base}",
                               "train on the track's base, or move the track first")
        return str(rows[0]["base"])
    if not base:
        raise NotFound(f"no track {task}/{language} and no base given",
                       "pass base='name@version' (see `xlt encoder list`)")
    return base


def _upgrading_to(registry: Any, task: str, language: str, base: str) -> bool:
    """A track with an active upgrade to `base` trains its candidate there (h9loop)."""
    return any(u.active and u.language == language
               for u in registry.query(queries.upgrades, base, task))


def _pairs(data: TaskData, teacher: str, languages: Sequence[str], limit: int | None,
           labels: Sequence[str] | None = None) -> ParallelData:
    """`labels`: the task's label list, to attach each target text's label index (training
    with target labels; a pair whose target has no label gets IGNORE_LABEL); None:
    distillation alone."""
    frames = [data.pairs(teacher, lang) for lang in languages]
    pairs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if limit is not None:
        pairs = pairs.iloc[:limit]
    target_labels = None
    if labels is not None and pairs["label"].notna().any():
        index = {name: i for i, name in enumerate(labels)}
        target_labels = [index[x] if isinstance(x, str) else IGNORE_LABEL
                         for x in pairs["label"]]
    return ParallelData(pairs["text_target"].tolist(), pairs["text_source"].tolist(),
                        target_labels)


def _training_pairs(data: TaskData, teacher: str, languages: Sequence[str],
                    limit: int | None, labels: Sequence[str] | None, shuffle: bool,
                    seed: int, pool: int | None = None) -> ParallelData:
    """`pool`: at most this many pairs (a stratified draw), the rows the epochs sample
    from; the teacher embeds only these."""
    pairs = _pairs(data, teacher, languages, limit, labels)
    if pool is not None and len(pairs) > pool:
        rng = np.random.default_rng(seed)
        strata = (np.asarray(pairs.target_labels) if pairs.target_labels is not None
                  else np.zeros(len(pairs), dtype=int))
        pairs = pairs.take(stratified_sample(strata, pool, rng).tolist())
    if not shuffle:
        return pairs
    # corrupted data: each target text gets a random item's source text and label, so
    # a recipe that reads target labels learns the corruption too
    order = np.random.default_rng(seed).permutation(len(pairs))
    shuffled = None if pairs.target_labels is None else [pairs.target_labels[i] for i in order]
    return ParallelData(pairs.target_texts, [pairs.source_texts[i] for i in order], shuffled)


def _teacher(data: TaskData, language: str, given: str | None
             ) -> tuple[str, TeacherChoice | None]:
    """The teacher: `given` (it must have labelled train data), else the nearest language
    with labelled train data (choose_teacher: English unless a nearer one teaches as
    well); a task without English takes the nearest by URIEL, else the first."""
    with_train = [lang for lang in data.languages_with("train")
                  if primary(lang) != primary(language)]
    if given:
        teacher = canonical_language(given)
        data.require(teacher, "train", f"{teacher} cannot teach {language}")
        return teacher, None
    if not with_train:
        raise NotFound(f"task {data.task!r} has labelled train data in no language but "
                       f"{language}, so nothing can teach it",
                       f"register a high-resource language's labelled rows: `xlt dataset "
                       f"register {data.task} FILE --lang en --split train ...`")
    if DEFAULT_TEACHER in with_train:
        choice = choose_teacher(language, candidates=with_train)
        return choice.teacher, choice
    ranking = rank_teachers(language, with_train)
    teacher = ranking[0]["language"] if ranking else with_train[0]
    return teacher, TeacherChoice(language, teacher, "nearest language with labelled "
                                  "train data (the task has no English)", ranking)


def _recipe(data: TaskData, teacher: str, languages: Sequence[str]) -> dict[str, Any]:
    """What the registered data lets this training do (recorded in its hyper-parameters):
    `transfer` (parallel pairs, no target labels: the teacher's embeddings and soft labels
    on the pivot side), `transfer+labels` (target labels too), `labels-only` (target
    labels and no pivot text: cross-entropy on them, the target text is its own pivot)
    or `self-distillation` (unlabelled target text only: the teacher head's soft labels on
    the base's own embedding, which can at best keep the zero-shot accuracy)."""
    sources = {lang: data.pair_source(teacher, lang) for lang in languages}
    kinds = {s.kind for s in sources.values()}
    labelled = any(s.labelled for s in sources.values())
    if kinds <= {"self"}:
        recipe = "labels-only" if labelled else "self-distillation"
    else:
        recipe = "transfer+labels" if labelled else "transfer"
    return {"recipe": recipe, "pairs_from": {lang: s.kind for lang, s in sources.items()},
            "target_labels_available": labelled}


def train_adapter(registry: Any, task: str, language: str, teacher: str | None = None,
                  epochs: int | None = None, device: str = "auto", seed: int = 0,
                  continue_from: int | None = None, base: str | None = None,
                  data_languages: Sequence[str] | None = None,
                  config: DistillConfig | None = None, limit_pairs: int | None = None,
                  progress: bool = False, shuffle_pairs: bool = False,
                  target_labels: bool = False, target_label_weight: float = 1.0,
                  top_blocks: int | None = None, calibration_folds: int = 0,
                  lexical: bool | None = None, lexical_refit: bool | None = None,
                  max_rows_per_epoch: int | None = None,
                  **_ignored: Any) -> dict[str, Any]:
    """Train, evaluate and register a candidate adapter; returns {"version", "metrics", ...}.

    `data_languages`: whose text to train on (default: the track's language; a retrain
    after drift may add the variant the traffic moved to, e.g. ["yo", "yo-BJ"]).
    `shuffle_pairs`: pair each target text with a random source text (corrupted data, for
    drills and the demo: such a candidate must fail its gates).
    `target_labels`: add cross-entropy on the target texts' own labels (weight
    `target_label_weight`), where the dataset has them (a rejected attempt's next step;
    a deep base's default recipe, distill.for_base, uses them always).
    `top_blocks`: how many top encoder blocks get LoRA (default: the base's own, see
    distill.for_base); ignored when `config` is given.
    `calibration_folds` (0, or >= 2): also train the recipe that many times without a
    fold of the items, and store the cross-fitted confidence -> P(correct) map that
    label-free judgement reads (controller.training.crossfit); costs that many trainings.
    `lexical`: ship a lexical half beside the head (controller.training.lexical); None
    keeps the recipe's choice (deep bases: yes), True needs a recipe that reads target
    labels and calibrates on dev (a deep base's), else it is refused before anything runs.
    `lexical_refit`: with the lexical half, fit it again on train + dev once dev has
    weighed the halves (None: the recipe's choice, on); the confidence map is then fitted
    on the half fitted without dev, whose dev scores are out of sample, and stored.
    Extra keyword arguments (e.g. the reconciler's drift_report_id) are accepted and
    recorded in the hyper-parameters."""
    if calibration_folds == 1 or calibration_folds < 0:
        raise InvalidInput(f"calibration_folds must be 0 (dev only) or at least 2, got "
                           f"{calibration_folds}", "use 0, or 5 for a cross-fitted map")
    data = TaskData(registry, task)
    labels = data.labels
    language = canonical_language(language)
    base_ref = _track_base(registry, task, language, base)
    langs = [canonical_language(x) for x in (data_languages or [language])]
    # refused before a model is loaded: what the track cannot be gated without
    data.require(language, "test", "a candidate of this track cannot be gated")
    teacher_lang, choice = _teacher(data, language, teacher)
    plan = _recipe(data, teacher_lang, langs)
    has_dev = data.find(language, "labelled", "dev") is not None
    encoder_row, encoder = load_base(registry, base_ref, device)
    # per-base defaults (deep bases: frozen prefix, short sequences), see distill.for_base
    cfg = config or for_base(encoder.model.config, top_blocks=top_blocks)
    cfg = replace(cfg, seed=seed, **({"epochs": epochs} if epochs else {}),
                  **({"lexical": lexical} if lexical is not None else {}),
                  **({"lexical_refit": lexical_refit} if lexical_refit is not None else {}))
    if lexical and not (plan["target_labels_available"] and has_dev):
        raise InvalidInput(f"a lexical half needs {language} labels for training and a dev "
                           f"split to weigh it; task {task!r} has "
                           f"{'no dev split' if has_dev is False else 'no labels'} there",
                           "train without --lexical, or register the missing data")
    if cfg.lexical and not (cfg.calibrate and (cfg.ce_weight > 0 or target_labels)):
        raise InvalidInput(f"a lexical half needs a recipe that trains on {language}'s labels "
                           f"and calibrates on its dev split; {base_ref}'s recipe does not",
                           "train without --lexical, or on a deep base (e.g. me5-small@1)")
    if not plan["target_labels_available"]:  # nothing to fit a lexical half on
        cfg = replace(cfg, lexical=False)
    if not has_dev:  # no dev split: no temperature, no lexical weighing
        cfg = replace(cfg, calibrate=False, lexical=False)
        if calibration_folds:
            raise InvalidInput(f"calibration_folds needs {language}'s dev split",
                               f"register it, or set calibration_folds = 0 for {task}")
    if max_rows_per_epoch:
        cfg = replace(cfg, epoch_rows=int(max_rows_per_epoch))

    train = data.labelled("train", [teacher_lang, *langs])
    pair_labels = labels if target_labels or cfg.ce_weight > 0 else None
    pool = cfg.epoch_rows * cfg.epochs if cfg.epoch_rows else None
    pairs = _training_pairs(data, teacher_lang, langs, limit_pairs, pair_labels,
                            shuffle_pairs, seed, pool)
    unlabeled = [t for lang in langs for t in data.unlabelled(lang)["text"]]
    if pool is not None and len(unlabeled) > pool:
        pick = np.random.default_rng(seed).choice(len(unlabeled), pool, replace=False)
        unlabeled = [unlabeled[i] for i in sorted(pick)]
    if target_labels and cfg.ce_weight == 0:
        cfg = replace(cfg, ce_weight=target_label_weight)

    # what the frozen base computes (teacher embeddings, prefix states) is kept per base
    cache = BaseStateCache(encoder_row.fingerprint)
    init_lora = replay = None
    parent = None
    if continue_from is not None:
        parent_row, parent_path = registry.adapter_weights(task, language, continue_from)
        meta, init_lora, head_tensors = read_adapter(parent_path)
        check_base(meta, encoder.model, encoder.tokenizer)
        # distil against the head's own logits: undo the parent's calibration, if any
        head = scaled_head(LinearHead.from_tensors(head_tensors),
                           1.0 / float(meta.get("temperature") or 1.0))
        old_langs = parent_row.hyperparams.get("data_languages") or [language]
        # a continuation adapts at least the blocks its parent adapted (fewer would drop
        # the parent's LoRA weights of the blocks between): the lower cut of the two
        parent_frozen = parent_row.hyperparams.get("frozen_layers")
        if isinstance(parent_frozen, int) and parent_frozen < cfg.frozen_layers:
            cfg = replace(cfg, frozen_layers=parent_frozen)
        replay = _pairs(data, teacher_lang, old_langs, limit_pairs)
        if cfg.l2_pull == 0:
            cfg = replace(cfg, l2_pull=DEFAULT_L2_PULL)
        parent = continue_from
    else:
        # the teacher's head: trained once per (base, teacher language, data, seed), cached
        head = cached_teacher_head(encoder, encoder_row.fingerprint, train, teacher_lang,
                                   labels, seed, cache=cache)

    t0 = time.perf_counter()
    result = distill(encoder, head, pairs, cfg, replay=replay, init_lora=init_lora,
                     unlabeled=unlabeled, progress=progress, cache=cache)
    # read only when used: the temperature (or stacking) fit and the folds' own fits
    dev = (data.labelled("dev", [language]) if cfg.calibrate or calibration_folds
           else None)
    # T from dev folded into the shipped head, and its lexical half where the recipe has one
    shipped = shipped_head(encoder, result.model, head, pairs.target_texts,
                           pairs.target_labels, dev, language, labels, cfg.calibrate,
                           cfg.lexical, cache, refit=cfg.lexical_refit)
    head, temperature = shipped.head, shipped.temperature
    wall = time.perf_counter() - t0
    calibrator = None
    # the nearest-neighbour reference of the sharper map: the adapter's training rows of
    # its language (what LiveOperations.correctness embeds at judgement time)
    own_rows = train[train["language"] == language]
    if shipped.refitted and not calibration_folds:
        # the shipped half has read dev's labels: the dev map that label-free judgement
        # would fit at serving time (LiveOperations.calibrator) is fitted here instead, on
        # the same rows scored by the head fitted without them
        rows = data.labelled("dev", [language, *data.variants(language)])
        calibrator = calibrator_record(fit_maps(score_rows(
            encoder, result.model, shipped.honest, rows, own_rows, labels, cache)), folds=0)
    if calibration_folds and dev is not None:
        def recipe(kept: pd.DataFrame) -> tuple[Any, LinearHead]:
            # the fresh recipe on the kept items: teacher head, pairs, student, temperature
            fold_head = train_teacher_head(encoder, kept, teacher_lang, labels, seed, cache)
            fold_pairs = _training_pairs(data.without(kept), teacher_lang, langs,
                                         limit_pairs, pair_labels, shuffle_pairs, seed, pool)
            fold = distill(encoder, fold_head, fold_pairs, cfg, progress=False, cache=cache)
            fold_head = shipped_head(encoder, fold.model, fold_head,
                                     fold_pairs.target_texts, fold_pairs.target_labels,
                                     dev, language, labels, cfg.calibrate, cfg.lexical,
                                     cache, refit=cfg.lexical_refit).head
            return fold.model, fold_head

        t_cal = time.perf_counter()
        calibrator = calibrator_record(cross_fitted(
            encoder, train, language, labels, recipe, calibration_folds, seed,
            extra=score_rows(encoder, result.model, shipped.honest,
                             dev[dev["language"] == language], own_rows, labels, cache),
            cache=cache), calibration_folds)
        calibrator["seconds"] = round(time.perf_counter() - t_cal, 2)
    test = data.labelled("test", [teacher_lang, language])
    evaluation = evaluate_split(encoder, result.model, head, test, language, labels,
                                source_language=teacher_lang, cache=cache)
    metrics = {k: evaluation[k] for k in SUMMARY_KEYS}
    if "english_accuracy_served" in evaluation:
        metrics["english_accuracy_served"] = evaluation["english_accuracy_served"]
    metrics["split"] = "test"
    if calibrator is not None:
        metrics["calibrator"] = calibrator
    hyper = {**cfg.to_dict(), "data_languages": langs, "shuffle_pairs": shuffle_pairs,
             "target_labels": pairs.target_labels is not None, "temperature": temperature,
             "lexical_ngrams": int(head.lexical.ids.size) if head.lexical is not None else 0,
             "device": str(encoder.device),
             "pairs": len(pairs), "train_seconds": round(wall, 2), **plan,
             "unlabelled_texts": len(unlabeled), "datasets": data.lineage(),
             "calibration_folds": calibration_folds,
             "teacher_choice": choice.to_dict() if choice else {"teacher": teacher_lang,
                                                                  "reason": "given"},
             **{k: v for k, v in _ignored.items() if isinstance(v, int | float | str | None)}}

    with tempfile.TemporaryDirectory(prefix="xlt-adapter-") as tmp:
        path = Path(tmp) / f"{task}-{language}.safetensors"
        save_adapter(path, result.model, head, list(labels), encoder_row.fingerprint,
                     extra={"task": task, "language": language, "teacher": teacher_lang,
                            **({"temperature": temperature} if temperature else {})})
        adapter = registry.register_adapter(
            task=task, language=language, base=base_ref, weights=path,
            teacher_language=teacher_lang, dataset_ids=sorted(data.used), metrics=metrics,
            hyperparams=hyper, parent_version=parent)
    return {"version": int(adapter.version), "metrics": metrics, "teacher": teacher_lang,
            "train_seconds": wall, "history": result.history}


def evaluate_adapter(registry: Any, task: str, language: str, version: int,
                     device: str = "auto", split: str = "test") -> dict[str, Any]:
    """The full evaluation dict (with per-item `correct`) of a registered adapter."""
    labels = task_labels(registry, task)
    language = canonical_language(language)
    row = registry.query(queries.show_adapter, task, language, version)
    _, path = registry.adapter_weights(task, language, version)
    encoder_row, encoder = load_base(registry, row["base"], device)
    loaded = load_adapter(path, encoder.model, encoder.tokenizer)  # fingerprint check
    teacher = row["teacher_language"] or "en"
    data = TaskData(registry, task)
    data.require(language, split, "the adapter cannot be evaluated")
    df = data.labelled(split, [teacher, language])
    result = evaluate_split(encoder, loaded.model, loaded.head, df, language, labels,
                            source_language=teacher,
                            cache=BaseStateCache(encoder_row.fingerprint))
    result.update({"task": task, "version": int(version), "split": split})
    return result
