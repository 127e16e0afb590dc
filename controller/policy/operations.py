"""The operations tables: [alerts] (webhooks), [metrics] and [serve]."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from controller.policy.fields import Strict


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
