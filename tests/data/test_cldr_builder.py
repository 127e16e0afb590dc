"""The CLDR emoji dataset builder, on a tiny CLDR-shaped fixture (no apt packages needed),
plus integrity checks of the dataset shipped in the repository."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from controller.data import cldr

FIXTURE = Path(__file__).resolve().parents[1] / "support" / "fixtures" / "cldr"
LOCALES = ("en", "sw", "yo", "yo_BJ", "sr_Latn")


def build(out: Path, seed: int = 7) -> dict:
    return cldr.build_cldr(FIXTURE / "annotations", FIXTURE / "emoji-test.txt", out,
                           locales=LOCALES, seed=seed, licence_file=None,
                           built_at="2022-04-06T00:00:00+00:00")


def test_builds_canonical_tags_and_drops_groups(tmp_path: Path) -> None:
    manifest = build(tmp_path)
    assert manifest["locales"] == ["en", "sw", "yo", "yo-BJ", "sr-Latn"]
    df = cldr.load_split("train", data_dir=tmp_path)
    all_rows = [cldr.load_split(s, data_dir=tmp_path) for s in cldr.SPLITS]
    langs = set().union(*(set(d["language"]) for d in all_rows))
    assert langs == {"en", "sw", "yo", "yo-BJ", "sr-Latn"}
    labels = set().union(*(set(d["label"]) for d in all_rows))
    assert labels <= set(cldr.LABELS)
    assert "Component" not in labels and "Flags" not in labels
    assert set(df["kind"]) <= {"name", "keywords"}
    # 18 emoji of kept groups x 2 kinds in English; the non-emoji overline is dropped
    assert sum((d["language"] == "en").sum() for d in all_rows) == 36
    assert manifest["labels"] == list(cldr.LABELS)


def test_fe0f_normalised_and_drafts_dropped(tmp_path: Path) -> None:
    build(tmp_path)
    rows = [cldr.load_split(s, data_dir=tmp_path) for s in cldr.SPLITS]
    en = [r for d in rows for r in d.to_dict("records") if r["language"] == "en"]
    assert any(r["emoji"] == "\u263a" and r["label"] == "Smileys & Emotion" for r in en)
    assert all("\ufe0f" not in r["emoji"] for r in en)
    yo = [r for d in rows for r in d.to_dict("records") if r["language"] == "yo"]
    assert not any(r["emoji"] == "\U0001F609" for r in yo)  # draft="unconfirmed" there


def test_variant_only_has_its_own_items(tmp_path: Path) -> None:
    manifest = build(tmp_path)
    counts = manifest["per_language"]
    assert sum(counts["sr-Latn"].values()) == 2  # only the one emoji its file annotates
    assert sum(counts["yo-BJ"].values()) < sum(counts["yo"].values())


def test_split_by_emoji_never_by_row(tmp_path: Path) -> None:
    build(tmp_path)
    seen: dict[str, str] = {}
    for split in cldr.SPLITS:
        for emoji in cldr.load_split(split, data_dir=tmp_path)["emoji"]:
            assert seen.setdefault(emoji, split) == split, emoji
    assert set(seen.values()) == set(cldr.SPLITS)


def test_rebuild_is_byte_identical_and_seed_matters(tmp_path: Path) -> None:
    a = build(tmp_path / "a")
    b = build(tmp_path / "b")
    assert {s: a["splits"][s]["sha256"] for s in cldr.SPLITS} == \
        {s: b["splits"][s]["sha256"] for s in cldr.SPLITS}
    c = build(tmp_path / "c", seed=8)
    assert a["splits"]["train"]["sha256"] != c["splits"]["train"]["sha256"]


def test_other_shares_move_emoji_and_bad_shares_are_refused(tmp_path: Path) -> None:
    from registry.errors import InvalidInput

    default = build(tmp_path / "a")
    wide = cldr.build_cldr(FIXTURE / "annotations", FIXTURE / "emoji-test.txt", tmp_path / "b",
                           locales=LOCALES, seed=7, licence_file=None,
                           built_at="2022-04-06T00:00:00+00:00", shares=(0.4, 0.15, 0.45))
    assert wide["split_shares"] == {"train": 0.4, "dev": 0.15, "test": 0.45}
    assert default["split_shares"] == {"train": 0.7, "dev": 0.15, "test": 0.15}
    assert wide["splits"]["test"]["emoji"] > default["splits"]["test"]["emoji"]
    assert sum(wide["splits"][s]["emoji"] for s in cldr.SPLITS) == \
        sum(default["splits"][s]["emoji"] for s in cldr.SPLITS)
    for bad in ((0.5, 0.5), (0.5, 0.5, 0.1), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1)):
        with pytest.raises(InvalidInput, match="shares"):
            cldr.build_cldr(FIXTURE / "annotations", FIXTURE / "emoji-test.txt",
                            tmp_path / "bad", locales=LOCALES, shares=bad)
    assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_tampered_split_is_refused(tmp_path: Path) -> None:
    from registry.errors import ArtifactError

    build(tmp_path)
    path = tmp_path / "dev.jsonl.gz"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match="sha256"):
        cldr.load_split("dev", data_dir=tmp_path)


def test_parallel_pairs_join_on_emoji_and_kind(tmp_path: Path) -> None:
    build(tmp_path)
    df = cldr.load_split("train", data_dir=tmp_path)
    pairs = cldr.parallel_pairs(df, "en", "sw")
    assert len(pairs) == (df["language"] == "sw").sum()
    for row in pairs.to_dict("records"):
        assert row["id_source"] == row["id_target"].replace("sw:", "en:", 1)


def test_shipped_dataset_matches_manifest() -> None:
    manifest = cldr.load_manifest()
    assert manifest["name"] == cldr.DATASET_NAME and manifest["cldr_version"] == "41"
    for split, info in manifest["splits"].items():
        data = (cldr.SHIPPED_DIR / info["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == info["sha256"], split
    assert (cldr.SHIPPED_DIR / "LICENSE-CLDR.txt").read_text().count("Unicode") > 2
    test = cldr.load_split("test", ["sw"])
    assert set(test["language"]) == {"sw"}
    assert len(test) == manifest["per_language"]["sw"]["test"]


@pytest.mark.skipif(not cldr.DEBIAN_ANNOTATIONS.is_dir(), reason="unicode-cldr-core absent")
def test_shipped_dataset_rebuilds_identically(tmp_path: Path) -> None:
    manifest = cldr.build_cldr(out_dir=tmp_path, built_at="x")
    shipped = cldr.load_manifest()
    for split in cldr.SPLITS:
        assert manifest["splits"][split]["sha256"] == shipped["splits"][split]["sha256"]


def test_data_dir_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """XLT_DATA_DIR points every reader at a dataset built elsewhere; a missing one is a
    clear error, not the shipped data in disguise."""
    build(tmp_path / "built")
    monkeypatch.setenv(cldr.DATA_ENV, str(tmp_path / "built"))
    assert set(cldr.load_manifest()["per_language"]) == {"en", "sw", "yo", "yo-BJ", "sr-Latn"}
    assert set(cldr.load_split("train")["language"]) <= {"en", "sw", "yo", "yo-BJ", "sr-Latn"}
    monkeypatch.setenv(cldr.DATA_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(cldr.ArtifactError, match="no dataset manifest"):
        cldr.load_manifest()
    monkeypatch.delenv(cldr.DATA_ENV)
    assert cldr.dataset_dir() == cldr.SHIPPED_DIR


def test_unknown_locale_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    from controller.data.__main__ import main

    out = tmp_path / "extra"
    with pytest.raises(cldr.ArtifactError, match="no CLDR annotations for zz"):
        cldr.build_cldr(FIXTURE / "annotations", FIXTURE / "emoji-test.txt", out,
                        locales=("en", "zz"), licence_file=None)
    assert not out.exists()
    # the command, against the Debian packages (absent here, or without zz): exit 2
    assert main(["--out", str(out), "--add", "zz"]) == 2
    assert not out.exists()
