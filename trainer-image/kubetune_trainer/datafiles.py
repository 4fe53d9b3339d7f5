"""Opening data files: compression, text encoding and size limits, checked while reading.

The policy, the same for every format:

* Compression is recognised by its magic bytes (whatever the file is called): gzip, bzip2 and xz are
  decoded on the fly; anything else compressed (zstd) is refused naming what is accepted. The format comes
  from the name without its compression suffix (`train.jsonl.gz` is JSON Lines).
* Text is UTF-8 (a leading byte-order mark is dropped). Any other byte sequence is refused naming the file,
  the row and the byte offset in the decoded stream, never a UnicodeDecodeError traceback.
* No row may hold more than `dataset.maxRowBytes` and no file more than `dataset.maxFileBytes` (after
  decompression). Both are checked while the bytes arrive: a 50 MB line is refused after reading at most
  maxRowBytes + 1 bytes of it, before anything is parsed or tokenised.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import itertools
import json
import lzma
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import DataError

COMPRESSION_SUFFIXES = (".gz", ".gzip", ".bz2", ".xz", ".zst", ".zstd")
_MAGIC = {b"\x1f\x8b": ("gzip", gzip.open), b"BZh": ("bzip2", bz2.open), b"\xfd7zXZ\x00": ("xz", lzma.open)}
_REFUSED_MAGIC = {b"\x28\xb5\x2f\xfd": "zstd", b"PK\x03\x04": "zip"}
ACCEPTED = "uncompressed, gzip (.gz), bzip2 (.bz2) or xz (.xz)"
UTF8_HELP = ("data files must be UTF-8 encoded; convert it, e.g. `iconv -f latin1 -t utf-8 in > out`, "
             "or in Python open(..., encoding='latin-1') and write with encoding='utf-8'")


@dataclass(frozen=True)
class Limits:
    """Size limits per data file (dataset.maxRowBytes, dataset.maxFileBytes); bytes after decompression."""

    max_row_bytes: int = 4 << 20
    max_file_bytes: int = 4 << 30


def strip_compression(name: str) -> str:
    """`train.jsonl.gz` -> `train.jsonl`: the name the format is detected from."""
    lower = name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@contextlib.contextmanager
def open_binary(path: Path, name: str) -> Iterator[BinaryIO]:
    """The file's bytes, decompressed when its magic bytes say gzip, bzip2 or xz."""
    with open(path, "rb") as raw:
        head = raw.read(8)
    for magic, what in _REFUSED_MAGIC.items():
        if head.startswith(magic):
            raise DataError(f"{name}: the file is {what}-compressed, which is not supported; accepted: {ACCEPTED}")
    kind, opener = next((found for magic, found in _MAGIC.items() if head.startswith(magic)), (None, open))
    with opener(path, "rb") as stream:
        try:
            yield stream
        except (OSError, EOFError, lzma.LZMAError) as err:
            if kind is None:
                raise
            raise DataError(f"{name}: not a readable {kind} file ({err}); the file is damaged or truncated") from None


class _Counter:
    """Counts bytes read from a file and refuses more than the file limit."""

    def __init__(self, name: str, limits: Limits):
        self.name, self.limits, self.total = name, limits, 0

    def add(self, n: int) -> None:
        self.total += n
        if self.total > self.limits.max_file_bytes:
            raise DataError(f"{self.name}: the file holds more than {_human(self.limits.max_file_bytes)} "
                            f"(dataset.maxFileBytes = {self.limits.max_file_bytes}); split it into several files "
                            "in one folder, or raise dataset.maxFileBytes")


def check_stored_size(name: str, size: int, limits: Limits) -> None:
    """Refuse a file from its listed size, before it is downloaded: decompressing never makes it smaller."""
    if size > limits.max_file_bytes:
        raise DataError(f"{name}: the file is {_human(size)} as stored, more than {_human(limits.max_file_bytes)} "
                        f"(dataset.maxFileBytes = {limits.max_file_bytes}); it was not downloaded. Split it into "
                        "several files in one folder, or raise dataset.maxFileBytes")


def _too_long(name: str, row: int, limits: Limits, size: str, unit: str = "row") -> DataError:
    return DataError(f"{name}: {unit} {row} is longer than {_human(limits.max_row_bytes)} ({size}; dataset.maxRowBytes "
                     f"= {limits.max_row_bytes}); shorten or drop the row, or raise dataset.maxRowBytes")


def _decode(raw: bytes, name: str, row: int, offset: int, unit: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = raw[err.start]
        raise DataError(f"{name}: {unit} {row}: byte {offset + err.start} (0x{bad:02x}) is not valid UTF-8; "
                        f"{UTF8_HELP}") from None


def text_lines(stream: BinaryIO, name: str, limits: Limits, unit: str = "row") -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line) with the row and file limits applied as the bytes arrive. `unit`
    is what a line is called in messages: a row of JSON Lines, a line of CSV (whose rows are records)."""
    counter, offset = _Counter(name, limits), 0
    for number in itertools.count(1):
        raw = stream.readline(limits.max_row_bytes + 1)
        if not raw:
            return
        counter.add(len(raw))
        if len(raw.rstrip(b"\r\n")) > limits.max_row_bytes:
            raise _too_long(name, number, limits, "more was not read", unit)
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw, offset = raw[3:], 3
        yield number, _decode(raw, name, number, offset, unit)
        offset += len(raw)


def read_records(path: Path, fmt: str, name: str, limits: Limits) -> list[tuple[int, object]]:
    """(1-based row, record) pairs; for JSON Lines and CSV the row is the line or record number."""
    if fmt == "parquet":
        return _parquet(path, name, limits)
    with open_binary(path, name) as stream:
        if fmt == "jsonl":
            return _jsonl(stream, name, limits)
        if fmt == "csv":
            return _csv(stream, name, limits)
        if fmt == "json":
            return _json(stream, name, limits)
    raise DataError(f"{name}: unsupported format {fmt!r}; accepted: jsonl, json, csv, parquet")


def _jsonl(stream: BinaryIO, name: str, limits: Limits) -> list[tuple[int, object]]:
    rows, problems = [], []
    for number, line in text_lines(stream, name, limits):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            problems.append(f"{name}: row {number}: not valid JSON ({err.msg} at column {err.colno})")
    if problems:
        raise DataError(f"{name} is not valid JSON Lines (one JSON object per line)", problems)
    return rows


def _csv(stream: BinaryIO, name: str, limits: Limits) -> list[tuple[int, object]]:
    lines = (line for _, line in text_lines(stream, name, limits, unit="line"))
    reader = csv.DictReader(lines)
    old = csv.field_size_limit(max(limits.max_row_bytes, 131072))
    rows, number = [], 0
    try:
        for number, record in enumerate(reader, start=1):
            if sum(len(v or "") for v in record.values() if isinstance(v, str)) > limits.max_row_bytes:
                raise _too_long(name, number, limits, "its fields together")
            rows.append((number, record))
    except csv.Error as err:
        if "field larger than field limit" in str(err):
            raise _too_long(name, number + 1, limits, "one field") from None
        raise DataError(f"{name}: row {number + 1}: not valid CSV ({err})") from None
    finally:
        csv.field_size_limit(old)
    return rows


def _json(stream: BinaryIO, name: str, limits: Limits) -> list[tuple[int, object]]:
    counter, chunks = _Counter(name, limits), []
    while block := stream.read(1 << 20):
        counter.add(len(block))
        chunks.append(block)
    raw = b"".join(chunks)
    start = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    try:
        text = raw[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        at = start + err.start
        line = raw.count(b"\n", 0, at) + 1
        raise DataError(f"{name}: line {line}: byte {at} (0x{raw[at]:02x}) is not valid UTF-8; {UTF8_HELP}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{name}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
                        "expected an array of records") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{name}: expected a JSON array of records, got {type(data).__name__}")
    _check_rows(data, name, limits)
    return list(enumerate(data, start=1))


def _parquet(path: Path, name: str, limits: Limits) -> list[tuple[int, object]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    _Counter(name, limits).add(path.stat().st_size)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{name}: not a readable Parquet file ({err})") from None
    rows = table.to_pylist()
    _check_rows(rows, name, limits)
    return list(enumerate(rows, start=1))


def _check_rows(rows: list, name: str, limits: Limits) -> None:
    for number, record in enumerate(rows, start=1):
        size = len(json.dumps(record, ensure_ascii=False, default=str).encode())
        if size > limits.max_row_bytes:
            raise _too_long(name, number, limits, f"{_human(size)} as JSON")
