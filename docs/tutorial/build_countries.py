#!/usr/bin/env python3
"""Build a small parallel, multilingual text-classification set from installed packages.

Texts : ISO 3166-1 country names and official names, translated into many
        languages by the Debian iso-codes project, as bundled in PyPI `pycountry`
        (LGPL-2.1; the data is not from CLDR).
Labels: continent of the country, from PyPI `pycountry-convert` (MIT; a mapping
        taken from Wikipedia).  Antarctica (5 territories) is dropped -> 6 labels.
Ids   : "<alpha_2>:name" / "<alpha_2>:official", the same across languages.
        A row is written for a non-English language only where the iso-codes .mo
        catalog has an entry for that string (it may equal the English, e.g. "Kenya").
Split : by country (both ids of a country go to the same split), 70/15/15,
        stratified by label, with a fixed seed -> identical across languages.

Usage: python build.py [--out DIR] [--langs en,fr,sw,...] [--seed 13]
Install: pip install pycountry==26.2.16 && pip install --no-deps pycountry-convert==0.7.2
"""
import argparse
import gettext
import importlib.util
import json
import os
import random
from collections import Counter, defaultdict

import pycountry

DEFAULT_LANGS = "en,fr,de,es,sw,yo,ha,am,zu,so,ti,rw,wo"
LABELS = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America",
          "OC": "Oceania", "SA": "South America"}


def continent_map():
    """Load pycountry_convert's alpha-2 -> continent table without running its
    package __init__ (which imports test-only dependencies such as pprintpp)."""
    spec = importlib.util.find_spec("pycountry_convert")
    if spec is None:
        raise SystemExit("pip install --no-deps pycountry-convert==0.7.2")
    path = os.path.join(os.path.dirname(spec.origin),
                        "convert_country_alpha2_to_continent_code.py")
    mod_spec = importlib.util.spec_from_file_location("_continents", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.COUNTRY_ALPHA2_TO_CONTINENT_CODE


def english_items():
    """id -> (english text, country code, label)"""
    cont = continent_map()
    items = {}
    for c in pycountry.countries:
        code = cont.get(c.alpha_2)
        if code not in LABELS:          # Antarctica or unmapped
            continue
        items[f"{c.alpha_2}:name"] = (c.name, c.alpha_2, LABELS[code])
        official = getattr(c, "official_name", None)
        if official and official != c.name:
            items[f"{c.alpha_2}:official"] = (official, c.alpha_2, LABELS[code])
    return items


def translator(lang):
    if lang == "en":
        return lambda s: s
    try:
        t = gettext.translation("iso3166-1", pycountry.LOCALES_DIR, languages=[lang])
    except FileNotFoundError:
        raise SystemExit(f"no iso3166-1 translation for {lang!r} in pycountry") from None
    catalog = t._catalog                # msgid -> msgstr; membership = really translated
    return lambda s: catalog.get(s)


def split_countries(items, seed):
    """Stratified 70/15/15 split of countries (groups), deterministic."""
    by_label = defaultdict(set)
    for _, code, label in items.values():
        by_label[label].add(code)
    rng = random.Random(seed)
    split_of = {}
    for label in sorted(by_label):
        codes = sorted(by_label[label])
        rng.shuffle(codes)
        n = len(codes)
        n_test = max(1, round(0.15 * n))
        n_dev = max(1, round(0.15 * n))
        for i, code in enumerate(codes):
            split_of[code] = ("test" if i < n_test else
                              "dev" if i < n_test + n_dev else "train")
    return split_of


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="data/region")
    ap.add_argument("--langs", default=DEFAULT_LANGS)
    ap.add_argument("--seed", type=int, default=13)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    items = english_items()
    split_of = split_countries(items, args.seed)
    print(f"pycountry {pycountry.__version__ if hasattr(pycountry, '__version__') else ''}"
          f" items={len(items)} countries={len(split_of)} labels={sorted(LABELS.values())}")
    print(f"{'lang':<5} {'train':>6} {'dev':>5} {'test':>5} {'total':>6}")
    for lang in args.langs.split(","):
        tr = translator(lang)
        rows = defaultdict(list)
        for iid in sorted(items):
            en, code, label = items[iid]
            text = (tr(en) or "").strip()
            if not text:
                continue                 # no translation in iso-codes: skip the row
            rows[split_of[code]].append({"id": iid, "text": text, "label": label})
        for split in ("train", "dev", "test"):
            with open(os.path.join(args.out, f"{lang}.{split}.jsonl"), "w", encoding="utf-8") as f:
                for r in rows[split]:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
        n = {s: len(rows[s]) for s in ("train", "dev", "test")}
        print(f"{lang:<5} {n['train']:>6} {n['dev']:>5} {n['test']:>5} {sum(n.values()):>6}")
    lab = Counter(label for _, _, label in items.values())
    print("en label counts:", dict(sorted(lab.items())))


if __name__ == "__main__":
    main()
