"""Every registry version as an MLflow model.

- A base encoder is logged once, in its own run of the experiment `xlt/encoders`, as an
  xlt pyfunc holding the transformers directory.
- An adapter version is logged in its *training run* (found by tags, or created by the mirror
  when none was recorded, e.g. for `xlt adapter register`) as an xlt pyfunc holding the
  adapter file and referencing its base's model; with signature and input example.

The logged model's URI (models:/m-...) becomes the model version's source and the run its
run_id, so `models:/xlt.<task>.<lang>@champion` loads from MLflow alone. Each step is found
before it is made (run tag `xlt.model_uri`), so a retried outbox row logs nothing twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.mlflow_mirror.connection import global_uri
from controller.mlflow_mirror.experiments import ensure_experiment, find_run
from controller.mlflow_mirror.naming import (
    VERSION_TAG,
    encoder_experiment_name,
    experiment_name,
    tag_value,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from registry.service import Registry

log = logging.getLogger(__name__)
MODEL_URI_TAG = "xlt.model_uri"
CODE = str(Path(__file__).with_name("pyfunc_model.py"))
EXAMPLE = ["grinning face with big eyes", "cat face", "grapes"]


def requirements() -> list[str]:
    import peft
    import safetensors
    import torch
    import transformers

    return [f"torch=={torch.__version__.split('+')[0]}",
            f"transformers=={transformers.__version__}", f"peft=={peft.__version__}",
            f"safetensors=={safetensors.__version__}", "pandas", "xlt"]


@contextlib.contextmanager
def logging_into(tracking_uri: str, run_id: str) -> Iterator[None]:
    """The fluent API (which log_model needs) pointed at one store and run, then put back."""
    import mlflow

    # the mirror runs inside CLIs whose stdout may be JSON: no progress bars from MLflow
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with global_uri(tracking_uri), \
            mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        yield


def adapter_signature(labels: list[str]) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    outputs = [ColSpec("string", "label"), ColSpec("double", "confidence")]
    outputs += [ColSpec("double", f"p_{x}") for x in labels]
    return ModelSignature(inputs=Schema([ColSpec("string", "text")]), outputs=Schema(outputs))


def encoder_signature(hidden: int) -> Any:
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    return ModelSignature(inputs=Schema([ColSpec("string", "text")]),
                          outputs=Schema([TensorSpec(np.dtype("float32"), (-1, hidden))]))


def encoder_model(client: MlflowClient, tracking_uri: str, registry: Registry,
                  encoder: dict[str, Any]) -> tuple[str, str]:
    """(run id, model URI) of a base encoder's MLflow model, logged once."""
    import mlflow
    import pandas as pd

    exp = ensure_experiment(client, tracking_uri, encoder_experiment_name(),
                            "Base encoders shared by every language's adapters: one run and "
                            "one MLflow model per registered base version.")
    tags = {"xlt.kind": "encoder", "base": encoder["ref"]}
    run = find_run(client, exp, tags)
    if run is not None and run.data.tags.get(MODEL_URI_TAG):
        return run.info.run_id, run.data.tags[MODEL_URI_TAG]
    run_id = run.info.run_id if run is not None else client.create_run(
        exp, run_name=f"base {encoder['ref']}",
        tags={**tags, "fingerprint": encoder["fingerprint"]}).info.run_id
    _, model_dir = registry.encoder_dir(encoder["ref"])
    hidden = int((encoder.get("fingerprint_inputs") or {}).get("hidden_size") or 0)
    with tempfile.TemporaryDirectory(prefix="xlt-encoder-") as tmp, \
            logging_into(tracking_uri, run_id):
        # the registry's tree is symlinks to verified blobs; MLflow gets the files
        local = shutil.copytree(model_dir, Path(tmp) / "encoder")
        info = mlflow.pyfunc.log_model(
            name="model", python_model=CODE, artifacts={"encoder": str(local)},
            model_config={"kind": "encoder", "base": encoder["ref"]},
            signature=encoder_signature(hidden) if hidden else None,
            input_example=pd.DataFrame({"text": EXAMPLE}), pip_requirements=requirements())
        mlflow.set_tag(MODEL_URI_TAG, info.model_uri)
    return run_id, info.model_uri


def training_run(client: MlflowClient, tracking_uri: str, a: dict[str, Any]) -> str:
    """The run that trained adapter `a` (the newest training run tagged with its version
    and sha256), created by the mirror if training recorded none."""
    exp = ensure_experiment(client, tracking_uri, experiment_name(a["task"], a["language"]))
    tags = {"xlt.kind": "training", VERSION_TAG: str(a["version"]),
            "artifact_sha256": a["artifact_sha256"]}
    run = find_run(client, exp, tags)
    if run is not None:
        return str(run.info.run_id)
    created = client.create_run(exp, run_name=f"train {a['task']}/{a['language']} "
                                f"v{a['version']}", tags={
        **tags, "task": a["task"], "language": a["language"], "base": tag_value(a["base"]),
        "mlflow.note.content": "Registered without a recorded training run; the mirror "
        "logged the adapter's model here."})
    client.set_terminated(created.info.run_id, "FINISHED")
    return str(created.info.run_id)


def adapter_model(client: MlflowClient, tracking_uri: str, registry: Registry,
                  a: dict[str, Any], encoder: dict[str, Any]) -> tuple[str, str]:
    """(training run id, model URI) of adapter `a`'s MLflow model, logged once."""
    import mlflow
    import pandas as pd

    from controller.training.artifact import read_adapter

    run_id = training_run(client, tracking_uri, a)
    run = client.get_run(run_id)
    if run.data.tags.get(MODEL_URI_TAG):
        return run_id, run.data.tags[MODEL_URI_TAG]
    _, base_uri = encoder_model(client, tracking_uri, registry, encoder)
    _, path = registry.adapter_weights(a["task"], a["language"], a["version"])  # sha256
    labels = list(read_adapter(path)[0].get("config", {}).get("labels") or [])
    with tempfile.TemporaryDirectory(prefix="xlt-adapter-") as tmp, \
            logging_into(tracking_uri, run_id):
        local = shutil.copyfile(path, Path(tmp) / "adapter.safetensors")  # blobs lack a name
        info = mlflow.pyfunc.log_model(
            name="model", python_model=CODE, artifacts={"adapter": str(local)},
            model_config={"kind": "adapter", "base": a["base"], "base_model_uri": base_uri,
                          "base_fingerprint": a["base_fingerprint"], "task": a["task"],
                          "language": a["language"], "version": a["version"]},
            signature=adapter_signature(labels) if labels else None,
            input_example=pd.DataFrame({"text": EXAMPLE}), pip_requirements=requirements())
        mlflow.set_tag(MODEL_URI_TAG, info.model_uri)
    return run_id, info.model_uri
