"""The training tables: [training], [attempts] (a rejected candidate's next try) and
[upgrade] (moving tracks to another base)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from controller.policy.fields import Strict, base_ref, canonical_languages, check_folds


class TrainingPolicy(Strict):
    epochs: int = Field(6, ge=1)
    # top encoder blocks a deep base (12+ blocks) adapts with LoRA; None: distill.for_base's
    # six. Fewer trains and serves faster (the demo uses 2 to fit its 10 minutes), six
    # reach 3 points more on yo and am. Shallow bases (MiniLM) always adapt every block
    top_blocks: int | None = Field(None, ge=1)
    # > 0: each training also trains its recipe this many times without a fold of the
    # items, for a cross-fitted confidence map that label-free canaries and guards read
    # (controller.training.crossfit); 0: the map is fitted on the dev split alone
    calibration_folds: int = Field(0, ge=0)
    # the lexical half beside a deep-base adapter's head (controller.training.lexical):
    # None keeps the base's recipe (on for deep bases), false ships the linear head alone
    lexical: bool | None = None
    # with the lexical half: refit it on train + dev once dev has weighed the halves (+1 to
    # +2 points); false keeps the dev split unseen by the adapter (the demo's traffic is
    # drawn from it). The stored confidence map is fitted before the refit either way
    lexical_refit: bool = True
    teacher: str | None = None  # None: the nearest language with labelled train data (URIEL)
    # a task with more training pairs than this draws a fresh sample of this many each
    # epoch, stratified by label (a CPU training stays within minutes; a GPU can take all
    # of it: raise it, or None for every pair every epoch)
    max_rows_per_epoch: int | None = Field(20_000, ge=100)
    max_attempts: int = Field(2, ge=1)
    # a training running longer than this is given up as lost (a hung worker whose process
    # lives on): launched again, or failed once its attempts are spent; its late outcome,
    # if it ever comes, is dropped
    timeout_s: float = Field(6 * 3600.0, gt=0)
    seed: int = 0
    device: str = "auto"
    # the tick never waits on a training: it launches up to these many at once and polls
    # them; more drifting tracks than slots wait in a fair queue (controller.executors.job_queue)
    max_concurrent: int = Field(1, ge=1, description="trainings at once, all tracks")
    per_gpu: int = Field(1, ge=1, description="trainings at once on one GPU")
    # what one training asks for: num_gpus > 0 puts it on a GPU (local executors pick the
    # least loaded cuda:N; Ray schedules it), num_cpus / memory_mb are Ray's resources
    num_gpus: float = Field(0.0, ge=0)
    num_cpus: float = Field(1.0, gt=0)
    memory_mb: int | None = Field(None, ge=1)
    gpus: int | None = Field(None, ge=0, description="GPUs to use; None: all that are seen")
    # the Ray executor's cluster: "host:port" or "ray://host:10001"; None: RAY_ADDRESS, else
    # a local cluster that ends with the controller (controller.executors.ray)
    ray_address: str | None = None

    @field_validator("calibration_folds")
    @classmethod
    def _folds(cls, folds: int) -> int:
        return check_folds(folds)


class UpgradePolicy(Strict):
    """Move controlled tracks to another base encoder: the controller files the request
    (as `xlt encoder upgrade` would) and carries each track through the loop on it."""

    base: str
    languages: list[str] = Field(default_factory=list, description="empty: every track")

    @field_validator("base")
    @classmethod
    def _base(cls, value: str) -> str:
        return base_ref(value)

    @field_validator("languages")
    @classmethod
    def _languages(cls, values: list[str]) -> list[str]:
        return canonical_languages(values)


class AttemptPolicy(Strict):
    """How a rejected candidate's next attempt differs, and how many there may be (per
    track, base and champion) before the track is marked not servable on its base."""

    max_attempts: int = Field(3, ge=1)
    backoff_s: float = Field(1800.0, ge=0)  # wait before attempt 2; x factor after each
    backoff_factor: float = Field(2.0, ge=1)
    # the changes tried, in order, each on top of the best attempt so far
    ladder: list[Literal["target_labels", "variants", "teacher", "epochs"]] = Field(
        default_factory=lambda: ["target_labels", "variants", "teacher", "epochs"])
    epoch_growth: float = Field(2.0, gt=1)
    target_label_weight: float = Field(1.0, gt=0)  # cross-entropy weight on target labels
