"""Register proves loadability: an adapter file is checked against its base, from the
safetensors headers alone (JSON; no torch), for everything a load would fail on.

What a load needs (controller.training.artifact.load_adapter and
controller.serve.lora.MultiAdapterBase.load read the file's own `xlt` metadata, never the
registry row):

* `config.kind == "lora"`; `r` a positive integer, `alpha` and `dropout` numbers (the
  LoraConfig, and serving's alpha / r scaling); `target_modules` a non-empty list of names;
  `layers_to_transform` absent/None or block indices of the base.
* `head_shape == [hidden, labels]` with the base's hidden size, and the head tensors
  `head.weight [labels, hidden]`, `head.bias [labels]`; `num_labels` and `labels`, if
  recorded, agree with it (serving names a prediction by `labels[argmax]`).
* LoRA tensors `lora.base_model.model.<module>.lora_A.weight [r, in]` and `...lora_B.weight
  [out, r]` for exactly the base's linear layers that peft would wrap for those
  `target_modules` (and layers): none missing, none unexpected, each pair complete, the
  shapes those of the base's `<module>.weight [out, in]`.

The base's layers come from its stored weights' headers (the manifest's .safetensors
files). Each refusal is an ArtifactError (exit 2) naming the file and what is wrong.
"""

from __future__ import annotations

import re
from typing import Any

from registry.errors import ArtifactError
from registry.weights import WeightsHeader, read_header

LORA_PREFIX = "lora."
HEAD_PREFIX = "head."
PEFT_PREFIX = "base_model.model."
LORA_KEY = re.compile(r"(?P<module>.+)\.(?P<part>lora_A|lora_B)\.weight")
LAYER_INDEX = re.compile(r"(?:^|\.)layer\.(\d+)\.")  # peft's layers_pattern "layer"
HINT = ("save the adapter with controller.training.artifact.save_adapter against this "
        "base; it would fail to load as it is")


def _fail(name: str, what: str) -> ArtifactError:
    return ArtifactError(f"{name} cannot be loaded on its base: {what}", HINT)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def base_linear_layers(headers: list[WeightsHeader]) -> dict[str, list[int]]:
    """{module path as AutoModel names it: [out, in]} of every 2-D `.weight` of the base
    (embeddings excluded: peft gives them other keys), a checkpoint's model prefix
    (e.g. `bert.`) stripped."""
    weights = {k: shape for h in headers for k, (_, shape) in h.tensors.items()}
    firsts = {k.split(".", 1)[0] for k in weights}
    prefix = ""
    if len(firsts) == 1 and not firsts & {"embeddings", "encoder", "pooler"}:
        prefix = next(iter(firsts)) + "."
    out = {}
    for key, shape in weights.items():
        if not key.endswith(".weight") or len(shape) != 2 or "embeddings" in key:
            continue
        out[key[len(prefix):-len(".weight")]] = list(shape)
    return out


def base_headers(store: Any, manifest_sha: str) -> list[WeightsHeader]:
    """The headers of a stored base's weights files (read, not loaded)."""
    manifest = store.read_json(manifest_sha)
    return [read_header(store.blob_path(sha), name=rel)
            for rel, sha in sorted(manifest.get("files", {}).items())
            if rel.lower().endswith(".safetensors")]


def check_loadable(header: WeightsHeader, config: dict[str, Any], layers: dict[str, list[int]],
                   base_inputs: dict[str, Any], name: str) -> None:
    """Refuse (ArtifactError) an adapter that load would refuse or crash on."""
    if config.get("kind") != "lora":
        raise _fail(name, f"adapter kind {config.get('kind')!r} is not supported (only lora)")
    for key, ok, what in (("r", lambda v: _is_int(v) and v >= 1, "a positive integer"),
                          ("alpha", _is_number, "a number"),
                          ("dropout", lambda v: _is_number(v) and 0 <= v < 1,
                           "a number in [0, 1)"),
                          ("target_modules", lambda v: isinstance(v, list) and v and all(
                              isinstance(t, str) and t for t in v), "a list of layer names")):
        if key not in config:
            raise _fail(name, f"its config records no {key!r}")
        if not ok(config[key]):
            raise _fail(name, f"config {key} {config[key]!r} is not {what}")
    rank, targets = config["r"], config["target_modules"]
    blocks = base_inputs.get("num_hidden_layers")
    chosen = config.get("layers_to_transform")
    if chosen is not None and (not isinstance(chosen, list) or not chosen or not all(
            _is_int(i) and 0 <= i < (blocks if _is_int(blocks) else 1 << 30) for i in chosen)):
        raise _fail(name, f"layers_to_transform {chosen!r} are not block indices of a base "
                          f"with {blocks} layers")

    # the head
    head_shape = config.get("head_shape")
    if head_shape is None:
        raise _fail(name, "its config records no 'head_shape'")
    if (not isinstance(head_shape, list) or len(head_shape) != 2
            or not all(_is_int(d) and d >= 1 for d in head_shape)):
        raise _fail(name, f"head_shape {head_shape!r} is not [hidden, labels]")
    hidden, labels = head_shape
    base_hidden = base_inputs.get("hidden_size")
    if _is_int(base_hidden) and hidden != base_hidden:
        raise _fail(name, f"head_shape {head_shape} takes {hidden}-d embeddings, the base's "
                          f"hidden size is {base_hidden}")
    for key, shape in ((f"{HEAD_PREFIX}weight", [labels, hidden]),
                       (f"{HEAD_PREFIX}bias", [labels])):
        got = header.tensors.get(key)
        if got is None:
            raise _fail(name, f"tensor {key} is missing")
        if got[1] != shape:
            raise _fail(name, f"tensor {key} has shape {got[1]}, head_shape needs {shape}")
    if "num_labels" in config and config["num_labels"] != labels:
        raise _fail(name, f"num_labels {config['num_labels']!r} but the head has {labels}")
    names = config.get("labels")
    if names is not None and (not isinstance(names, list) or len(names) != labels
                              or not all(isinstance(x, str) for x in names)):
        raise _fail(name, f"labels {str(names)[:60]} are not {labels} label names")

    # the LoRA layers, against the base's
    found: dict[str, dict[str, list[int]]] = {}
    for key, (_, shape) in header.tensors.items():
        if not key.startswith(LORA_PREFIX):
            continue
        peft_key = key[len(LORA_PREFIX):]
        match = LORA_KEY.fullmatch(peft_key)
        if match is None or not match["module"].startswith(PEFT_PREFIX):
            raise _fail(name, f"tensor {key} is not a LoRA weight of a base layer (expected "
                              f"{LORA_PREFIX}{PEFT_PREFIX}<layer>.lora_A.weight)")
        module = match["module"][len(PEFT_PREFIX):]
        found.setdefault(module, {})[match["part"]] = shape
    expected = {m for m in layers
                if any(m == t or m.endswith("." + t) for t in targets)
                and (chosen is None or ((i := LAYER_INDEX.search(m)) is not None
                                        and int(i[1]) in chosen))}
    if not expected:
        raise _fail(name, f"target_modules {targets} match no linear layer of the base")
    unexpected = sorted(set(found) - expected)
    if unexpected:
        why = ("not a linear layer of the base" if unexpected[0] not in layers
               else f"not one of target_modules {targets}")
        raise _fail(name, f"LoRA tensors for {unexpected[0]}, {why}"
                          + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    missing = sorted(expected - set(found))
    if missing:
        raise _fail(name, f"no LoRA tensors for {missing[0]}"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                          + f", which target_modules {targets} select")
    for module in sorted(expected):
        out_f, in_f = layers[module]
        for part, shape in (("lora_A", [rank, in_f]), ("lora_B", [out_f, rank])):
            got = found[module].get(part)
            if got is None:
                raise _fail(name, f"{module} has no {part} tensor")
            if got != shape:
                raise _fail(name, f"{module}.{part} has shape {got}, the base layer "
                                  f"[{out_f}, {in_f}] at r={rank} needs {shape}")
