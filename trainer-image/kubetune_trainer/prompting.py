"""Turning examples into token ids: chat template, Alpaca template or a custom Jinja template.

The prompt and the answer are tokenized separately and concatenated, so the same prompt ids are used in
training and in generation, and the labels of every prompt token are -100 (loss on the answer only).
"""

from __future__ import annotations

from dataclasses import dataclass

from .data import Example
from .errors import ConfigError

ALPACA = (
    "Below is an instruction that describes a task{with_input}. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
)
IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool
    length: int  # tokens before truncation


def compile_custom(source: str):
    """A sandboxed Jinja template; a syntax error is a config error naming the field."""
    from jinja2 import StrictUndefined, TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)
    try:
        return env.from_string(source)
    except TemplateSyntaxError as err:
        raise ConfigError(f"dataset.customTemplate is not a valid Jinja template: {err.message} "
                          f"(line {err.lineno})") from None


def alpaca_prompt(example: Example) -> str:
    fields = example.field_map
    instruction = fields.get("instruction") or fields.get("prompt") or example.user_text
    extra = fields.get("input", "")
    return ALPACA.format(
        with_input=", paired with an input that provides further context" if extra else "",
        instruction=instruction, input_block=f"### Input:\n{extra}\n\n" if extra else "",
    )


class PromptFormatter:
    """Renders and tokenizes examples for one tokenizer and one dataset spec."""

    def __init__(self, tokenizer, dataset_spec):
        self.tokenizer = tokenizer
        self.max_len = dataset_spec.max_seq_length
        self.system_prompt = dataset_spec.system_prompt
        mode = dataset_spec.template
        if mode == "auto":
            mode = "chat" if getattr(tokenizer, "chat_template", None) else "alpaca"
        if mode == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ConfigError("dataset.template is chat but the model's tokenizer has no chat template; "
                              "use alpaca or custom")
        self.mode = mode
        self.custom = compile_custom(dataset_spec.custom_template) if mode == "custom" else None
        self.eos = tokenizer.eos_token or ""

    def render(self, example: Example) -> tuple[str, str]:
        """(prompt text, answer text); the answer includes the end-of-turn marker the model must learn."""
        if self.mode == "chat":
            return self._render_chat(example)
        if self.mode == "custom":
            values = {**example.field_map, "system_prompt": self.system_prompt or "",
                      "messages": [{"role": r, "content": c} for r, c in example.messages]}
            from jinja2 import TemplateError

            try:
                prompt = self.custom.render(**values)
            except (TemplateError, TypeError, ValueError) as err:
                raise ConfigError(f"dataset.customTemplate failed to render a record: {err}; available "
                                  f"variables: {', '.join(sorted(values))}") from None
            return prompt, example.response + self.eos
        return alpaca_prompt(example), example.response + self.eos

    def _render_chat(self, example: Example) -> tuple[str, str]:
        messages = [{"role": r, "content": c} for r, c in example.messages]
        if self.system_prompt and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        full = self.tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": example.response}], tokenize=False)
        if full.startswith(prompt) and example.response in full[len(prompt):]:
            return prompt, full[len(prompt):]
        return prompt, example.response + self.eos

    def prompt_ids(self, example: Example) -> list[int]:
        prompt, _ = self.render(example)
        return self._ids(prompt, first=True)

    def _ids(self, text: str, first: bool) -> list[int]:
        # Chat templates write their own special tokens; the other templates get the tokenizer's BOS.
        add_special = first and self.mode != "chat"
        return self.tokenizer(text, add_special_tokens=add_special)["input_ids"]

    def encode(self, example: Example) -> Encoded:
        prompt, answer = self.render(example)
        prompt_ids = self._ids(prompt, first=True)
        answer_ids = self._ids(answer, first=False)
        ids = prompt_ids + answer_ids
        labels = [IGNORE] * len(prompt_ids) + answer_ids
        truncated = len(ids) > self.max_len
        return Encoded(ids[: self.max_len], labels[: self.max_len], truncated, len(ids))


def length_stats(encoded: list[Encoded]) -> dict:
    """Token-length statistics and the number of truncated examples, for the data report."""
    lengths = sorted(e.length for e in encoded)
    if not lengths:
        return {"examples": 0}

    def pct(q: float) -> int:
        return lengths[min(len(lengths) - 1, int(q * len(lengths)))]

    return {
        "examples": len(lengths), "min": lengths[0], "mean": round(sum(lengths) / len(lengths), 1),
        "p50": pct(0.5), "p95": pct(0.95), "max": lengths[-1],
        "truncated": sum(e.truncated for e in encoded),
        "noAnswerTokens": sum(all(t == IGNORE for t in e.labels) for e in encoded),
    }
