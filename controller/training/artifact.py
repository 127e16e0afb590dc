"""An adapter on disk: ONE safetensors file (never pickle) holding the LoRA tensors (keys
prefixed `lora.`, peft state-dict names after the prefix) and the task head (`head.weight`,
`head.bias`, and a lexical half's `head.lexical.{ids,idf,weight,bias}` where the config
records `lexical: {format, ngrams}`), with JSON in the safetensors metadata under `xlt`:
`{"format", "base_fingerprint", "config": {kind, r, alpha, dropout, target_modules,
head_shape, num_labels, labels, peft_version, transformers_version}, ...extra}` (the
registry reads `base_fingerprint` and `config` from there at register time).

Loading rebuilds the peft model on a given base after checking that the base's fingerprint
is the one the adapter was trained on (the compatibility contract's check at load)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import (
    LoraConfig,
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from safetensors import safe_open
from safetensors.torch import save_file

from registry.errors import ArtifactError, IncompatibleAdapter
from registry.fingerprint import loaded_model_fingerprint
from registry.weights import LEXICAL_FORMAT, check_adapter_shapes, read_header, xlt_metadata

LORA_PREFIX = "lora."
HEAD_PREFIX = "head."
METADATA_KEY = "xlt"
FORMAT_VERSION = 1


@dataclass
class LoadedAdapter:
    model: PeftModel
    head: Any  # LinearHead (import kept local to avoid a cycle in type-only use)
    meta: dict[str, Any]


def adapter_metadata(student: PeftModel, head: Any, labels: list[str], base_fingerprint: str,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The adapter config recorded in the file (and in the registry)."""
    import peft
    import transformers

    cfg = student.peft_config["default"]
    config = {
        "kind": "lora",
        "r": int(cfg.r),
        "alpha": int(cfg.lora_alpha),
        "dropout": float(cfg.lora_dropout),
        "target_modules": sorted(cfg.target_modules),
        # None: every block; else the blocks that carry LoRA (frozen-prefix training)
        "layers_to_transform": (sorted(cfg.layers_to_transform)
                                if cfg.layers_to_transform is not None else None),
        "head_shape": list(head.shape),
        "num_labels": len(labels),
        "labels": list(labels),
        # the lexical half of a wide-and-deep head (controller.training.lexical), if any
        **({"lexical": {"format": LEXICAL_FORMAT, "ngrams": int(head.lexical.ids.size)}}
           if getattr(head, "lexical", None) is not None else {}),
        "peft_version": peft.__version__,
        "transformers_version": transformers.__version__,
    }
    return {"format": FORMAT_VERSION, "base_fingerprint": base_fingerprint, "config": config,
            **(extra or {})}


def save_adapter(path: str | Path, student: PeftModel, head: Any, labels: list[str],
                 base_fingerprint: str, extra: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """Write the adapter file; returns the metadata written."""
    if head.shape[1] != len(labels):
        raise ArtifactError(f"head has {head.shape[1]} outputs for {len(labels)} labels",
                            "train the head on the task's label list")
    meta = adapter_metadata(student, head, labels, base_fingerprint, extra)
    tensors = {LORA_PREFIX + k: v.detach().cpu().contiguous()
               for k, v in get_peft_model_state_dict(student).items()}
    tensors.update({HEAD_PREFIX + k: v for k, v in head.tensors().items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
    return meta


def read_adapter(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor],
                                            dict[str, torch.Tensor]]:
    """(metadata, LoRA tensors by peft key, head tensors) without building a model."""
    # no suffix check: registry blobs are named by their sha256. The layout is validated
    # by content first (registry.weights), and any error of the safetensors library itself
    # (its SafetensorError is no OSError/ValueError) becomes the same domain refusal
    path = Path(path)
    header = read_header(path)
    meta = xlt_metadata(header, path.name)
    if not meta:
        raise ArtifactError(f"{path} has no {METADATA_KEY} metadata",
                            "write adapters with controller.training.artifact.save_adapter")
    check_adapter_shapes(header, meta.get("config", {}), path.name)
    try:
        with safe_open(str(path), framework="pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (not a dict)
    except Exception as exc:
        raise ArtifactError(f"cannot read adapter {path}: {exc}",
                            "the file is not a valid safetensors file") from exc
    lora = {k[len(LORA_PREFIX):]: v for k, v in tensors.items() if k.startswith(LORA_PREFIX)}
    head = {k[len(HEAD_PREFIX):]: v for k, v in tensors.items() if k.startswith(HEAD_PREFIX)}
    return meta, lora, head


def head_from_tensors(tensors: dict[str, torch.Tensor], name: str) -> Any:
    """The task head (LinearHead, with its lexical half if stored) from an adapter's head
    tensors; a head that cannot be built is the file's fault (ArtifactError)."""
    from controller.training.head import LinearHead

    try:
        return LinearHead.from_tensors(tensors)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"adapter {name} has no usable head ({exc})",
                            "the file is corrupt") from exc


def check_base(meta: dict[str, Any], base_model: Any, tokenizer: Any) -> str:
    """Refuse a base whose fingerprint differs from the adapter's; returns the fingerprint."""
    actual = loaded_model_fingerprint(base_model, tokenizer)
    expected = meta.get("base_fingerprint")
    if actual != expected:
        raise IncompatibleAdapter(
            f"adapter was trained on base fingerprint {expected}, "
            f"the loaded base has fingerprint {actual}",
            "load the base encoder version the adapter was trained on, or retrain the adapter")
    return actual


def load_adapter(path: str | Path, base_model: Any, tokenizer: Any,
                 copy_base: bool = True) -> LoadedAdapter:
    """Rebuild student (base + LoRA) and head from one file, after the fingerprint check.
    With copy_base=False the LoRA layers are injected into `base_model` itself."""
    meta, lora, head_tensors = read_adapter(path)
    cfg = meta.get("config", {})
    if cfg.get("kind") != "lora":
        raise ArtifactError(f"adapter kind {cfg.get('kind')!r} is not supported",
                            "only LoRA adapters are")
    check_base(meta, base_model, tokenizer)
    try:
        config = LoraConfig(r=cfg["r"], lora_alpha=cfg["alpha"], lora_dropout=cfg["dropout"],
                            target_modules=list(cfg["target_modules"]), bias="none",
                            layers_to_transform=cfg.get("layers_to_transform"),
                            layers_pattern="layer" if cfg.get("layers_to_transform") else None)
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"adapter {Path(path).name} has an incomplete LoRA config "
                            f"({type(exc).__name__}: {exc})", "re-save the adapter") from exc
    base = copy.deepcopy(base_model) if copy_base else base_model
    student = get_peft_model(base, config)
    try:
        result = set_peft_model_state_dict(student, lora)
    except RuntimeError as exc:  # torch's size mismatch when copying into the layers
        raise ArtifactError(f"adapter tensors do not fit the base: {str(exc)[:300]}",
                            "the file is corrupt or was trained on another base") from exc
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    expected_keys = set(get_peft_model_state_dict(student))
    missing = sorted(expected_keys - set(lora))
    if unexpected or missing:
        raise ArtifactError(f"adapter tensors do not match its config (unexpected "
                            f"{unexpected[:3]}, missing {missing[:3]})",
                            "the file is corrupt or was written by another tool")
    head = head_from_tensors(head_tensors, Path(path).name)
    if list(head.shape) != list(cfg["head_shape"]):
        raise ArtifactError(f"head tensors have shape {list(head.shape)}, the metadata says "
                            f"{cfg['head_shape']}", "the file is corrupt")
    return LoadedAdapter(model=student.eval(), head=head, meta=meta)
