"""Real LoRA adapter files on the tiny BERT (random weights: quality is not under test), and
a registry holding them, for the serving and MLflow model tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tests.support.tiny import EMOJI_LABELS

# the demo task's labels: a registered emoji-group task checks an adapter's head against them
LABELS = list(EMOJI_LABELS)
TASK = "emoji-group"
# labelled texts for a lexical half (label indices into LABELS)
LEXICAL_TEXTS = [("paka mweusi", 2), ("mbwa mdogo", 2), ("ndizi tamu", 3), ("chai ya moto", 3),
                 ("gari la moshi", 4), ("ndege angani", 4), ("mpira wa miguu", 5),
                 ("uso wa tabasamu", 0)]


def randomize_lora(model: torch.nn.Module, seed: int, scale: float) -> None:
    """Random A and B in every LoRA matrix (peft zeroes B, which would make every adapter
    equal to its base); the benches' adapters use it too: speed does not depend on values."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * scale)


def make_lora_file(path: Path, base_dir: Path, fingerprint: str, seed: int, r: int = 4,
                   targets: tuple[str, ...] = ("query", "value"),
                   labels: list[str] | None = None, layers: list[int] | None = None,
                   lexical: bool = False) -> Path:
    """A peft LoRA on the tiny base with random A and B (B is zero after peft's init, which
    would make every adapter equal to the base) and a random head, saved as xlt saves one;
    `layers`: only those blocks get LoRA (as a deep base's recipe leaves the bottom ones);
    `lexical`: the head carries a lexical half fitted on LEXICAL_TEXTS."""
    from peft import LoraConfig, get_peft_model

    from controller.encoders.text import TextEncoder
    from controller.training.artifact import save_adapter
    from controller.training.head import LinearHead

    labels = labels or LABELS
    encoder = TextEncoder(base_dir, device="cpu")
    torch.manual_seed(seed)
    student = get_peft_model(encoder.model, LoraConfig(r=r, lora_alpha=2 * r,
                                                       target_modules=list(targets),
                                                       layers_to_transform=layers))
    randomize_lora(student, seed, 0.3)
    head = LinearHead(encoder.hidden_size, len(labels))
    with torch.no_grad():
        head.linear.weight.copy_(torch.randn_like(head.linear.weight) * 3)
    if lexical:
        from controller.training.lexical import fit_lexical

        head = head.with_lexical(fit_lexical([t for t, _ in LEXICAL_TEXTS],
                                             [y for _, y in LEXICAL_TEXTS], len(labels)))
    save_adapter(path, student, head, labels, fingerprint,
                 extra={"task": TASK, "seed": seed})
    return path


def register_lora(registry: Any, base_dir: Path, tmp: Path, language: str, seed: int,
                  base: str = "tiny@1", layers: list[int] | None = None,
                  lexical: bool = False, **kw: Any) -> Any:
    fingerprint = registry.query(_fingerprint, base)
    path = make_lora_file(tmp / f"lora-{language}-{seed}.safetensors", base_dir, fingerprint,
                          seed, layers=layers, lexical=lexical)
    return registry.register_adapter(task=TASK, language=language, base=base, weights=path,
                                     teacher_language="en",
                                     metrics={"accuracy": 0.5, "macro_f1": 0.4}, **kw)


def _fingerprint(s: Any, ref: str) -> str:
    from registry.commands.lookups import encoder_by_ref

    return encoder_by_ref(s, ref).fingerprint
