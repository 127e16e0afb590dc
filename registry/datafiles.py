"""Reading a team's data files row by row: JSONL, CSV/TSV, Parquet and a Hugging Face
`datasets` directory written by `save_to_disk` (read with pyarrow, nothing downloaded).

Every reader streams (one row in memory at a time, Parquet and Arrow by record batch) and
yields `(row_number, {column: value})`, row numbers counted from 1 as a person reading the
file would (the line of a JSONL or CSV file). A problem is an `InvalidInput` naming the
file, the row and what was wrong, so `xlt dataset register` can print one line and stop.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from registry.errors import InvalidInput

FORMATS = ("jsonl", "csv", "tsv", "parquet", "hf-disk")
Row = tuple[int, dict[str, Any]]


def bad_row(path: Path, row: int | None, problem: str, hint: str) -> InvalidInput:
    where = f"{path}: row {row}" if row is not None else str(path)
    return InvalidInput(f"{where}: {problem}", hint)


def detect_format(path: Path) -> str:
    """The format from the file name (a directory: a `save_to_disk` dataset)."""
    if path.is_dir():
        if (path / "state.json").is_file():
            return "hf-disk"
        raise bad_row(path, None, "is a directory without state.json",
                      "give a file, or a directory written by datasets' save_to_disk")
    name = path.name.lower().removesuffix(".gz")
    for suffix, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".csv", "csv"),
                        (".tsv", "tsv"), (".parquet", "parquet")):
        if name.endswith(suffix):
            return fmt
    raise bad_row(path, None, "has an unknown format",
                  f"name it .jsonl, .csv, .tsv or .parquet (optionally .gz for the text "
                  f"formats), or pass --format ({', '.join(FORMATS)})")


def iter_rows(path: Path, fmt: str | None = None) -> Iterator[Row]:
    path = Path(path)
    if not path.exists():
        raise bad_row(path, None, "does not exist", "check the path")
    fmt = fmt or detect_format(path)
    if fmt == "jsonl":
        return _jsonl(path)
    if fmt in ("csv", "tsv"):
        return _csv(path, "\t" if fmt == "tsv" else ",")
    if fmt == "parquet":
        return _parquet(path)
    if fmt == "hf-disk":
        return _hf_disk(path)
    raise bad_row(path, None, f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}")


def _open_binary(path: Path) -> IO[bytes]:
    with open(path, "rb") as probe:
        gz = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Each line decoded as strict UTF-8: a bad byte is named by its line."""
    with _open_binary(path) as fh:
        try:
            for n, raw in enumerate(fh, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise bad_row(path, n, f"is not valid UTF-8 (byte {exc.start + 1} of the "
                                  f"line)", "save the file as UTF-8") from None
                yield n, line.removeprefix("\ufeff") if n == 1 else line
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise bad_row(path, None, f"cannot be read ({exc})",
                          "check the file is complete") from None


def _jsonl(path: Path) -> Iterator[Row]:
    for n, line in _decoded_lines(path):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise bad_row(path, n, f"is not JSON ({exc.msg})",
                          "write one JSON object per line") from None
        if not isinstance(value, dict):
            raise bad_row(path, n, "is not a JSON object", "write one JSON object per line")
        yield n, value


def _csv(path: Path, delimiter: str) -> Iterator[Row]:
    lines = _decoded_lines(path)
    current = [0]

    def text() -> Iterator[str]:
        for n, line in lines:
            current[0] = n
            yield line

    reader = csv.reader(text(), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise bad_row(path, current[0], f"is not CSV ({exc})", "check the quoting") from None
    header = [h.strip() for h in header]
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise bad_row(path, current[0], f"is not CSV ({exc})",
                          "check the quoting") from None
        if not cells or cells == [""]:
            continue
        if len(cells) != len(header):
            raise bad_row(path, current[0], f"has {len(cells)} fields, the header "
                          f"{len(header)}", "quote fields that hold the delimiter")
        yield current[0], dict(zip(header, cells, strict=True))


def _batches_rows(path: Path, batches: Any, first: int = 1) -> Iterator[Row]:
    n = first - 1
    for batch in batches:
        for row in batch.to_pylist():
            n += 1
            yield n, row


def _parquet(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq  # only a Parquet file pays for pyarrow

    try:
        file = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 (pyarrow raises several kinds for a bad file)
        raise bad_row(path, None, f"is not a Parquet file ({exc})",
                      "write it with pandas.to_parquet or pyarrow") from None
    yield from _checked_batches(path, file.iter_batches(batch_size=8192))


def _hf_disk(path: Path) -> Iterator[Row]:
    """A `Dataset.save_to_disk` directory: state.json lists Arrow stream files."""
    import pyarrow as pa

    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        files = [path / f["filename"] for f in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise bad_row(path, None, f"has an unreadable state.json ({exc})",
                      "write the directory with datasets' Dataset.save_to_disk") from None
    for file in files:
        if file.resolve().parent != path.resolve() or not file.is_file():
            raise bad_row(path, None, f"names a missing data file {file.name}",
                          "write the directory again with save_to_disk")

    def batches() -> Iterator[Any]:
        for file in files:
            with pa.memory_map(str(file)) as source:
                try:
                    reader = pa.ipc.open_stream(source)
                except pa.ArrowInvalid as exc:
                    raise bad_row(file, None, f"is not an Arrow stream ({exc})",
                                  "write the directory again with save_to_disk") from None
                yield from reader

    yield from _checked_batches(path, batches())


def _checked_batches(path: Path, batches: Iterator[Any]) -> Iterator[Row]:
    import pyarrow as pa

    try:
        yield from _batches_rows(path, batches)
    except (pa.ArrowInvalid, OSError) as exc:
        raise bad_row(path, None, f"cannot be read ({exc})",
                      "check the file is complete") from None


class GzipJsonlWriter:
    """The store's form of a dataset: sorted keys, gzip with mtime 0, so the same rows give
    the same bytes (and sha256) whatever file they came from."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._gz = gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="")
        self._text = io.TextIOWrapper(self._gz, encoding="utf-8", newline="\n")
        self.rows = 0

    def write(self, row: dict[str, Any]) -> None:
        self._text.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        self.rows += 1

    def close(self) -> None:
        self._text.flush()
        self._text.detach()
        self._gz.close()


def read_stored(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a stored (normalised) dataset file."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)
