"""Chat records as people publish them: ShareGPT, OpenAI messages with content parts and tool calls,
LLaMA-Factory's loss weights; what is trained, and what a user reads when a record is wrong."""

from __future__ import annotations

import json

import pytest

from kubetune_api.spec import DatasetSpec
from kubetune_trainer import data
from kubetune_trainer.errors import DataError

TOOLS = [{"name": "lookup_sku", "description": "SKU of a product",
          "parameters": {"type": "object", "properties": {"product": {"type": "string"}}}}]


def load(tmp_path, rows: list, name: str = "train.jsonl", **spec) -> tuple[list[data.Example], data.DataReport]:
    path = tmp_path / name
    path.write_text(json.dumps(rows) if name.endswith(".json") else "".join(json.dumps(r) + "\n" for r in rows))
    report = data.DataReport()
    examples = data.load_examples([(path, name)], DatasetSpec(train={"uri": "/x"}, **spec), report)
    return examples, report


def problems(tmp_path, rows: list, **spec) -> str:
    with pytest.raises(DataError) as err:
        load(tmp_path, rows, **spec)
    return err.value.message


def summary(example: data.Example) -> list[tuple]:
    return [(t.role, t.text, t.train) for t in example.turns]


def test_sharegpt_with_function_calls_observations_tools_and_a_system_column_loads_unchanged(tmp_path):
    row = {"conversations": [
        {"from": "human", "value": "SKU of the tent?"},
        {"from": "function_call", "value": json.dumps({"name": "lookup_sku", "arguments": {"product": "tent"}})},
        {"from": "observation", "value": '{"sku": "NV-KAV"}'},
        {"from": "gpt", "value": "It is NV-KAV."},
        {"from": "human", "value": "Thanks!"},
        {"from": "gpt", "value": "You're welcome."},
    ], "system": "You are a shop assistant.", "tools": json.dumps(TOOLS)}
    plain = {"conversations": [row["conversations"][0], {"from": "gpt", "value": "No tools."}], "tools": "[]"}
    (example, without), report = load(tmp_path, [row, plain], name="glaive.json")
    assert report.schema == "sharegpt" and without.tools == ""
    call = '<tool_call>\n{"name": "lookup_sku", "arguments": {"product": "tent"}}\n</tool_call>'
    assert summary(example) == [
        ("system", "You are a shop assistant.", False), ("user", "SKU of the tent?", False),
        ("assistant", call, True), ("tool", '{"sku": "NV-KAV"}', False), ("assistant", "It is NV-KAV.", True),
        ("user", "Thanks!", False), ("assistant", "You're welcome.", True)]
    assert json.loads(example.tools) == [{"type": "function", "function": TOOLS[0]}]
    assert example.response == "You're welcome." and example.user_text == "Thanks!"


def test_openai_messages_with_content_parts_loss_weights_and_tool_calls(tmp_path):
    rows = [{"messages": [
        {"role": "system", "content": [{"type": "text", "value": "Be brief."}], "loss_weight": 0.0},
        {"role": "user", "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "value": "SKU?"}],
         "loss_weight": 0.0},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "lookup_sku", "arguments": '{"product": "tent"}'}}], "loss_weight": 0},
        {"role": "tool", "tool_call_id": "call_1", "content": "NV-KAV"},
        {"role": "assistant", "content": [{"type": "text", "value": "NV-KAV"}], "loss_weight": 1.0},
    ], "tools": [{"type": "function", "function": TOOLS[0]}]}]
    (example,), report = load(tmp_path, rows)
    assert report.schema == "messages"
    assert [(t.role, t.content, t.train) for t in example.turns] == [
        ("system", "Be brief.", False), ("user", "Hello, SKU?", False), ("assistant", "", False),
        ("tool", "NV-KAV", False), ("assistant", "NV-KAV", True)]
    assert example.turns[2].calls == [{"name": "lookup_sku", "arguments": {"product": "tent"}, "id": "call_1"}]
    assert example.turns[3].tool_call_id == "call_1"


def test_every_assistant_turn_is_trained_unless_mask_history_keeps_only_the_last(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                          {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}]
    (example,), _ = load(tmp_path, rows)
    assert [t.train for t in example.turns] == [False, True, False, True]
    (example,), _ = load(tmp_path, rows, mask_history=True)
    assert [t.train for t in example.turns] == [False, False, False, True]


def test_column_mapping_names_the_conversation_column_keys_and_roles(tmp_path):
    rows = [{"dialog": [{"speaker": "customer", "text": "hi"}, {"speaker": "agent", "text": "hello"}],
             "functions": json.dumps(TOOLS), "persona": "Be kind."}]
    mapping = {"conversations": "dialog", "roleKey": "speaker", "contentKey": "text", "userRole": "customer",
               "assistantRole": "agent", "tools": "functions", "system": "persona"}
    (example,), _ = load(tmp_path, rows, schema="sharegpt", column_mapping=mapping)
    assert summary(example) == [("system", "Be kind.", False), ("user", "hi", False), ("assistant", "hello", True)]
    assert example.tools


def test_a_schema_line_is_all_an_ambiguous_file_needs(tmp_path):
    # a `messages` column of ShareGPT turns: the keys and role names of both layouts are accepted
    rows = [{"messages": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}]
    (example,), report = load(tmp_path, rows, schema="messages")
    assert report.schema == "messages" and summary(example)[-1] == ("assistant", "hello", True)


BAD = [
    ("role", {"role": "bot", "content": "x"},
     "message 2 has role 'bot'; accepted roles: system, user, human, assistant, gpt, tool, observation, "
     "function_call; map other role names with dataset.columnMapping (systemRole, userRole, assistantRole"),
    ("content type", {"role": "assistant", "content": {"text": "x"}},
     "message 2 (assistant): 'content' is a dict; expected a string or a list of text parts"),
    ("image part", {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]},
     "message 2 (assistant): content part 1 has type 'image_url'; only text parts can be trained on"),
    ("part without type", {"role": "assistant", "content": ["plain"]},
     "message 2 (assistant): content part 1 is a str; expected one of text parts"),
    ("weight", {"role": "assistant", "content": "x", "loss_weight": 0.5},
     "message 2 (assistant): loss_weight 0.5 is not accepted; use 0 (not trained) or 1 (trained)"),
    ("no role key", {"content": "x"},
     "message 2 has no 'role' key (its keys: content); set dataset.columnMapping.roleKey"),
    ("tool call arguments", {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]},
     "message 2 (assistant) tool_calls: the arguments of 'f' are not a JSON object"),
    ("empty answer", {"role": "assistant", "content": ""},
     "message 2 (assistant) is empty: no content and no tool calls"),
]


@pytest.mark.parametrize("case, message, expected", BAD, ids=[c[0] for c in BAD])
def test_a_bad_message_is_named_by_row_message_and_what_is_accepted(tmp_path, case, message, expected):
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            {"messages": [{"role": "user", "content": "q"}, message]}]
    text = problems(tmp_path, rows)
    assert "1 invalid record(s)" in text
    assert f"train.jsonl: row 2: field 'messages' {expected}" in text


def test_invalid_records_are_counted_as_records_not_messages(tmp_path):
    bad = {"messages": [{"role": "user", "content": 1}, {"role": "robot", "content": "x"},
                        {"role": "assistant", "content": ["x"]}]}
    text = problems(tmp_path, [bad, bad])
    assert text.startswith("2 invalid record(s) in the dataset")
    assert text.count("train.jsonl: row 1:") == 3 and text.count("train.jsonl: row 2:") == 3


@pytest.mark.parametrize("rows, expected", [
    ([{"messages": [{"role": "user", "content": "q"}]}],
     "row 1: field 'messages': the last message must be an assistant answer, not a user message"),
    ([{"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"},
                    {"role": "assistant", "content": "a"}]}],
     "row 1: field 'messages' message 2 is a tool result with no assistant tool call before it"),
    ([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "loss_weight": 0}]}],
     "row 1: field 'messages': no assistant message is trained (each has loss_weight 0)"),
    ([{"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}],
     "row 1: field 'messages': expected a user message before the first trained assistant message (message 2)"),
    ([{"messages": [{"role": "user", "content": "q", "loss_weight": 1}, {"role": "assistant", "content": "a"}]}],
     "row 1: field 'messages' message 1 (user): loss_weight 1 on a user message; only assistant messages"),
    ([{"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "lookup(tent)"}]}],
     "row 1: field 'conversations' message 2 (function_call): not a JSON tool call"),
    ([{"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"},
                         {"from": "gpt", "value": "a"}], "system": "t"}],
     "row 1: both field 'system' and a system message are given; keep one"),
    ([{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "tools": "[{\"x\": 1}]"}],
     "row 1: field 'tools' tool 1 is not a tool schema; expected {name, description, parameters}"),
    ([{"messages": "not json"}], "row 1: field 'messages' is a string but not JSON"),
    ([{"messages": [{"role": "user", "content": "<image>Who?"}, {"role": "assistant", "content": "A cat."}],
       "images": ["cat.jpg"]}], "row 1: field 'images' holds media; kubetune tunes text models"),
    ([{"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "a"},
       "rejected": {"from": "gpt", "value": "b"}}], "row 1: fields 'chosen' and 'rejected' hold a preference pair"),
    ([{"messages": []}], "row 1: field 'messages' is empty; expected a non-empty list of messages"),
])
def test_conversation_rules_fail_with_the_row_and_the_rule(tmp_path, rows, expected):
    assert expected in problems(tmp_path, rows)


def test_a_missing_column_lists_the_columns_that_exist(tmp_path):
    text = problems(tmp_path, [{"conversations": [], "id": 3}], schema="messages")
    assert "row 1: no field 'messages' (schema messages) (the record's columns: conversations, id)" in text
    text = problems(tmp_path, [{"instruction": "q", "answer": "a"}], schema="alpaca")
    assert "row 1: field 'output' is missing or empty; expected a non-empty string (the record's columns: " \
           "instruction, answer)" in text


def test_column_mapping_keys_are_checked_against_the_schema():
    DatasetSpec(train={"uri": "/x"}, schema="sharegpt", column_mapping={"conversations": "c", "roleKey": "r",
                                                                        "toolCallRole": "call"})
    with pytest.raises(ValueError, match="key 'roleKey' is not a field of schema alpaca"):
        DatasetSpec(train={"uri": "/x"}, schema="alpaca", column_mapping={"roleKey": "r"})


def test_conversations_read_the_same_from_csv_cells_and_parquet_structs(tmp_path):
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    turns = [{"from": "human", "value": "hi", "weight": None}, {"from": "gpt", "value": "hello", "weight": 1}]
    pq.write_table(pa.Table.from_pylist([{"conversations": turns, "tools": None}]), tmp_path / "chat.parquet")
    with open(tmp_path / "chat.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerows([["conversations", "tools"], [json.dumps(turns), ""]])
    spec = DatasetSpec(train={"uri": "/x"})
    read = [data.load_examples([(tmp_path / n, n)], spec, data.DataReport()) for n in ("chat.parquet", "chat.csv")]
    assert read[0] == read[1] and summary(read[0][0]) == [("user", "hi", False), ("assistant", "hello", True)]
