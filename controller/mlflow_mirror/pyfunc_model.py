"""The MLflow pyfunc of xlt, logged as *model code* (mlflow "models from code"): MLflow copies
this file into the model and runs it at load, so nothing is pickled.

Two kinds, chosen by the model config:
- `encoder`: a base encoder (its transformers directory is the model's artifact);
  predict(DataFrame[text]) -> (n, hidden) sentence embeddings.
- `adapter`: one adapter version (the xlt safetensors file: LoRA + head + config) and a
  *reference* to its base encoder's MLflow model (`base_model_uri`), downloaded at load, so
  each base is stored once. predict(DataFrame[text]) -> DataFrame of label, confidence
  and one `p_<label>` column per class, computed by the same code as `xlt serve`
  (controller.serve.lora), so both give the same answers.

Loading checks the base's fingerprint against the one the adapter was trained on.
Requires the xlt package (and torch, transformers, peft) in the serving environment.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


def _texts(model_input: Any) -> list[str]:
    if isinstance(model_input, pd.DataFrame):
        column = "text" if "text" in model_input.columns else model_input.columns[0]
        return [str(t) for t in model_input[column].tolist()]
    if isinstance(model_input, dict) and "text" in model_input:
        return [str(t) for t in model_input["text"]]
    return [str(t) for t in list(model_input)]


class XltModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from controller.encoders.text import TextEncoder
        from controller.serve.lora import MultiAdapterBase
        from registry.errors import IncompatibleAdapter

        config = dict(context.model_config or {})
        self.kind = config.get("kind", "adapter")
        max_length = int(config.get("max_length", 48))
        if self.kind == "encoder":
            self.encoder_dir = context.artifacts["encoder"]
            self.encoder = TextEncoder(self.encoder_dir, device="cpu", max_length=max_length)
            return
        base = mlflow.pyfunc.load_model(config["base_model_uri"]).unwrap_python_model()
        self.multi = MultiAdapterBase(config.get("base", "base"), base.encoder)
        if config.get("base_fingerprint") and \
                config["base_fingerprint"] != self.multi.fingerprint:
            raise IncompatibleAdapter(
                f"{config['base_model_uri']} has fingerprint {self.multi.fingerprint}, the "
                f"adapter needs {config['base_fingerprint']}", "log the right base encoder")
        self.entry = self.multi.load("adapter", context.artifacts["adapter"])

    # pd.DataFrame is a hint MLflow infers no schema from (the signature is logged
    # explicitly); without any hint MLflow 3 warns "Add type hints" on every log_model,
    # inside its own catch_warnings, so no filter of ours could hide it
    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> Any:
        texts = _texts(model_input)
        if self.kind == "encoder":
            return self.encoder.embed(texts)
        if not texts:
            return pd.DataFrame(columns=["label", "confidence",
                                         *[f"p_{x}" for x in self.entry.labels]])
        labels, probs, _, _ = self.multi.classify(texts, ["adapter"] * len(texts))
        frame = pd.DataFrame({"label": labels, "confidence": probs.max(1).astype(float)})
        for j, name in enumerate(self.entry.labels):
            frame[f"p_{name}"] = probs[:, j].astype(float)
        return frame


mlflow.models.set_model(XltModel())
