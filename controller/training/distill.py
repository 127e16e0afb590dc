"""Teacher-student distillation of a LoRA adapter (Reimers and Gurevych 2020).

The teacher is the frozen base encoder reading the source-language (English) text; the
student is a copy of the base with LoRA layers reading the language-L text of the same
item. The student learns `student(text_L) ~ teacher(text_en)` (embedding MSE), optionally
plus:

* KL from the task head's soft labels on the teacher embedding to the head's output on the
  student embedding (the head is frozen; this spends the student's capacity where the task
  looks, and uses no L labels);
* KL to the teacher's soft labels on unlabeled L text (no parallel text needed);
* cross-entropy on L labels where the caller has them;
* against forgetting: self pairs in the source language (`student(en) ~ teacher(en)`), a
  share of replayed earlier pairs, and an L2 pull toward the previous LoRA weights when
  continuing from a champion.

Speed (2 CPU cores matter): teacher embeddings and soft labels are computed once; texts are
tokenized once with a short max_length; batches hold texts of similar length (sort by
length with a random tie-break per epoch, then shuffle batch order), so padding is small;
only the LoRA parameters get gradients.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from tqdm.auto import tqdm

from controller.encoders.text import TextEncoder, mean_pool
from controller.training.embed import embed_sorted, pad_batch, tokenize_ids
from controller.training.head import LinearHead
from controller.training.split import pad_states, prefix_states, top_embeddings
from controller.training.state_cache import BaseStateCache

IGNORE_LABEL = -100


@dataclass(frozen=True)
class DistillConfig:
    """Hyper-parameters; recorded with the adapter (lineage), so keep them plain values."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    # all linear layers of a BERT block (attention q/k/v/output and both FFN "dense"):
    # query/value alone learned too slowly to move non-English subwords in 4 epochs
    target_modules: tuple[str, ...] = ("query", "key", "value", "dense")
    epochs: int = 3
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # names and keyword lists are short: 99% of rows are under 45 word pieces
    max_length: int = 48
    mse_weight: float = 1.0
    kl_weight: float = 1.0
    kl_temperature: float = 1.0
    unlabeled_kl_weight: float = 0.0
    ce_weight: float = 0.0
    # more samples than this: each epoch trains on a fresh stratified draw of this many
    epoch_rows: int | None = None
    # share of the pair count added as source self pairs, keeping English usable
    source_share: float = 0.25
    # the source self pairs carry their item's label too (cross-entropy with ce_weight,
    # where the pairs have labels): keeps English accuracy through the student while the
    # target labels pull the top blocks toward language L
    source_labels: bool = False
    # share of the pair count drawn from earlier pairs when continuing from a champion
    replay_share: float = 0.25
    l2_pull: float = 0.0
    seed: int = 0
    # bottom encoder blocks left without LoRA; their output is computed once per text and
    # each step runs only the blocks above (controller.training.split). 0 = adapt all.
    frozen_layers: int = 0
    # after training, fit a temperature on the language's dev split and fold it into the
    # shipped head (controller.training.calibrate); the caller does it, distill() does not
    calibrate: bool = False
    # with calibrate and target labels: ship a lexical half beside the linear head
    # (controller.training.lexical), fitted on the training texts, stacked on dev
    lexical: bool = False
    # with lexical: once dev has chosen the halves' weights, fit the lexical half again on
    # the training texts plus dev's (controller.training.calibrate.shipped_head)
    lexical_refit: bool = True

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["target_modules"] = list(self.target_modules)
        return out

    def lora_config(self, num_layers: int | None = None) -> LoraConfig:
        layers = None
        if self.frozen_layers:
            if num_layers is None or not 0 < self.frozen_layers < num_layers:
                raise ValueError(f"frozen_layers={self.frozen_layers} needs a base with more "
                                 f"layers (it has {num_layers})")
            layers = list(range(self.frozen_layers, num_layers))
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), bias="none",
                          layers_to_transform=layers,
                          layers_pattern="layer" if layers is not None else None)


DEEP_TOP_BLOCKS = 6  # blocks a deep base adapts (LoRA); everything below is cached
# the deep-base recipe (measured on sw, yo, am; bench/results/training.md): distillation
# plus the target language's own labels, the English self pairs labelled too, three
# epochs, a lexical half beside the head (bench/ceiling_bench.py: +3 to +6 points on sw,
# yo and am), calibrated on dev
DEEP_RECIPE: dict[str, Any] = {"max_length": 32, "epochs": 3, "lr": 5e-3, "ce_weight": 1.0,
                               "source_share": 0.5, "source_labels": True, "calibrate": True,
                               "lexical": True}


def for_base(model_config: Any, top_blocks: int | None = None, **overrides: Any
             ) -> DistillConfig:
    """The defaults for a base: deep encoders (12+ blocks, e.g. multilingual-e5-small) adapt
    their top six blocks only, from cached prefix states, with DEEP_RECIPE; shallow ones
    (all-MiniLM-L6-v2) keep the full-depth LoRA they were tuned with. `top_blocks` (the
    policy's `[training] top_blocks`) overrides how many top blocks a deep base adapts (as
    many as it has, or more, adapts them all); shallow bases ignore it, so one policy can
    hold first champions on MiniLM and an upgrade to a deep base.

    Why six blocks and three epochs (2 CPU cores, two seeds, bench/results/training.md): on
    top of two blocks for four epochs (25-40 s a language) they add 3 points on yo and am
    (0.701 -> 0.730, 0.700 -> 0.726, mean of seeds 0 and 1) and none on sw, in 60-70 s.
    Eight blocks for two epochs lost on all three; what moved the top blocks further
    before was the target labels (cross-entropy), with the English self pairs labelled and
    doubled against forgetting."""
    layers = int(getattr(model_config, "num_hidden_layers", 0) or 0)
    if top_blocks is not None and top_blocks < 1:
        raise ValueError(f"top_blocks must be at least 1, not {top_blocks}")
    if layers < 12:
        return replace(DistillConfig(), **overrides)
    top = DEEP_TOP_BLOCKS if top_blocks is None else top_blocks
    return replace(DistillConfig(frozen_layers=max(0, layers - top), **DEEP_RECIPE),
                   **overrides)


def stratified_sample(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k indices drawn without replacement, each label (IGNORE_LABEL too) keeping its share
    of the rows (largest remainders), in index order."""
    labels = np.asarray(labels)
    values, counts = np.unique(labels, return_counts=True)
    quota = counts * (k / len(labels))
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take))[: k - int(take.sum())]:
        take[i] += 1
    picked = [rng.choice(np.flatnonzero(labels == v), size=n, replace=False)
              for v, n in zip(values, take, strict=True) if n]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=int)


@dataclass
class ParallelData:
    """Aligned texts: target_texts[i] (language L) translates source_texts[i] (teacher's
    language). target_labels (label indices) only where L labels exist and may be used."""

    target_texts: list[str]
    source_texts: list[str]
    target_labels: list[int] | None = None

    def __post_init__(self) -> None:
        if len(self.target_texts) != len(self.source_texts):
            raise ValueError("target_texts and source_texts differ in length")
        if self.target_labels is not None and len(self.target_labels) != len(self.target_texts):
            raise ValueError("target_labels and target_texts differ in length")

    def __len__(self) -> int:
        return len(self.target_texts)

    def take(self, idx: Sequence[int]) -> ParallelData:
        labels = None if self.target_labels is None else [self.target_labels[i] for i in idx]
        return ParallelData([self.target_texts[i] for i in idx],
                            [self.source_texts[i] for i in idx], labels)


@dataclass
class DistillResult:
    model: PeftModel
    config: DistillConfig
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    teacher_seconds: float = 0.0
    steps: int = 0
    samples: int = 0


@dataclass
class _Samples:
    """Everything the loop needs, precomputed once."""

    ids: list[list[int]]
    teacher_emb: torch.Tensor   # (n, hidden); zeros where mse weight is 0
    soft: torch.Tensor          # (n, labels) teacher soft labels
    mse_w: torch.Tensor
    kl_w: torch.Tensor
    ce_w: torch.Tensor
    labels: torch.Tensor


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _build_samples(encoder: TextEncoder, head: LinearHead, cfg: DistillConfig,
                   pairs: ParallelData, replay: ParallelData | None,
                   unlabeled: Sequence[str], rng: np.random.Generator,
                   cache: BaseStateCache | None = None) -> _Samples:
    n = len(pairs)
    parts: list[tuple[ParallelData, float]] = [(pairs, 1.0)]
    if cfg.source_share > 0 and n:
        k = min(n, math.ceil(cfg.source_share * n))
        idx = sorted(rng.choice(n, size=k, replace=False).tolist())
        src = [pairs.source_texts[i] for i in idx]
        src_labels = (None if pairs.target_labels is None or not cfg.source_labels
                      else [pairs.target_labels[i] for i in idx])
        parts.append((ParallelData(src, src, src_labels), 1.0))
    if replay is not None and len(replay) and cfg.replay_share > 0:
        k = min(len(replay), math.ceil(cfg.replay_share * max(n, 1)))
        idx = sorted(rng.choice(len(replay), size=k, replace=False).tolist())
        parts.append((replay.take(idx), 1.0))

    target_texts = [t for p, _ in parts for t in p.target_texts]
    source_texts = [t for p, _ in parts for t in p.source_texts]
    labels = [lab for p, _ in parts
              for lab in (p.target_labels or [IGNORE_LABEL] * len(p))]
    n_pairs = len(target_texts)
    all_target = target_texts + list(unlabeled)
    teacher_in = source_texts + list(unlabeled)
    # one teacher pass: embeddings of the source side, and of unlabeled L text (KL only)
    emb = (cache.embeddings(encoder, teacher_in, cfg.max_length) if cache is not None
           else embed_sorted(encoder, teacher_in, max_length=cfg.max_length))
    with torch.inference_mode():
        device = head.linear.weight.device
        soft = torch.softmax(head(emb.to(device)) / cfg.kl_temperature, dim=-1).float().cpu()
    n_unl = len(unlabeled)
    mse_w = torch.tensor([cfg.mse_weight] * n_pairs + [0.0] * n_unl)
    kl_w = torch.tensor([cfg.kl_weight] * n_pairs + [cfg.unlabeled_kl_weight] * n_unl)
    lab = torch.tensor(labels + [IGNORE_LABEL] * n_unl, dtype=torch.long)
    ce_w = torch.where(lab != IGNORE_LABEL, cfg.ce_weight, 0.0).float()
    return _Samples(ids=tokenize_ids(encoder, all_target, cfg.max_length), teacher_emb=emb,
                    soft=soft, mse_w=mse_w, kl_w=kl_w, ce_w=ce_w, labels=lab)


def _batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator
             ) -> list[np.ndarray]:
    """Length buckets: sort by (length, random tie-break), cut, shuffle the batch order."""
    order = np.lexsort((rng.random(len(lengths)), lengths))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)  # type: ignore[arg-type]
    return batches


def build_student(base_model: torch.nn.Module, cfg: DistillConfig,
                  init_lora: dict[str, torch.Tensor] | None = None) -> PeftModel:
    """A copy of the base with LoRA layers (the base passed in stays untouched, it is the
    teacher); `init_lora` (peft state-dict keys) warm-starts from an earlier adapter."""
    num_layers = getattr(base_model.config, "num_hidden_layers", None)
    student = get_peft_model(copy.deepcopy(base_model), cfg.lora_config(num_layers))
    if init_lora is not None:
        result = set_peft_model_state_dict(student, init_lora)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"warm-start weights do not fit this LoRA config: {unexpected[:3]}")
    return student


def distill(encoder: TextEncoder, head: LinearHead, pairs: ParallelData,
            config: DistillConfig | None = None, *, replay: ParallelData | None = None,
            unlabeled: Sequence[str] = (), init_lora: dict[str, torch.Tensor] | None = None,
            progress: bool = True, cache: BaseStateCache | None = None) -> DistillResult:
    """Train a LoRA student on `pairs`; `encoder.model` is the frozen teacher (not modified).
    `cache`: the base's state cache (teacher embeddings and prefix states computed once per
    base and token ids, across runs); None computes them in this run only."""
    cfg = config or DistillConfig()
    seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = encoder.device
    encoder.model.eval()
    head = head.to(device).eval().requires_grad_(False)

    t0 = time.perf_counter()
    samples = _build_samples(encoder, head, cfg, pairs, replay, unlabeled, rng, cache)
    pad_id = encoder.tokenizer.pad_token_id or 0
    states = None
    if cfg.frozen_layers and cache is not None:
        states = cache.prefix_states(encoder.model, samples.ids, cfg.frozen_layers, pad_id,
                                     device)
    elif cfg.frozen_layers:
        states = prefix_states(encoder.model, samples.ids, cfg.frozen_layers, pad_id, device)
    teacher_seconds = time.perf_counter() - t0

    student = build_student(encoder.model, cfg, init_lora).to(device)
    student.train()
    params = [p for p in student.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params] if cfg.l2_pull > 0 else None
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lengths = np.array([len(x) for x in samples.ids])
    per_epoch = (len(lengths) if not cfg.epoch_rows or cfg.epoch_rows >= len(lengths)
                 else cfg.epoch_rows)
    steps_per_epoch = math.ceil(per_epoch / cfg.batch_size)
    total = max(1, steps_per_epoch * cfg.epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)) * max(0.0, 1 - s / total))
    result = DistillResult(model=student, config=cfg, teacher_seconds=teacher_seconds,
                           samples=len(lengths))

    t0 = time.perf_counter()
    bar = tqdm(total=total, disable=not progress, desc="distill", unit="step")
    for epoch in range(cfg.epochs):
        sums = {"loss": 0.0, "mse": 0.0, "kl": 0.0, "ce": 0.0}
        if per_epoch < len(lengths):  # this epoch's draw, stratified by label
            chosen = stratified_sample(samples.labels.numpy(), per_epoch, rng)
            batches = [chosen[b] for b in _batches(lengths[chosen], cfg.batch_size, rng)]
        else:
            batches = _batches(lengths, cfg.batch_size, rng)
        for idx in batches:
            it = torch.as_tensor(idx)
            if states is not None:
                hidden, mask = pad_states([states[i] for i in idx], device)
                s = top_embeddings(student, hidden, mask, cfg.frozen_layers)
            else:
                batch = pad_batch([samples.ids[i] for i in idx], pad_id, device)
                out = student(**batch)
                s = F.normalize(mean_pool(out.last_hidden_state, batch["attention_mask"]),
                                dim=-1)
            mse = ((s - samples.teacher_emb[it].to(device)) ** 2).sum(-1)
            logits = head(s)
            logp = F.log_softmax(logits / cfg.kl_temperature, dim=-1)
            soft = samples.soft[it].to(device)
            kl = (soft * (soft.clamp_min(1e-12).log() - logp)).sum(-1) * cfg.kl_temperature ** 2
            labels = samples.labels[it].to(device)
            ce = F.cross_entropy(logits, labels.clamp_min(0), reduction="none")
            loss = (samples.mse_w[it].to(device) * mse + samples.kl_w[it].to(device) * kl
                    + samples.ce_w[it].to(device) * ce).mean()
            if anchor is not None:
                loss = loss + cfg.l2_pull * sum(((p - a) ** 2).sum()
                                                for p, a in zip(params, anchor, strict=True))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            result.steps += 1
            with torch.no_grad():
                sums["loss"] += loss.item()
                sums["mse"] += mse.mean().item()
                sums["kl"] += kl.mean().item()
                sums["ce"] += (ce * (labels != IGNORE_LABEL)).mean().item()
            bar.update(1)
        result.history.append({"epoch": epoch, **{k: v / max(1, len(batches))
                                                  for k, v in sums.items()}})
        bar.set_postfix(loss=f"{result.history[-1]['loss']:.4f}")
    bar.close()
    result.train_seconds = time.perf_counter() - t0
    student.eval()
    return result
