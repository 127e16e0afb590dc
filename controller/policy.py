"""The policy file (TOML): what the controller controls and every threshold it acts on.

Every field has a default, so an empty file is a valid policy. A bad file is refused with
the field's path and the reason (pydantic's validation, reworded into one line).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from registry.commands.lookups import parse_encoder_ref
from registry.errors import InvalidInput, UnsafeInput
from registry.jsonsafe import MAX_DEPTH, depth_exceeds
from registry.languages import canonical_language
from registry.names import language_tag, task_name


def canonical_languages(values: list[str]) -> list[str]:
    """BCP-47 tags canonicalised for a policy field; a bad tag is the field's error."""
    return [_field_error(canonical_language, v) for v in values]


def _field_error(check: Callable[[str], str], value: str) -> str:
    """`check(value)`, its InvalidInput as the ValueError pydantic reports with the
    field's path."""
    try:
        return check(value)
    except InvalidInput as exc:
        raise ValueError(str(exc)) from exc


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Per-language drift thresholds, read by controller.drift's signals: a pydantic model without
# the heavy signal libraries, so that validating a policy file (and starting the `xlt` CLI)
# never imports Evidently. The policy's [drift] table and each track's [tracks.drift] table
# are validated by it.
class DriftThresholds(BaseModel):
    """Thresholds of one language's check. Defaults were calibrated on the CLDR emoji data
    (stable traffic vs. script, orthography and label-mix shifts); the policy file may
    override any of them per language."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_events: int = Field(200, ge=1, description="fewer current events: insufficient_data")
    # a reference of a few dozen items is its own noise (hi-Latn's test split has 87 rows:
    # label JS distance 0.17 on stable traffic); build it from more data instead
    min_reference: int = Field(100, ge=1, description="smaller reference: insufficient_data")
    # measured on stable traffic (max over 9 languages, MiniLM and hashing embeddings):
    # embedding 1.18, descriptors 0.19, script_mix 0.04, prediction 0.09, confidence 0.30;
    # shifts with the variant reaching 60% of traffic: embedding 1.3-35, script_mix
    # 0.13-0.41, prediction (label mix) 0.24-0.25
    embedding: float = Field(2.0, gt=0, description="cosine distance / reference noise scale")
    descriptors: float = Field(0.25, gt=0, description="normed Wasserstein, any descriptor")
    script_mix: float = Field(0.06, gt=0, description="Jensen-Shannon distance, base 2")
    prediction: float = Field(0.2, gt=0, description="Jensen-Shannon distance, labels")
    confidence: float = Field(0.35, gt=0, description="normed Wasserstein, confidence")
    min_signals: int = Field(1, ge=1, description="drifted signals needed for 'drift'")
    disabled: tuple[str, ...] = Field((), description="signals not computed")

    def for_signal(self, name: str) -> float:
        return float(getattr(self, name))


DriftPolicy = DriftThresholds


class GatePolicy(Strict):
    min_accuracy: float = Field(0.45, ge=0, le=1)
    min_macro_f1: float = Field(0.30, ge=0, le=1)
    max_ece: float = Field(0.25, ge=0, le=1)
    # relative: candidate not worse than the champion by more than epsilon, judged on the
    # lower end of a paired bootstrap interval of (candidate - champion) accuracy
    relative_epsilon: float = Field(0.02, ge=0, le=1)
    bootstrap_samples: int = Field(1000, ge=100)
    bootstrap_confidence: float = Field(0.95, gt=0.5, lt=1)
    min_english_accuracy: float = Field(0.70, ge=0, le=1)  # forgetting
    fairness_floor: float = Field(0.40, ge=0, le=1)  # every affected controlled language


class CanaryPolicy(Strict):
    steps: list[float] = Field(default_factory=lambda: [10.0, 50.0, 100.0])
    interval_s: float = Field(600.0, gt=0)
    min_feedback_events: int = Field(30, ge=1)
    alpha: float = Field(0.05, gt=0, lt=1)
    max_accuracy_drop: float = Field(0.05, ge=0, le=1)
    failure_limit: int = Field(0, ge=0, description="failed analyses tolerated before abort")
    inconclusive_limit: int = Field(3, ge=0, description="inconclusive analyses before pause")
    # which evidence may decide a canary or guard verdict (per track: [tracks] evidence):
    # labels: feedback labels (two-proportion test); estimate: accuracy estimated from the
    # models' calibrated confidences (CBPE); agreement: canary and champion re-scored on
    # the same requests. Label-free evidence is used only when labels are too few.
    evidence: list[Evidence] = Field(default_factory=lambda: list(ALL_EVIDENCE))
    min_estimate_events: int = Field(50, ge=1, description="events per arm for an estimate")
    # calibration error allowed for on top of sampling error (the estimate's own doubt)
    estimate_tolerance: float = Field(0.03, ge=0, le=1)
    # each request's P(correct) where its text is kept: "features", the sharper map of
    # controller.analysis.estimation_features (margin, entropy, agreement with the adapter's nearest
    # training rows) where the adapter has one, else the isotonic map; "confidence", the
    # isotonic map of the top-class confidence alone (as logged), always
    estimator: Literal["features", "confidence"] = "features"

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[float]) -> list[float]:
        if not steps:
            raise ValueError("at least one canary step is needed")
        if any(not 0 < s <= 100 for s in steps):
            raise ValueError("each step is a traffic percentage in (0, 100]")
        if steps != sorted(steps) or len(set(steps)) != len(steps):
            raise ValueError("steps must increase")
        return steps


Evidence = Literal["labels", "estimate", "agreement"]
ALL_EVIDENCE: tuple[Evidence, ...] = ("labels", "estimate", "agreement")


def _check_folds(folds: int) -> int:
    if folds == 1:
        raise ValueError("cross-fitting needs at least 2 folds (or 0 for dev only)")
    return folds


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
        return _check_folds(folds)


class WebhookPolicy(Strict):
    """One alert receiver: `format = "json"` posts the alert as a JSON object; "slack"
    posts Slack's incoming-webhook body ({"text": ...}), which Mattermost and others accept."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    url: str
    format: Literal["json", "slack"] = "json"
    timeout_s: float = Field(5.0, gt=0, le=120)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value


class AlertsPolicy(Strict):
    webhooks: list[WebhookPolicy] = Field(default_factory=list)
    interval_s: float = Field(5.0, gt=0, description="how often deliveries are attempted")
    retry_base_s: float = Field(1.0, gt=0, description="first retry delay; doubles, max 300 s")
    lease_s: float = Field(60.0, gt=0, description="a claimed delivery is resent after this")
    # alert events younger than this get rows for receivers they lack (added to the policy
    # later, or written by a process that did not know the receivers)
    catch_up_s: float = Field(3600.0, ge=0)
    mirror_stuck_after_s: float = Field(900.0, gt=0,
                                        description="outbox backlog older than this alerts")

    @model_validator(mode="after")
    def _unique_names(self) -> AlertsPolicy:
        names = [w.name for w in self.webhooks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"webhook name {dupes[0]!r} is used twice; names must be unique")
        return self

    @property
    def receivers(self) -> tuple[str, ...]:
        return tuple(w.name for w in self.webhooks)


class MetricsPolicy(Strict):
    # Prometheus exposition of `xlt controller run`; None: no metrics server
    port: int | None = Field(None, ge=0, le=65535)
    host: str = "127.0.0.1"


class ServePolicy(Strict):
    """`xlt serve`: who may call it, and how much one request may ask (docs/serving.md)."""

    require_auth: bool = True  # False: anyone who reaches the port predicts and labels
    tokens_file: str | None = None  # lines `TOKEN scope,scope`; also $XLT_SERVE_TOKENS
    max_texts_per_request: int = Field(256, ge=1, le=4096)
    max_text_chars: int = Field(2000, ge=1, le=100_000)
    max_feedback_per_request: int = Field(256, ge=1, le=10_000)
    reveal_arm: bool = False  # True: answers carry role, version and base
    # batching and capacity (docs/serving.md#settings; defaults measured on 2 cores)
    max_batch: int = Field(64, ge=1, le=4096)  # texts gathered from requests per batch
    max_wait_ms: float = Field(2.0, ge=0, le=1000)  # how long a batch waits for more
    bucket_rows: int = Field(32, ge=1, le=4096)  # rows per forward pass, length-sorted
    max_queue_rows: int = Field(2048, ge=1)  # texts waiting for a batch; more: 503
    traffic_queue_rows: int = Field(16384, ge=1)  # predictions waiting for the log; more: dropped
    traffic_write_rows: int = Field(1024, ge=1)  # predictions per traffic-log transaction
    # who writes the traffic log: a process of its own (off the server's GIL), or a thread
    traffic_writer: Literal["process", "thread"] = "process"
    torch_threads: int = Field(0, ge=0, le=256)  # intra-op threads per batch; 0: 1
    model_threads: int = Field(0, ge=0, le=64)  # batches run at once; 0: cores / workers
    workers: int = Field(1, ge=1, le=64)  # serving processes (`--workers`)


def base_ref(value: str) -> str:
    """A base encoder reference as a policy names it: NAME@VERSION (the registry's rule);
    a bad one is the field's error."""
    try:
        parse_encoder_ref(value)
    except InvalidInput as exc:
        detail = "" if "NAME@VERSION" in exc.message else f" of valid names ({exc.message})"
        raise ValueError(f"base {value!r} is not NAME@VERSION{detail}") from exc
    return value


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


class TrackPolicy(Strict):
    task: str
    language: str
    drift: DriftPolicy | None = None  # per-language thresholds
    fairness_floor: float | None = Field(None, ge=0, le=1)
    evidence: list[Evidence] | None = None  # which evidence may decide its canary/guard
    # [training] calibration_folds for this track alone: a language judged without labels
    # gets cross-fitted maps (within 3 points in 96-98% of windows against 90-92% from dev;
    # docs/limits.md) without every language paying for the folds
    calibration_folds: int | None = Field(None, ge=0)

    @field_validator("calibration_folds")
    @classmethod
    def _folds(cls, folds: int | None) -> int | None:
        return None if folds is None else _check_folds(folds)

    @field_validator("task")
    @classmethod
    def _task(cls, value: str) -> str:
        return _field_error(task_name, value)

    @field_validator("language")
    @classmethod
    def _language(cls, value: str) -> str:
        return _field_error(language_tag, value)


class Policy(Strict):
    tracks: list[TrackPolicy] = Field(default_factory=list)
    # base encoder for controlled languages that have no track yet (the controller then
    # trains their first champion); None: such languages wait for a registered adapter
    base: str | None = None
    check_interval_s: float = Field(3600.0, gt=0)
    tick_interval_s: float = Field(30.0, gt=0)
    outbox_interval_s: float = Field(10.0, gt=0)
    # a leader silent this long (hung with its session alive) loses the lock to a standby
    # (controller.runtime.leader); well above the 1 s heartbeat and a tick's longest step
    leader_lease_s: float = Field(120.0, ge=5)
    cooldown_s: float = Field(6 * 3600.0, ge=0)
    guard_window_s: float = Field(3600.0, ge=0)
    guard_max_accuracy_drop: float = Field(0.05, ge=0, le=1)
    executor: Literal["inline", "subprocess", "ray"] = "inline"
    # languages whose raw text must not be kept: only descriptors and embeddings are stored
    no_text_languages: list[str] = Field(default_factory=list)
    drift: DriftPolicy = Field(default_factory=DriftPolicy)
    drift_window_events: int = Field(5000, ge=10, description="newest events a check reads")
    gates: GatePolicy = Field(default_factory=GatePolicy)
    # per base encoder, the [gates] fields that differ for candidates trained on it: a
    # stronger base earns higher floors (`[base_gates."me5-small@1"] min_accuracy = 0.6`)
    base_gates: dict[str, GatePolicy] = Field(default_factory=dict)
    canary: CanaryPolicy = Field(default_factory=CanaryPolicy)
    training: TrainingPolicy = Field(default_factory=TrainingPolicy)
    alerts: AlertsPolicy = Field(default_factory=AlertsPolicy)
    metrics: MetricsPolicy = Field(default_factory=MetricsPolicy)
    upgrade: UpgradePolicy | None = None
    attempts: AttemptPolicy = Field(default_factory=AttemptPolicy)
    serve: ServePolicy = Field(default_factory=ServePolicy)

    @field_validator("no_text_languages")
    @classmethod
    def _languages(cls, values: list[str]) -> list[str]:
        return canonical_languages(values)

    @field_validator("base")
    @classmethod
    def _base(cls, value: str | None) -> str | None:
        return None if value is None else base_ref(value)

    @field_validator("base_gates", mode="before")
    @classmethod
    def _base_gates(cls, value: Any, info: ValidationInfo) -> Any:
        """Each base's table overrides [gates] field by field (gates is validated first)."""
        gates = info.data.get("gates")
        if not isinstance(value, dict) or gates is None:
            return value  # a wrong type, or [gates] itself failed: pydantic reports it
        out = {}
        for base, table in value.items():
            base_ref(base)
            out[base] = ({**gates.model_dump(), **table} if isinstance(table, dict)
                         else table)
        return out

    def for_base(self, base: str | None) -> Policy:
        """This policy with [gates] as a candidate trained on `base` must pass them."""
        gates = self.base_gates.get(base or "")
        return self if gates is None else self.model_copy(update={"gates": gates})

    def keeps_text(self, language: str) -> bool:
        return canonical_language(language) not in self.no_text_languages

    @model_validator(mode="after")
    def _unique_tracks(self) -> Policy:
        seen = set()
        for t in self.tracks:
            if (t.task, t.language) in seen:
                raise ValueError(f"track {t.task}/{t.language} is listed twice")
            seen.add((t.task, t.language))
        return self

    def upgrade_wanted(self, task: str, language: str) -> str | None:
        """The base the policy wants (task, language) on, if it asks for an upgrade."""
        up = self.upgrade
        if up is None or (up.languages and language not in up.languages):
            return None
        return up.base if any((t.task, t.language) == (task, language)
                              for t in self.tracks) else None

    def drift_for(self, task: str, language: str) -> DriftPolicy:
        for t in self.tracks:
            if (t.task, t.language) == (task, language) and t.drift is not None:
                return t.drift
        return self.drift

    def evidence_for(self, task: str, language: str) -> list[Evidence]:
        for t in self.tracks:
            if (t.task, t.language) == (task, language) and t.evidence is not None:
                return t.evidence
        return self.canary.evidence

    def calibration_folds_for(self, task: str, language: str) -> int:
        for t in self.tracks:
            if (t.task, t.language) == (task, language) and t.calibration_folds is not None:
                return t.calibration_folds
        return self.training.calibration_folds

    def fairness_floor_for(self, task: str, language: str) -> float:
        for t in self.tracks:
            if (t.task, t.language) == (task, language) and t.fairness_floor is not None:
                return t.fairness_floor
        return self.gates.fairness_floor


def _describe(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{source}: field {where}: {first['msg']}{more}"


MAX_POLICY_BYTES = 1_000_000  # a policy is a few kB; more is not a policy


def parse_policy(text: str, source: str = "policy") -> Policy:
    if len(text) > MAX_POLICY_BYTES:
        raise UnsafeInput(f"{source} is {len(text)} characters, more than the "
                          f"{MAX_POLICY_BYTES} a policy may have", "give the policy file")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{source} is not valid TOML: {exc}", "fix the syntax") from exc
    except RecursionError:  # tomllib recurses per nested inline array/table
        raise UnsafeInput(f"{source} nests too deep to be a policy",
                          "write tables, not deeply nested inline arrays") from None
    if depth_exceeds(data, MAX_DEPTH):
        raise UnsafeInput(f"{source} nests deeper than {MAX_DEPTH} levels",
                          "write tables, not deeply nested inline arrays")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(_describe(exc, source), "fix that field (see docs/policy.md)") from exc


def load_policy(path: str | Path | None) -> Policy:
    if path is None:
        return Policy()
    file = Path(path)
    if not file.is_file():
        raise InvalidInput(f"policy file {file} does not exist", "check the --policy path")
    return parse_policy(file.read_text(encoding="utf-8"), str(file))
