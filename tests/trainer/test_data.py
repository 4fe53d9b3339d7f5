"""Reading and validating instruction data: what a user sees when a file is wrong, and what is kept."""

from __future__ import annotations

import json

import pytest

from kubetune_api.spec import DatasetSpec
from kubetune_trainer import data
from kubetune_trainer.errors import DataError


def load(path, **spec):
    report = data.DataReport()
    examples = data.load_examples([(path, path.name)], DatasetSpec(train={"uri": "/x"}, **spec), report)
    return examples, report


def test_bad_records_name_file_row_and_field(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join([
        json.dumps({"instruction": "ok", "output": "fine"}),
        "{not json",
        json.dumps({"instruction": "no answer"}),
        json.dumps({"instruction": ["a", "list"], "output": "x"}),
    ]) + "\n")
    with pytest.raises(DataError) as err:
        load(path, schema="alpaca")
    assert "train.jsonl: row 2: not valid JSON" in err.value.message
    path.write_text("\n".join([
        json.dumps({"instruction": "ok", "output": "fine"}),
        json.dumps({"instruction": "no answer"}),
        json.dumps({"instruction": ["a", "list"], "output": "x"}),
    ]) + "\n")
    with pytest.raises(DataError) as err:
        load(path, schema="alpaca")
    text = err.value.message
    assert "train.jsonl: row 2: field 'output' is missing or empty; expected a non-empty string" in text
    assert "train.jsonl: row 3: field 'instruction' is a list; expected a string" in text
    assert err.value.code == 11


def test_column_mapping_names_the_users_column(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("question,answer\nWhat is up?,the sky\nEmpty answer,\n")
    with pytest.raises(DataError) as err:
        load(path, schema="alpaca", column_mapping={"instruction": "question", "output": "answer"})
    assert "qa.csv: row 2: field 'answer' (schema field output) is missing or empty" in err.value.message


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_every_format_reads_the_same_examples(tmp_path, fmt):
    rows = [{"prompt": "2+2", "completion": "4"}, {"prompt": "3+3", "completion": "6"}]
    path = tmp_path / f"train.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "csv":
        path.write_text("prompt,completion\n2+2,4\n3+3,6\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    examples, report = load(path)
    assert report.schema == "promptCompletion"
    assert [(e.user_text, e.response) for e in examples] == [("2+2", "4"), ("3+3", "6")]


def test_messages_schema_needs_an_assistant_answer_last(tmp_path):
    path = tmp_path / "chat.jsonl"
    conversation = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"}]
    path.write_text(json.dumps({"messages": conversation}) + "\n"
                    + json.dumps({"messages": conversation[:2]}) + "\n")
    with pytest.raises(DataError) as err:
        load(path)
    assert "row 2: field 'messages': the last message must be an assistant answer, not a user message" \
        in err.value.message
    path.write_text(json.dumps({"messages": conversation}) + "\n")
    (example,), _ = load(path, mask_history=True)
    assert [(t.role, t.content, t.train) for t in example.turns] == [
        ("system", "be brief", False), ("user", "hi", False), ("assistant", "hello", True)]
    assert example.response == "hello" and example.user_text == "hi"


def test_unknown_columns_say_what_schemas_exist(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps({"q": "a", "a": "b"}) + "\n")
    with pytest.raises(DataError, match="cannot detect the schema from the columns \\(a, q\\)"):
        load(path)


def test_duplicates_are_dropped_and_counted_and_the_split_is_deterministic(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + rows[:3]))
    examples, report = load(path)
    kept, dropped = data.deduplicate(examples)
    assert (len(kept), dropped, report.rows) == (20, 3, 23)
    first = data.split(kept, 0.25, seed=1)
    assert data.split(kept, 0.25, seed=1) == first
    assert len(first[1]) == 5 and not set(first[0]) & set(first[1])
    assert data.split(kept, 0.25, seed=2)[1] != first[1]
