"""Loss masks of whole conversations, token by token on SmolLM2's real chat template: every assistant turn
(tool calls included) is trained with its end-of-turn marker, and nothing else is."""

from __future__ import annotations

import json

import pytest

from fixtures.tiny_model import make_tokenizer
from kubetune_api.spec import DatasetSpec
from kubetune_trainer.data import to_example
from kubetune_trainer.errors import DataError
from kubetune_trainer.prompting import IGNORE, PromptFormatter

TOOLS = [{"name": "lookup_sku", "description": "SKU of a product",
          "parameters": {"type": "object", "properties": {"product": {"type": "string"}}}}]
CALL = {"name": "lookup_sku", "arguments": {"product": "tent"}}
SHAREGPT = {"conversations": [
    {"from": "human", "value": "SKU of the tent?"},
    {"from": "function_call", "value": json.dumps(CALL)},
    {"from": "observation", "value": '{"sku": "NV-KAV"}'},
    {"from": "gpt", "value": "It is NV-KAV."},
    {"from": "human", "value": "Thanks!"},
    {"from": "gpt", "value": "You're welcome."},
], "system": "You are a shop assistant.", "tools": json.dumps(TOOLS)}
CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"},
                     {"role": "assistant", "content": "6"}]}


@pytest.fixture(scope="module")
def smollm2(cache_dir):
    from transformers import AutoTokenizer

    from kubetune_trainer.bundled import bundled_model

    return AutoTokenizer.from_pretrained(bundled_model("bundled://smollm2-135m-instruct"))


def example(record: dict, schema: str = "auto", row: int = 1, **spec):
    schema = schema if schema != "auto" else ("sharegpt" if "conversations" in record else "messages")
    found, problems = to_example(record, schema, {}, f"train.jsonl: row {row}", spec.get("mask_history", False))
    assert not problems, problems
    return found


def formatter(tokenizer, **spec) -> PromptFormatter:
    return PromptFormatter(tokenizer, DatasetSpec(train={"uri": "/x"}, max_seq_length=4096, **spec))


def trained_runs(tokenizer, encoded) -> list[str]:
    """The trained stretches of an encoded example, decoded; and a check that trained labels are the ids."""
    runs, current = [], []
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        if label != IGNORE:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return [tokenizer.decode(run) for run in runs + ([current] if current else [])]


def test_every_assistant_turn_and_its_end_marker_is_trained_and_nothing_else(smollm2):
    pieces = [  # SmolLM2's ChatML, written out: (text, trained)
        ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n", False),
        ("4<|im_end|>\n", True),
        ("<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n", False),
        ("6<|im_end|>\n", True),
    ]
    ids = [smollm2(text, add_special_tokens=False)["input_ids"] for text, _ in pieces]
    expected_labels = [t for (_, trained), part in zip(pieces, ids, strict=True)
                       for t in (part if trained else [IGNORE] * len(part))]
    encoded = formatter(smollm2).encode(example(CHAT))
    assert encoded.input_ids == [t for part in ids for t in part]
    assert encoded.input_ids == smollm2("".join(t for t, _ in pieces), add_special_tokens=False)["input_ids"]
    assert encoded.labels == expected_labels
    trained = [t for t, lab in zip(encoded.input_ids, encoded.labels, strict=True) if lab != IGNORE]
    assert smollm2.convert_ids_to_tokens(trained) == ["4", "<|im_end|>", "Ċ", "6", "<|im_end|>", "Ċ"]


def test_tool_calls_and_answers_are_trained_tools_system_and_tool_results_are_not(smollm2):
    fmt = formatter(smollm2)
    assert fmt.mode == "chat" and not fmt.native_tools, "SmolLM2's template has no tool support: the fallback"
    encoded = fmt.encode(example(SHAREGPT))
    call = '<tool_call>\n{"name": "lookup_sku", "arguments": {"product": "tent"}}\n</tool_call>'
    assert trained_runs(smollm2, encoded) == [f"{call}<|im_end|>\n", "It is NV-KAV.<|im_end|>\n",
                                              "You're welcome.<|im_end|>\n"]
    text = smollm2.decode(encoded.input_ids)
    assert text.startswith("<|im_start|>system\nYou are a shop assistant.\n\nYou can call the tools described")
    assert f"<tools>\n{json.dumps({'type': 'function', 'function': TOOLS[0]})}\n</tools>" in text
    assert '<|im_start|>user\n<tool_response>\n{"sku": "NV-KAV"}\n</tool_response><|im_end|>\n' in text
    assert text == smollm2.decode(smollm2(text, add_special_tokens=False)["input_ids"])
    # each trained stretch starts right after the generation prompt
    starts = [i for i, lab in enumerate(encoded.labels) if lab != IGNORE and encoded.labels[i - 1] == IGNORE]
    assert len(starts) == 3
    assert all(smollm2.decode(encoded.input_ids[:i]).endswith("<|im_end|>\n<|im_start|>assistant\n") for i in starts)


def test_mask_history_and_loss_weight_leave_turns_as_context(smollm2):
    fmt = formatter(smollm2)
    assert trained_runs(smollm2, fmt.encode(example(SHAREGPT, mask_history=True))) == ["You're welcome.<|im_end|>\n"]
    weighted = {"messages": [{"role": "user", "content": "SKU of the tent?"},
                             {"role": "assistant", "content": None, "loss_weight": 0,
                              "tool_calls": [{"type": "function", "function": CALL}]},
                             {"role": "tool", "content": "NV-KAV"},
                             {"role": "assistant", "content": "It is NV-KAV."}]}
    encoded = fmt.encode(example(weighted))
    assert trained_runs(smollm2, encoded) == ["It is NV-KAV.<|im_end|>\n"]
    assert "<tool_call>" in smollm2.decode(encoded.input_ids), "the untrained call is still context"


def test_the_default_and_the_configured_system_prompt_are_context(smollm2):
    plain = example({"messages": CHAT["messages"][1:3]})
    text = smollm2.decode(formatter(smollm2).encode(plain).input_ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")  # the template's own
    encoded = formatter(smollm2, system_prompt="Answer with digits.").encode(plain)
    assert smollm2.decode(encoded.input_ids).startswith("<|im_start|>system\nAnswer with digits.<|im_end|>")
    assert trained_runs(smollm2, encoded) == ["4<|im_end|>\n"]


def test_generation_prompts_and_references_are_the_last_trained_turn(smollm2):
    fmt = formatter(smollm2)
    conversation = example(SHAREGPT)
    encoded, prompt = fmt.encode(conversation), fmt.prompt_ids(conversation)
    assert encoded.input_ids[: len(prompt)] == prompt
    assert smollm2.decode(prompt).endswith("<|im_start|>user\nThanks!<|im_end|>\n<|im_start|>assistant\n")
    assert fmt.reference(conversation) == "You're welcome."
    calling = example({"conversations": SHAREGPT["conversations"][:2], "tools": SHAREGPT["tools"]})
    assert fmt.reference(calling) == json.dumps(CALL).join(["<tool_call>\n", "\n</tool_call>"])


TOOL_TEMPLATE = """\
{%- if tools %}<|im_start|>system
TOOLS {% for t in tools %}{{ t.function.name }} {% endfor %}<|im_end|>
{% endif %}
{%- for m in messages %}
{%- if m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant
{% for c in m.tool_calls %}CALL {{ c.function.name }} {{ c.function.arguments | tojson }}{% endfor %}<|im_end|>
{% else %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


def test_a_template_with_tool_support_renders_the_tools_and_calls_itself():
    tokenizer = make_tokenizer()
    tokenizer.chat_template = TOOL_TEMPLATE
    fmt = formatter(tokenizer)
    assert fmt.native_tools
    encoded = fmt.encode(example(SHAREGPT))
    text = tokenizer.decode(encoded.input_ids)
    assert text.startswith("<|im_start|>system\nTOOLS lookup_sku <|im_end|>\n") and "<tools>" not in text
    assert "<|im_start|>tool\n{\"sku\": \"NV-KAV\"}<|im_end|>" in text
    assert trained_runs(tokenizer, encoded) == ['CALL lookup_sku {"product": "tent"}<|im_end|>\n',
                                                "It is NV-KAV.<|im_end|>\n", "You're welcome.<|im_end|>\n"]


def test_records_the_template_cannot_render_fail_together_with_their_rows():
    tokenizer = make_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}{% if m.role == 'system' %}"
                               "{{ raise_exception('System role not supported') }}{% endif %}"
                               "{{ m.role + ': ' + m.content + '\n' }}{% endfor %}")
    fmt = formatter(tokenizer)
    rows = [example(CHAT, row=2), example({"messages": CHAT["messages"][1:]}, row=3), example(CHAT, row=7)]
    with pytest.raises(DataError) as err:
        fmt.encode_all(rows)
    assert err.value.message.startswith("2 record(s) cannot be rendered with the model's chat template")
    assert "train.jsonl: row 2: the model's chat template cannot render this conversation: System role not " \
           "supported" in err.value.message and "row 7" in err.value.message and "row 3" not in err.value.message


def test_a_template_that_rewrites_past_turns_fails_the_record_unless_only_the_last_turn_is_trained():
    tokenizer = make_tokenizer()
    tokenizer.chat_template = (  # earlier answers are shortened once a later one follows
        "{% for m in messages %}<|im_start|>{{ m.role }}\n"
        "{{ '...' if m.role == 'assistant' and not loop.last else m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(DataError, match="row 1: the model's chat template renders this conversation differently "
                                        "turn by turn .* set dataset.maskHistory: true"):
        formatter(tokenizer).encode(example(CHAT))
    encoded = formatter(tokenizer).encode(example(CHAT, mask_history=True))
    assert trained_runs(tokenizer, encoded) == ["6<|im_end|>\n"]
