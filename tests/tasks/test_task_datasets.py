"""Tasks and datasets as a user registers them with `xlt task` and `xlt dataset`: every
format read, every bad file refused with one line naming the file, row and problem (exit
2, or 3 for a refused change), and nothing registered by a refused file. SQLite and
PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.test_cli import assert_clean_error, xlt
from tests.support.tiny import EMOJI_LABELS, write_adapter_file

PROV = ("--licence", "CC0-1.0", "--consent", "public data")
EN = [{"id": "1", "text": "hello there", "label": "greet"},
      {"id": "2", "text": "see you later", "label": "bye"},
      {"id": "3", "text": "what time is it", "label": "ask"}]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return path


@pytest.fixture
def home(tmp_path: Path, db_url: str) -> tuple[Path, str]:
    h = tmp_path / "home"
    assert xlt(h, "init", db=db_url).returncode == 0
    p = xlt(h, "task", "create", "intent", "--labels", "greet,bye,ask",
            "--description", "what a message wants", db=db_url)
    assert p.returncode == 0, p.stderr
    return h, db_url


def datasets(h: Path, db: str) -> list[dict]:
    p = xlt(h, "dataset", "list", "--task", "intent", "--all", "--json", db=db)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_every_format_registers_the_same_rows(home, tmp_path: Path) -> None:
    import pandas as pd

    h, db = home
    frame = pd.DataFrame(EN)
    files = {"jsonl": write_jsonl(tmp_path / "en.jsonl", EN),
             "csv": tmp_path / "en.csv", "parquet": tmp_path / "en.parquet"}
    frame.to_csv(files["csv"], index=False)
    frame.to_parquet(files["parquet"], index=False)
    datasets_lib = pytest.importorskip("datasets") if not _ci() else __import__("datasets")
    disk = tmp_path / "en_disk"
    datasets_lib.Dataset.from_pandas(frame).save_to_disk(str(disk))
    files["hf-disk"] = disk
    shas = set()
    for fmt, path in files.items():
        p = xlt(h, "dataset", "register", "intent", str(path), "--lang", "en", *PROV,
                "--json", db=db)
        assert p.returncode == 0, (fmt, p.stderr)
        (row,) = json.loads(p.stdout)
        assert row["rows"] == 3 and row["meta"]["source_format"] == fmt
        assert row["meta"]["label_counts"] == {"ask": 1, "bye": 1, "greet": 1}
        shas.add(row["sha256"])
    assert len(shas) == 1  # normalised in the store: the same rows, the same blob
    versions = [d["version"] for d in datasets(h, db)]
    assert versions == ["1", "2", "3", "4"]
    shown = json.loads(xlt(h, "task", "show", "intent", "--json", db=db).stdout)
    assert shown["labels"] == ["greet", "bye", "ask"]
    assert shown["datasets"]["en"]["train"]["rows"] == 3  # the newest version
    listed = json.loads(xlt(h, "task", "list", "--json", db=db).stdout)
    assert listed[0]["data_languages"] == ["en"]


def _ci() -> bool:
    import os

    return os.environ.get("CI") == "true"


def test_column_mapping_language_column_and_parallel(home, tmp_path: Path) -> None:
    h, db = home
    rows = [{"uid": "a", "utterance": "jambo", "intent": "greet", "lang": "sw"},
            {"uid": "b", "utterance": "kwaheri", "intent": "bye", "lang": "sw"},
            {"uid": "a", "utterance": "ẹ n lẹ", "intent": "greet", "lang": "yo"}]
    p = xlt(h, "dataset", "register", "intent", str(write_jsonl(tmp_path / "m.jsonl", rows)),
            "--language-column", "lang", "--text-column", "utterance", "--label-column",
            "intent", "--id-column", "uid", *PROV, "--json", db=db)
    assert p.returncode == 0, p.stderr
    assert sorted((r["language"], r["rows"]) for r in json.loads(p.stdout)) == [
        ("sw", 2), ("yo", 1)]
    pairs = [{"source_text": "hello there", "text": "habari"},
             {"source_text": "see you later", "text": "tutaonana"}]
    p = xlt(h, "dataset", "register", "intent", str(write_jsonl(tmp_path / "p.jsonl", pairs)),
            "--kind", "parallel", "--source-language", "en", "--lang", "sw", *PROV, db=db)
    assert p.returncode == 0, p.stderr
    shown = json.loads(xlt(h, "task", "show", "intent", "--json", db=db).stdout)
    assert shown["datasets"]["sw"]["parallel from en"]["rows"] == 2
    p = xlt(h, "dataset", "register", "intent", str(tmp_path / "p.jsonl"), "--kind",
            "parallel", "--lang", "sw", *PROV, db=db)
    assert_clean_error(p, 2, "pivot language")


BAD = {
    "wrong columns": ([{"id": "1", "sentence": "hi", "label": "greet"}],
                      "row 1: has no column 'text'"),
    "unknown label": ([EN[0], {"id": "2", "text": "yo", "label": "shout"}],
                      "row 2: label 'shout' is not in task 'intent'"),
    "empty text": ([EN[0], {"id": "2", "text": "   ", "label": "bye"}],
                   "row 2: 'text' is empty"),
    "duplicate ids": ([EN[0], {"id": "1", "text": "other", "label": "bye"}],
                      "row 2: repeats id '1'"),
    "another task's rows": ([{**EN[0], "task": "sentiment"}],
                            "row 1: belongs to task 'sentiment'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files_refused_and_nothing_registered(home, tmp_path: Path, case: str) -> None:
    h, db = home
    rows, needle = BAD[case]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    p = xlt(h, "dataset", "register", "intent", str(path), "--lang", "en", *PROV, db=db)
    assert_clean_error(p, 2, f"{path}: {needle}")
    assert len(p.stderr.strip().splitlines()) == 1
    assert datasets(h, db) == []


def test_invalid_utf8_names_its_row(home, tmp_path: Path) -> None:
    h, db = home
    path = tmp_path / "bad.csv"
    path.write_bytes(b"id,text,label\n1,hello,greet\n2,caf\xe9,bye\n")
    p = xlt(h, "dataset", "register", "intent", str(path), "--lang", "en", *PROV, db=db)
    assert_clean_error(p, 2, f"{path}: row 3: is not valid UTF-8")
    assert datasets(h, db) == []


def test_test_rows_leaked_into_train_refused(home, tmp_path: Path) -> None:
    h, db = home
    assert xlt(h, "dataset", "register", "intent", str(write_jsonl(tmp_path / "t.jsonl", EN)),
               "--lang", "en", *PROV, db=db).returncode == 0
    leak = write_jsonl(tmp_path / "test.jsonl", [{"id": "9", "text": "  see you later ",
                                                   "label": "bye"}])
    p = xlt(h, "dataset", "register", "intent", str(leak), "--lang", "en", "--split", "test",
            *PROV, db=db)
    assert_clean_error(p, 2, "row 1: text 'see you later' is also in en's train split")
    assert len(datasets(h, db)) == 1


def test_a_file_of_another_task_refused(home, tmp_path: Path) -> None:
    h, db = home
    path = write_jsonl(tmp_path / "en.jsonl", EN)
    assert xlt(h, "dataset", "register", "intent", str(path), "--lang", "en", *PROV,
               db=db).returncode == 0
    assert xlt(h, "task", "create", "intent-v2", "--labels", "greet,bye,ask",
               db=db).returncode == 0
    p = xlt(h, "dataset", "register", "intent-v2", str(path), "--lang", "en", *PROV, db=db)
    assert_clean_error(p, 3, "is registered as intent/en/train@1 of task 'intent'")
    p = xlt(h, "dataset", "register", "nosuch", str(path), "--lang", "en", *PROV, db=db)
    assert_clean_error(p, 2, "no task 'nosuch'")


def test_label_set_fixed_once_referenced(home, tmp_path: Path, tiny_model_dir: Path) -> None:
    h, db = home
    assert xlt(h, "task", "relabel", "intent", "--labels", "greet,bye,ask,thank",
               db=db).returncode == 0  # nothing refers to it yet
    assert xlt(h, "task", "create", "emoji-group", "--labels", ",".join(EMOJI_LABELS),
               db=db).returncode == 0
    assert xlt(h, "encoder", "register", "tiny@1", str(tiny_model_dir), db=db).returncode == 0
    fp = json.loads(xlt(h, "encoder", "show", "tiny@1", "--json", db=db).stdout)["fingerprint"]
    weights = write_adapter_file(tmp_path / "a.safetensors", fp, 1)  # an 8-label head
    p = xlt(h, "adapter", "register", "--task", "intent", "--lang", "sw", "--base", "tiny@1",
            "--weights", str(weights), db=db)
    assert_clean_error(p, 3, "but task intent has the 4 labels")
    assert xlt(h, "adapter", "register", "--task", "emoji-group", "--lang", "sw", "--base",
               "tiny@1", "--weights", str(weights), db=db).returncode == 0
    p = xlt(h, "task", "relabel", "emoji-group", "--labels", "a,b", db=db)
    assert_clean_error(p, 3, "cannot change")
    for bad, needle in ((["task", "create", "x", "--labels", "a"], "needs 2 to"),
                        (["task", "create", "x", "--labels", "a,a"], "given twice"),
                        (["task", "create", "../x", "--labels", "a,b"], "task name"),
                        (["task", "show", "nosuch"], "no task 'nosuch'")):
        assert_clean_error(xlt(h, *bad, db=db), 2, needle)
