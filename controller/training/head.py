"""The task head: a linear classifier over the frozen teacher's pooled embeddings.

It is trained once on the source (English) labels and shipped inside every adapter of the
task; students are trained to map language-L text to where the teacher puts the English
text, so the same head reads their embeddings. Linear (multinomial logistic regression)
because the embeddings are unit-norm sentence vectors that are close to linearly separable
for the emoji groups, and a linear head keeps ECE low and the artifact tiny.

A head may also carry a lexical half (controller.training.lexical: TF-IDF n-grams of the
text read by a second linear model, fitted on the language's own labels); its logits are
added to the linear head's, so whatever scores a request passes its text too (`logits`).
The student is distilled against the linear head alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:
    from controller.training.lexical import LexicalHead

LEXICAL_PREFIX = "lexical."


class LinearHead(torch.nn.Module):
    def __init__(self, hidden_size: int, num_labels: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, num_labels)
        self.lexical: LexicalHead | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.linear.in_features, self.linear.out_features)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The linear half's logits (what distillation trains against)."""
        return self.linear(embeddings)

    def logits(self, embeddings: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """The served logits of the requests `texts`, whose student embeddings are
        `embeddings`: the linear half's, plus the lexical half's where there is one."""
        out = self.linear(embeddings)
        if self.lexical is not None:
            if len(texts) != out.shape[0]:
                raise ValueError(f"{len(texts)} texts for {out.shape[0]} embeddings")
            out = out + torch.as_tensor(self.lexical.logits(texts), device=out.device)
        return out

    def with_lexical(self, lexical: LexicalHead | None) -> LinearHead:
        """A copy of the linear half, with `lexical` (None: without one)."""
        head = LinearHead.from_tensors(self.linear_tensors())
        if lexical is not None and lexical.num_labels != head.shape[1]:
            raise ValueError(f"lexical head has {lexical.num_labels} labels, the linear head "
                             f"{head.shape[1]}")
        head.lexical = lexical
        return head.to(self.linear.weight.device)

    def linear_tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.linear.weight.detach().cpu().contiguous(),
                "bias": self.linear.bias.detach().cpu().contiguous()}

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat tensors as stored in artifacts: `weight`, `bias`, and the lexical half's
        under `lexical.`."""
        out = self.linear_tensors()
        if self.lexical is not None:
            out.update({LEXICAL_PREFIX + k: v for k, v in self.lexical.tensors().items()})
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> LinearHead:
        num_labels, hidden = tensors["weight"].shape
        head = cls(int(hidden), int(num_labels))
        head.linear.load_state_dict({"weight": tensors["weight"], "bias": tensors["bias"]})
        lexical = {k[len(LEXICAL_PREFIX):]: v for k, v in tensors.items()
                   if k.startswith(LEXICAL_PREFIX)}
        if lexical:
            from controller.training.lexical import LexicalHead

            head = head.with_lexical(LexicalHead.from_tensors(lexical))
        return head.eval()

    @torch.inference_mode()
    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """Probabilities of the linear half (heads on embeddings alone, as benches fit)."""
        device = self.linear.weight.device
        logits = self(torch.as_tensor(embeddings, dtype=torch.float32, device=device))
        return torch.softmax(logits, dim=-1).float().cpu().numpy()


def train_head(embeddings: np.ndarray, labels: Sequence[int], num_labels: int,
               steps: int = 300, lr: float = 1e-2, weight_decay: float = 1e-4,
               seed: int = 0) -> LinearHead:
    """Full-batch Adam on cross-entropy: a few hundred steps on ~2k rows take < 1 s on CPU,
    and full-batch makes the result independent of data order (deterministic given seed)."""
    torch.manual_seed(seed)
    x = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    head = LinearHead(x.shape[1], num_labels)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x), y)
        loss.backward()
        opt.step()
    return head.eval().requires_grad_(False)


def save_head(head: LinearHead, path: str | Path) -> None:
    save_file(head.tensors(), str(path), metadata={"kind": "linear-head"})


def load_head(path: str | Path) -> LinearHead:
    return LinearHead.from_tensors(load_file(str(path)))
