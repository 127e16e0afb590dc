"""Names, tags and links the mirror writes to MLflow, in one place so that the consumer, the
reconciler and the run loggers agree on them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ALIASES = ("champion", "canary", "previous")
# registry track field behind each alias
ALIAS_FIELDS = {"champion": "champion_id", "canary": "canary_id",
                "previous": "previous_champion_id"}

# the tag that maps an MLflow model version back to the registry version; MLflow numbers its
# versions itself, so after a failed or duplicated create the two numberings drift apart
VERSION_TAG = "xlt_version"
# on a registered model of a track: the newest outbox event applied, so that replaying an
# older row (at-least-once delivery) never moves an alias backwards
WATERMARK_TAG = "xlt_event_id"

MAX_TAG_VALUE = 5000  # under MLflow's 8000 for run tags; model tags allow more
_BAD_NAME_CHARS = re.compile(r"[/:]")  # MLflow refuses '/' and ':' in model names
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")  # what MLflow accepts in tag/param keys


def _safe(part: str) -> str:
    return _BAD_NAME_CHARS.sub("_", part)


def safe_key(key: str) -> str:
    return _BAD_KEY_CHARS.sub("_", key)[:250]


def track_model_name(task: str, language: str) -> str:
    return f"xlt.{_safe(task)}.{_safe(language)}"


def encoder_model_name(name: str) -> str:
    return f"xlt.encoder.{_safe(name)}"


def experiment_name(task: str, language: str) -> str:
    return f"xlt/{task}/{language}"


def encoder_experiment_name() -> str:
    return "xlt/encoders"


# MLflow 3 opens an experiment without this tag as a GenAI traces page; xlt's experiments
# hold classic training runs and models (values from the UI: mlflow/server/js ExperimentKind)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def tag_value(value: Any) -> str:
    """Tags are strings: JSON for structures, '' for None, cut to a size every store takes."""
    if value is None:
        text = ""
    elif isinstance(value, str):
        text = value
    elif isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= MAX_TAG_VALUE else text[: MAX_TAG_VALUE - 3] + "..."


def is_remote_uri(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://", "databricks"))


def artifact_source(tracking_uri: str, blob_path: Path, sha256: str) -> str:
    """The model version's source: the content-addressed blob.

    An in-process store takes a file:// link as is. An MLflow server refuses local paths
    unless they lie inside a run's artifact directory, so there the source names the content
    address (xlt://sha256/<sha>) and the file:// link is kept in the `artifact_uri` tag.
    """
    if is_remote_uri(tracking_uri):
        return f"xlt://sha256/{sha256}"
    return blob_path.resolve().as_uri()


def local_artifact_root(tracking_uri: str) -> Path | None:
    """Where runs of an embedded (sqlite:///PATH) store keep artifacts: PATH's folder /
    mlartifacts, i.e. XLT_HOME/mlartifacts by default. None for servers (they decide)."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts"
    if tracking_uri.startswith("file:"):
        return Path(tracking_uri.removeprefix("file://").removeprefix("file:")) / "mlartifacts"
    if "://" not in tracking_uri:  # a bare folder is MLflow's file store
        return Path(tracking_uri).resolve() / "mlartifacts"
    return None
