"""`xlt report languages`: one picture (PNG + HTML) of the controlled languages on a base,
relative to English, from the command line; bad input refused cleanly. Tiny random BERT:
the picture's quality is not under test, only that it is drawn from real embeddings."""

from __future__ import annotations

import json
from pathlib import Path

from controller.data import cldr
from tests.cli.test_cli import assert_clean_error, xlt
from tests.support.obs_support import TASK, open_registry


def test_report_languages_writes_png_and_html(sqlite_url: str, tmp_path: Path,
                                              tiny_model_dir: Path) -> None:
    home = tmp_path / "home"
    reg = open_registry(sqlite_url, home)
    reg.init()
    reg.register_encoder("tiny", "1", tiny_model_dir)
    cldr.register_task(reg, ["en", "sw", "yo", "sr-Latn"])
    for language in ("sw", "yo", "sr-Latn"):
        reg.ensure_track(TASK, language, "tiny@1")
    out = tmp_path / "pictures"
    proc = xlt(home, "report", "languages", "--out", str(out), "--json", db=sqlite_url)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["base"] == "tiny@1"  # the base of the task's tracks
    by_lang = {r["language"]: r for r in result["languages"]}
    assert list(by_lang) == ["en", "sr-Latn", "sw", "yo"]  # English, then the tracks
    assert abs(by_lang["en"]["cosine_to_english"] - 1.0) < 1e-6
    assert all(-1 <= r["cosine_to_english"] < 1 for k, r in by_lang.items() if k != "en")
    assert by_lang["sw"]["phase"] == "STEADY" and by_lang["sw"]["items"] > 100
    png, page = Path(result["png"]), Path(result["html"])
    assert png.parent == out and png.read_bytes()[:4] == b"\x89PNG"
    text = page.read_text(encoding="utf-8")
    assert "data:image/png;base64," in text and "<td>sr-Latn</td>" in text


def test_report_languages_refuses_bad_input(sqlite_url: str, tmp_path: Path,
                                           tiny_model_dir: Path) -> None:
    home = tmp_path / "home"
    reg = open_registry(sqlite_url, home)
    reg.init()
    reg.register_encoder("tiny", "1", tiny_model_dir)
    cldr.register_task(reg, ["en", "sw"])
    out = tmp_path / "pictures"
    assert_clean_error(xlt(home, "report", "languages", "--out", str(out), db=sqlite_url),
                       2, "no controlled languages for task 'emoji-group'")
    assert_clean_error(xlt(home, "report", "languages", "--lang", "sw", "--out", str(out),
                           db=sqlite_url), 2, "give --base name@version")
    assert_clean_error(xlt(home, "report", "languages", "--lang", "sw", "--base", "tiny@9",
                           "--out", str(out), db=sqlite_url), 2, "tiny@9")
    assert_clean_error(xlt(home, "report", "languages", "--lang", "fi", "--base", "tiny@1",
                           "--out", str(out), db=sqlite_url),
                       2, "task 'emoji-group' has no labelled test rows in fi")
    assert not out.exists()  # nothing written by refused commands
