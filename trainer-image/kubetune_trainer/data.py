"""Instruction data: read files, map columns, validate every record, drop duplicates, split.

Nothing here needs a tokenizer or weights, so a bad file fails in seconds. Each problem names the file,
the 1-based row and the field, and what was expected.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from kubetune_api.spec import CONVERSATION_SCHEMAS, OPTIONAL_FIELDS, SCHEMA_FIELDS

from .conversations import Turn, parse_conversation
from .datafiles import Limits, read_records, strip_compression
from .errors import DataError

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
# auto-detection tries the layouts in this order, by their required columns
DETECT_ORDER = ("messages", "sharegpt", "alpaca", "promptCompletion")


@dataclass(frozen=True)
class Example:
    """One validated record: a conversation and which of its assistant turns the model should learn.

    The last trained turn is the answer: generation metrics prompt with the turns before it and compare
    with it. `fields` keeps the schema fields (instruction, input, output / prompt, completion) for custom
    templates; `tools` the tool schemas as a JSON list ("" for none); `source` the file and row.
    """

    turns: tuple[Turn, ...]
    fields: tuple[tuple[str, str], ...] = ()
    tools: str = ""
    source: str = field(default="", compare=False)

    @classmethod
    def single(cls, prompt: str, response: str, fields: tuple[tuple[str, str], ...] = (),
               source: str = "") -> Example:
        """One user prompt and the answer to learn."""
        return cls((Turn("user", prompt), Turn("assistant", response, train=True)), fields, source=source)

    @property
    def answer_index(self) -> int:
        return max(i for i, t in enumerate(self.turns) if t.train)

    @property
    def response(self) -> str:
        """The answer as text (tool calls in their JSON text form)."""
        return self.turns[self.answer_index].text

    @property
    def field_map(self) -> dict[str, str]:
        return dict(self.fields)

    @property
    def user_text(self) -> str:
        """The last user message before the answer."""
        return next((t.content for t in reversed(self.turns[: self.answer_index]) if t.role == "user"), "")


@dataclass
class DataReport:
    """What the data looked like: counts per file, duplicates dropped, and the split."""

    files: list[dict] = field(default_factory=list)
    rows: int = 0
    duplicates: int = 0
    train: int = 0
    eval: int = 0
    schema: str = ""
    warnings: list[str] = field(default_factory=list)  # shown in the report, the status message and the log


def detect_format(path: str, declared: str) -> str:
    if declared != "auto":
        return declared
    suffix = Path(strip_compression(path)).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{path}: cannot tell the format from the extension {suffix or '(none)'}; set "
                        f"dataset.format to one of jsonl, json, csv, parquet")
    return FORMATS[suffix]


def read_rows(path: Path, fmt: str, name: str, limits: Limits | None = None) -> list[tuple[int, object]]:
    """(1-based row, record) pairs; for JSONL the row is the line number. Compression, UTF-8 and the size
    limits are datafiles.py's policy."""
    return read_records(path, fmt, name, limits or Limits())


def detect_schema(record: object, declared: str, mapping: dict[str, str], name: str) -> str:
    if declared != "auto":
        return declared
    if isinstance(record, dict):
        for schema in DETECT_ORDER:
            required = [f for f in SCHEMA_FIELDS[schema] if f not in OPTIONAL_FIELDS]
            if all(mapping.get(f, f) in record for f in required):
                return schema
    columns = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
    raise DataError(f"{name}: cannot detect the schema from the columns ({columns}); expected "
                    "instruction+output (alpaca), prompt+completion (promptCompletion), messages (messages) "
                    "or conversations (sharegpt); set dataset.schema and dataset.columnMapping (docs/data.md)")


def to_example(record: object, schema: str, mapping: dict[str, str], where: str,
               mask_history: bool = False) -> tuple[Example | None, list[str]]:
    """Validate one record; returns the example or the problems found in it."""
    if not isinstance(record, dict):
        return None, [f"{where}: expected an object with named fields, got {type(record).__name__}"]
    columns = f" (the record's columns: {', '.join(map(str, record)) or 'none'})"

    def text(fld: str, required: bool = True) -> str | None:
        column = mapping.get(fld, fld)
        value = record.get(column)
        label = f"field {column!r}" + (f" (schema field {fld})" if column != fld else "")
        if value is None or (isinstance(value, str) and not value.strip() and required):
            if required:
                problems.append(f"{where}: {label} is missing or empty; expected a non-empty string"
                                + ("" if column in record else columns))
            return "" if not required else None
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            problems.append(f"{where}: {label} is a {type(value).__name__}; expected a string")
            return None
        return str(value)

    problems: list[str] = []
    if schema in CONVERSATION_SCHEMAS:
        column = mapping.get(SCHEMA_FIELDS[schema][0], SCHEMA_FIELDS[schema][0])
        if column not in record:
            return None, [f"{where}: no field {column!r} (schema {schema}){columns}; set dataset.schema, or "
                          f"dataset.columnMapping.{SCHEMA_FIELDS[schema][0]} to the column that holds it"]
        turns, tools, problems = parse_conversation(record, column, mapping, where, mask_history)
        return (Example(turns, tools=tools, source=where), []) if not problems else (None, problems)
    if schema == "alpaca":
        instruction, extra, output = text("instruction"), text("input", required=False), text("output")
        if problems:
            return None, problems
        user = instruction + (f"\n\n{extra}" if extra else "")
        fields = (("instruction", instruction), ("input", extra or ""), ("output", output))
        return Example.single(user, output, fields, source=where), []
    prompt, completion = text("prompt"), text("completion")
    if problems:
        return None, problems
    fields = (("prompt", prompt), ("completion", completion))
    return Example.single(prompt, completion, fields, source=where), []


def load_examples(files: list[tuple[Path, str]], spec, report: DataReport) -> list[Example]:
    """Read and validate every file (local path, display name); all problems are reported together."""
    examples, problems, invalid = [], [], 0
    schema = None
    for path, name in files:
        fmt = detect_format(name, spec.format)
        rows = read_rows(path, fmt, name, Limits(spec.max_row_bytes, spec.max_file_bytes))
        if rows and schema is None:
            schema = detect_schema(rows[0][1], spec.data_schema, spec.column_mapping, name)
        kept = 0
        for number, record in rows:
            example, found = to_example(record, schema or "alpaca", spec.column_mapping, f"{name}: row {number}",
                                        spec.mask_history)
            problems += found
            invalid += bool(found)
            if example is not None:
                examples.append(example)
                kept += 1
        report.files.append({"uri": name, "format": fmt, "rows": len(rows)})
        report.rows += len(rows)
    if problems:
        raise DataError(f"{invalid} invalid record(s) in the dataset", problems)
    if not examples:
        raise DataError("the dataset has no records: " + ", ".join(n for _, n in files))
    report.schema = schema or ""
    return examples


def deduplicate(examples: list[Example]) -> tuple[list[Example], int]:
    """Exact duplicates removed, first occurrence kept; returns the rest and how many were dropped."""
    seen, kept = set(), []
    for example in examples:
        if example not in seen:
            seen.add(example)
            kept.append(example)
    return kept, len(examples) - len(kept)


def split(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Deterministic train/eval split: the same data, fraction and seed give the same split."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(fraction * len(examples)))
    if n_eval >= len(examples):
        raise DataError(f"{len(examples)} record(s) are too few to hold out {fraction:.0%} for evaluation; "
                        "add data or set dataset.eval")
    held = set(order[:n_eval])
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])
