"""The `cldr-emoji` dataset: Unicode CLDR emoji annotations labelled with the emoji's group.

An item is one emoji's short name (`kind="name"`, CLDR's `type="tts"` annotation) or its
keyword list (`kind="keywords"`, kept as CLDR writes it, joined with " | ") in one language.
Its label is the emoji's Unicode group from emoji-test.txt. Because every locale annotates
the same emoji, parallel pairs (English text, language-L text) come free: join on
(emoji, kind).

Decisions (and why):

* **Groups.** "Component" (skin tones, hair) is dropped: these are modifiers, not emoji a
  user sends. "Flags" is dropped too: flag names are country and region names, a
  different task (named-entity translation) that the base's English vocabulary solves or
  fails for reasons unrelated to the emoji group; keeping it would also make one class
  dominated by proper nouns. That leaves the 8 classes of the `emoji-group` task.
* **Variant locales** (yo_BJ, hi_Latn, sr_Latn, pa_Arab) are sparse files that inherit
  missing values from their parent. We emit an item for a variant only where the variant
  file itself has the annotation: that is what makes the variant's text distinct from the
  parent's (another script or orthography), which is the drift we want to observe.
  Inherited values would duplicate the parent's rows under another tag.
* **Draft status.** Annotations marked `draft="unconfirmed"` or `"provisional"` are left
  out (not vetted by CLDR); `contributed` and approved ones are kept.
* **U+FE0F.** CLDR writes `cp` without the emoji presentation selector; emoji-test.txt has
  it. Both sides are normalised by removing U+FE0F before joining.
* **Splits** are by emoji, never by row: the emoji list is split 70/15/15 with a fixed seed,
  stratified by group, so an emoji is in the same split in every language and kind and no
  test emoji's English text is ever seen in training.
* **Determinism.** Rows are sorted and gzip is written with mtime=0 and no file name, so
  a rebuild from the same inputs gives byte-identical files (same sha256).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from registry.errors import ArtifactError, InvalidInput
from registry.languages import canonical_language, parent_languages

DATASET_NAME = "cldr-emoji"
CLDR_VERSION = "41"
DATASET_VERSION = "41.1"  # CLDR 41, build recipe revision 1
DEFAULT_SEED = 20220406
SPLITS = ("train", "dev", "test")
SPLIT_SHARES = (0.70, 0.15, 0.15)
KINDS = ("name", "keywords")
# the 8 classes of the emoji-group task, in emoji-test.txt order (fixed; a head's output
# index i is LABELS[i])
LABELS = ("Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink",
          "Travel & Places", "Activities", "Objects", "Symbols")
DROPPED_GROUPS = ("Component", "Flags")
DROPPED_DRAFT = ("unconfirmed", "provisional")

# CLDR locale file stems (underscore form), ~27 locales: high-resource teachers, African
# and South Asian targets, and the script/orthography variants that give real drift
DEFAULT_LOCALES = (
    "en", "de", "fr", "es", "ru", "tr", "id", "fil", "vi", "ar", "zh", "ja",
    "sw", "yo", "yo_BJ", "ha", "ig", "zu", "xh", "so", "am",
    "hi", "hi_Latn", "sr", "sr_Latn", "pa", "pa_Arab",
)
VARIANT_LOCALES = frozenset({"yo_BJ", "hi_Latn", "sr_Latn", "pa_Arab"})

SHIPPED_DIR = Path(__file__).resolve().parent / "cldr_emoji"
# a dataset built elsewhere (`python -m controller.data --out DIR --locales ...`), e.g. with
# more locales than the shipped 27; every reader (training, drift, traffic) takes it from here
DATA_ENV = "XLT_DATA_DIR"
DEBIAN_ANNOTATIONS = Path("/usr/share/unicode/cldr/common/annotations")
DEBIAN_EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
DEBIAN_COPYRIGHT = Path("/usr/share/doc/unicode-cldr-core/copyright")

FE0F = "\ufe0f"


def provenance() -> dict[str, str]:
    """Provenance recorded with every registered split of this dataset."""
    return {
        "source": "Unicode CLDR 41 (Debian unicode-cldr-core)",
        "licence": "Unicode-DFS-2016",
        "consent": "public data",
        "collected_at": "2022-04-06",  # CLDR 41 release date
    }


def normalise_emoji(cp: str) -> str:
    return cp.replace(FE0F, "")


def emoji_hex(emoji: str) -> str:
    return "-".join(f"{ord(c):X}" for c in emoji)


def read_emoji_groups(emoji_test: Path) -> dict[str, str]:
    """Normalised emoji -> group, for fully-qualified emoji, in file order (dict order)."""
    groups: dict[str, str] = {}
    group = ""
    for line in Path(emoji_test).read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
            continue
        if not line or line.startswith("#") or "; fully-qualified" not in line:
            continue
        codepoints = line.split(";", 1)[0].split()
        emoji = normalise_emoji("".join(chr(int(c, 16)) for c in codepoints))
        groups.setdefault(emoji, group)
    return groups


def read_annotations(path: Path) -> dict[tuple[str, str], str]:
    """(normalised emoji, kind) -> text from one CLDR annotations XML file."""
    out: dict[tuple[str, str], str] = {}
    root = ET.parse(path).getroot()
    for node in root.iter("annotation"):
        if node.get("draft") in DROPPED_DRAFT:
            continue
        text = " ".join((node.text or "").split())
        if not text or text == "↑↑↑":  # ↑↑↑ is CLDR's explicit "inherit" marker
            continue
        kind = "name" if node.get("type") == "tts" else "keywords"
        out[(normalise_emoji(node.get("cp", "")), kind)] = text
    return out


def check_shares(shares: Sequence[float]) -> tuple[float, float, float]:
    """(train, dev, test) shares of the emoji: three positive numbers summing to 1."""
    if len(shares) != 3 or any(not 0 < x < 1 for x in shares) or abs(sum(shares) - 1) > 1e-9:
        raise InvalidInput(f"split shares {list(shares)} are not three shares of the emoji",
                           "give train, dev and test shares, each in (0, 1), summing to 1")
    return (float(shares[0]), float(shares[1]), float(shares[2]))


def split_emoji(groups: dict[str, str], seed: int,
                shares: Sequence[float] = SPLIT_SHARES) -> dict[str, str]:
    """Emoji -> split, 70/15/15 (or `shares`) per group (stratified) with a fixed seed."""
    shares = check_shares(shares)
    by_group: dict[str, list[str]] = defaultdict(list)
    for emoji, group in groups.items():
        by_group[group].append(emoji)
    assignment: dict[str, str] = {}
    for group in sorted(by_group):
        members = sorted(by_group[group])
        random.Random(f"{seed}:{group}").shuffle(members)
        n_train = round(len(members) * shares[0])
        n_dev = round(len(members) * shares[1])
        for i, emoji in enumerate(members):
            assignment[emoji] = ("train" if i < n_train
                                 else "dev" if i < n_train + n_dev else "test")
    return assignment


def _gzip_jsonl(rows: Iterable[dict[str, Any]], path: Path) -> str:
    """Write rows as gzip JSONL deterministically (mtime=0, no name); return the sha256."""
    raw = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(raw.encode("utf-8"))
    data = buf.getvalue()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def build_rows(annotations_dir: Path, emoji_test: Path, locales: Sequence[str],
               seed: int, shares: Sequence[float] = SPLIT_SHARES) -> list[dict[str, Any]]:
    if not Path(emoji_test).is_file():
        raise ArtifactError(f"no emoji-test.txt at {emoji_test}", "install unicode-data")
    groups = {e: g for e, g in read_emoji_groups(emoji_test).items()
              if g not in DROPPED_GROUPS}
    unknown = sorted({g for g in groups.values()} - set(LABELS))
    if unknown:
        raise ArtifactError(f"emoji-test.txt has groups outside the task's labels: {unknown}",
                            "update LABELS (and the task) for this Unicode version")
    splits = split_emoji(groups, seed, shares)
    rows: list[dict[str, Any]] = []
    for locale in locales:
        path = Path(annotations_dir) / f"{locale}.xml"
        if not path.is_file():
            raise ArtifactError(f"no CLDR annotations for {locale} at {path}",
                                "install unicode-cldr-core or drop the locale")
        language = canonical_language(locale)
        for (emoji, kind), text in read_annotations(path).items():
            if emoji not in groups:
                continue  # not a fully-qualified emoji of a kept group (symbols, flags, ...)
            rows.append({"id": f"{language}:{emoji_hex(emoji)}:{kind}", "emoji": emoji,
                         "language": language, "kind": kind, "text": text,
                         "label": groups[emoji], "split": splits[emoji]})
    rows.sort(key=lambda r: r["id"])
    return rows


def build_cldr(annotations_dir: str | Path = DEBIAN_ANNOTATIONS,
               emoji_test: str | Path = DEBIAN_EMOJI_TEST,
               out_dir: str | Path = SHIPPED_DIR,
               locales: Sequence[str] = DEFAULT_LOCALES,
               seed: int = DEFAULT_SEED,
               licence_file: str | Path | None = DEBIAN_COPYRIGHT,
               built_at: str | None = None,
               shares: Sequence[float] = SPLIT_SHARES) -> dict[str, Any]:
    """Build the dataset into `out_dir` (one gzip JSONL per split + manifest.json);
    `shares`: of the emoji in train, dev and test (the shipped copy: 70/15/15)."""
    shares = check_shares(shares)
    # read every locale first: a missing one is refused before anything is written
    rows = build_rows(Path(annotations_dir), Path(emoji_test), locales, seed, shares)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    split_info: dict[str, Any] = {}
    for split in SPLITS:
        part = [r for r in rows if r["split"] == split]
        sha = _gzip_jsonl(part, out / f"{split}.jsonl.gz")
        split_info[split] = {"file": f"{split}.jsonl.gz", "sha256": sha, "rows": len(part),
                             "emoji": len({r["emoji"] for r in part})}
    per_language: dict[str, dict[str, int]] = defaultdict(dict)
    for (lang, split), n in sorted(Counter((r["language"], r["split"]) for r in rows).items()):
        per_language[lang][split] = n
    manifest = {
        "name": DATASET_NAME,
        "version": DATASET_VERSION,
        "cldr_version": CLDR_VERSION,
        "seed": seed,
        "split_shares": dict(zip(SPLITS, shares, strict=True)),
        "kinds": list(KINDS),
        "labels": list(LABELS),
        "dropped_groups": list(DROPPED_GROUPS),
        "locales": [canonical_language(loc) for loc in locales],
        "splits": split_info,
        "per_language": dict(per_language),
        "provenance": provenance(),
        "built_at": built_at or datetime.now(UTC).replace(microsecond=0).isoformat(),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False)
                                       + "\n", encoding="utf-8")
    if licence_file is not None and Path(licence_file).is_file():
        (out / "LICENSE-CLDR.txt").write_text(Path(licence_file).read_text(encoding="utf-8"),
                                              encoding="utf-8")
    return manifest


def dataset_dir() -> Path:
    """$XLT_DATA_DIR when set, else the shipped dataset."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else SHIPPED_DIR


def load_manifest(data_dir: str | Path | None = None) -> dict[str, Any]:
    path = Path(data_dir or dataset_dir()) / "manifest.json"
    if not path.is_file():
        raise ArtifactError(f"no dataset manifest at {path}",
                            f"build one with `python -m controller.data --out DIR` or unset "
                            f"{DATA_ENV}")
    return json.loads(path.read_text(encoding="utf-8"))


def split_path(split: str, data_dir: str | Path | None = None) -> Path:
    if split not in SPLITS:
        raise ArtifactError(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
    return Path(data_dir or dataset_dir()) / f"{split}.jsonl.gz"


def verify_sha256(path: Path, expected: str) -> bytes:
    """The file's bytes, if their sha256 is `expected` (else ArtifactError naming both)."""
    data = Path(path).read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ArtifactError(f"{path} has sha256 {actual}, expected {expected}",
                            "rebuild the dataset (python -m controller.data) or restore it")
    return data


def dataset_variants(language: str) -> list[str]:
    """Script or regional variants of `language` in the shipped data (hi -> [hi-Latn]):
    the traffic a track serves by fallback, and what a drift retrain adds."""
    return sorted(lang for lang in load_manifest()["per_language"]
                  if language in parent_languages(lang))


_SPLITS: dict[tuple[str, str], pd.DataFrame] = {}


def load_split(split: str, languages: Sequence[str] | None = None,
               data_dir: str | Path | None = None) -> pd.DataFrame:
    """One split as a DataFrame, after checking the file's sha256 against the manifest."""
    manifest = load_manifest(data_dir)
    sha = manifest["splits"][split]["sha256"]
    key = (str(split_path(split, data_dir)), sha)
    if key not in _SPLITS:  # parsed once per process (the file is checked each time)
        data = verify_sha256(split_path(split, data_dir), sha)
        _SPLITS[key] = pd.read_json(io.BytesIO(gzip.decompress(data)), lines=True,
                                    dtype=False)
    else:
        verify_sha256(split_path(split, data_dir), sha)
    df = _SPLITS[key].copy()
    if languages is not None:
        wanted = {canonical_language(lang) for lang in languages}
        df = df[df["language"].isin(wanted)].reset_index(drop=True)
    return df


def parallel_pairs(df: pd.DataFrame, source: str = "en", target: str = "sw") -> pd.DataFrame:
    """Rows present in both languages, joined on (emoji, kind): columns emoji, kind, label,
    text_source, text_target (plus id_source, id_target)."""
    src = df[df["language"] == canonical_language(source)]
    tgt = df[df["language"] == canonical_language(target)]
    cols = ["emoji", "kind", "label", "text", "id"]
    merged = src[cols].merge(tgt[["emoji", "kind", "text", "id"]], on=["emoji", "kind"],
                             suffixes=("_source", "_target"))
    return merged.sort_values(["emoji", "kind"]).reset_index(drop=True)


TASK_NAME = "emoji-group"
TASK_DESCRIPTION = "Unicode emoji group of a CLDR emoji name or keyword list"


def register_task(registry: Any, languages: Sequence[str] | None = None,
                  data_dir: str | Path | None = None) -> list[int]:
    """The `emoji-group` task and its CLDR splits, registered through the public path
    (Registry.create_task, Registry.register_task_dataset: validated, copied into the
    store): what `xlt task create` and `xlt dataset register` do for a team's own files.
    Idempotent; `languages` (default: every language of the data) limits what is added.
    Returns the ids of the datasets registered now."""
    import contextlib
    import tempfile

    from registry import queries
    from registry.commands.tasks import DatasetSpec
    from registry.errors import AlreadyExists, NotFound

    try:
        registry.query(queries.get_task, TASK_NAME)
    except NotFound:
        with contextlib.suppress(AlreadyExists):  # another process created it meanwhile
            registry.create_task(TASK_NAME, list(LABELS), TASK_DESCRIPTION)
    manifest = load_manifest(data_dir)
    version = f"cldr-{manifest['version']}"
    have = {(d["language"], d["split"]) for d in registry.query(queries.task_datasets,
                                                                 TASK_NAME, "labelled", False)
            if d["version"] == version}
    wanted = (set(manifest["per_language"]) if languages is None
              else {canonical_language(x) for x in languages})
    prov = provenance()
    created: list[int] = []
    for split in SPLITS:
        missing = {lang for lang in wanted - {lg for lg, s in have if s == split}
                   if manifest["per_language"].get(lang, {}).get(split)}
        if not missing:
            continue
        rows = load_split(split, sorted(missing), data_dir)
        if split == "test":
            # the split is by emoji, and two emoji can share a text (⛺ and 🏕 both "camping
            # | tent" somewhere): such a test row would be a held-out text seen in training,
            # which registration refuses; it is left out here (about 1% of test rows)
            train = load_split("train", sorted(missing), data_dir)
            seen = set(zip(train["language"], train["text"].str.strip(), strict=True))
            keep = [(lg, t.strip()) not in seen for lg, t in zip(rows["language"],
                                                                  rows["text"], strict=True)]
            rows = rows[keep]
        with tempfile.TemporaryDirectory(prefix="xlt-cldr-") as tmp:
            path = Path(tmp) / f"{split}.jsonl"
            with path.open("w", encoding="utf-8") as fh:
                for r in rows.itertuples(index=False):
                    # the item id without its language, so one emoji's rows pair up by id
                    item = str(r.id).split(":", 1)[1]
                    fh.write(json.dumps({"id": item, "text": r.text, "label": r.label,
                                         "language": r.language}, ensure_ascii=False) + "\n")
            spec = DatasetSpec(task=TASK_NAME, path=path, split=split,
                               language_column="language", version=version,
                               source=prov["source"], licence=prov["licence"],
                               consent=prov["consent"],
                               collected_at=datetime.fromisoformat(prov["collected_at"])
                               .replace(tzinfo=UTC))
            with contextlib.suppress(AlreadyExists):  # a concurrent caller was first
                created += [d.id for d in registry.register_task_dataset(spec)]
    return created
