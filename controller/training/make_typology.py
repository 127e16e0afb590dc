"""Regenerate typology.json: URIEL distances (lang2vec) between the languages xlt knows.

    python -m controller.training.make_typology

lang2vec takes ~9 s to import and read its feature files, too slow for a routing or
training call, so the few distances we need are derived once and shipped as JSON.
Distances are cosine distances between URIEL vectors per feature set (the kNN-imputed
syntax/phonology/inventory sets, family membership, geography), as in lang2vec's own
distance tables; `combined` is their mean.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from controller.data.cldr import DEFAULT_LOCALES
from registry.languages import canonical_language

OUT = Path(__file__).resolve().parent / "typology.json"
FEATURE_SETS = ("syntax_knn", "phonology_knn", "inventory_knn", "fam", "geo")
# BCP-47 primary subtag -> the ISO 639-3 code URIEL has data for (individual languages
# stand in for macrolanguages: Swahili swa -> swh, Arabic ara -> arb, ...)
ISO3 = {"en": "eng", "de": "deu", "fr": "fra", "es": "spa", "ru": "rus", "tr": "tur",
        "id": "ind", "fil": "tgl", "vi": "vie", "ar": "arb", "zh": "cmn", "ja": "jpn",
        "sw": "swh", "yo": "yor", "ha": "hau", "ig": "ibo", "zu": "zul", "xh": "xho",
        "so": "som", "am": "amh", "hi": "hin", "sr": "srp", "pa": "pan"}


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0
    return float(1.0 - a @ b / (na * nb))


def build() -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import lang2vec.lang2vec as l2v

    languages = sorted({canonical_language(loc).split("-")[0] for loc in DEFAULT_LOCALES})
    codes = [ISO3[lang] for lang in languages]
    vectors = {fs: l2v.get_features(codes, fs) for fs in FEATURE_SETS}
    table: dict[str, dict[str, dict[str, float]]] = {}
    for a, ca in zip(languages, codes, strict=True):
        table[a] = {}
        for b, cb in zip(languages, codes, strict=True):
            d = {}
            for fs in FEATURE_SETS:
                va = np.array([np.nan if x == "--" else x for x in vectors[fs][ca]], float)
                vb = np.array([np.nan if x == "--" else x for x in vectors[fs][cb]], float)
                keep = ~(np.isnan(va) | np.isnan(vb))
                d[fs] = round(cosine_distance(va[keep], vb[keep]), 4)
            d["combined"] = round(float(np.mean([d[fs] for fs in FEATURE_SETS])), 4)
            table[a][b] = d
    return {"source": "URIEL via lang2vec", "feature_sets": list(FEATURE_SETS),
            "iso639_3": dict(zip(languages, codes, strict=True)), "distances": table}


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=None, sort_keys=True) + "\n")
    print(f"wrote {OUT}")
