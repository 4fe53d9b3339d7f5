"""Prompt rendering and label masking: the loss only ever sees the answer tokens."""

from __future__ import annotations

import pytest

from fixtures.tiny_model import make_tokenizer
from kubetune_api.spec import DatasetSpec
from kubetune_trainer.data import Example
from kubetune_trainer.errors import ConfigError
from kubetune_trainer.prompting import IGNORE, PromptFormatter, length_stats

EXAMPLE = Example.single("SKU for a red tent?", "NV-KAV-RD",
                         fields=(("instruction", "SKU for a red tent?"), ("input", ""), ("output", "NV-KAV-RD")))


def formatter(chat: bool = True, **spec) -> PromptFormatter:
    return PromptFormatter(make_tokenizer(chat_template=chat), DatasetSpec(train={"uri": "/x"}, **spec))


@pytest.mark.parametrize("chat", [True, False])
def test_prompt_tokens_carry_label_minus_100_and_answer_tokens_their_ids(chat):
    fmt = formatter(chat=chat, system_prompt="Answer with the code only.")
    encoded = fmt.encode(EXAMPLE)
    prompt_ids = fmt.prompt_ids(EXAMPLE)
    n = len(prompt_ids)
    assert encoded.input_ids[:n] == prompt_ids
    assert encoded.labels[:n] == [IGNORE] * n
    assert encoded.labels[n:] == encoded.input_ids[n:] and len(encoded.labels) > n
    answer = fmt.tokenizer.decode(encoded.input_ids[n:])
    assert answer.startswith("NV-KAV-RD") and fmt.tokenizer.eos_token in answer
    assert "SKU for a red tent?" in fmt.tokenizer.decode(prompt_ids)
    assert fmt.mode == ("chat" if chat else "alpaca")


def test_chat_prompt_includes_the_system_prompt_and_ends_with_the_assistant_turn():
    prompt, answer = formatter(system_prompt="Be terse.").render(EXAMPLE)
    assert prompt.startswith("<|im_start|>system\nBe terse.<|im_end|>")
    assert prompt.endswith("<|im_start|>assistant\n")
    assert answer == "NV-KAV-RD<|im_end|>\n"


def test_custom_jinja_template_renders_record_fields():
    fmt = formatter(template="custom", custom_template="Q: {{ instruction }}\nA: ")
    prompt, answer = fmt.render(EXAMPLE)
    assert prompt == "Q: SKU for a red tent?\nA: "
    assert answer == "NV-KAV-RD" + fmt.tokenizer.eos_token
    with pytest.raises(ConfigError, match="available variables"):
        formatter(template="custom", custom_template="{{ question }}").render(EXAMPLE)
    with pytest.raises(ConfigError, match="not a valid Jinja template"):
        formatter(template="custom", custom_template="{% if %}")


def test_truncation_is_counted_in_the_length_statistics():
    fmt = formatter(max_seq_length=16)
    long = Example.single("word " * 50, "answer")
    encoded = [fmt.encode(EXAMPLE), fmt.encode(long)]
    assert all(len(e.input_ids) <= 16 for e in encoded)
    stats = length_stats(encoded)
    assert stats["truncated"] == 2 if encoded[0].truncated else stats["truncated"] == 1
    assert stats["max"] > 16 and stats["noAnswerTokens"] >= 1
