"""Turning examples into token ids: the model's chat template, the Alpaca template or a custom Jinja template.

An example is rendered as text segments, each trained or not; each segment is tokenized on its own and the
ids are concatenated, so the text before an answer has the same ids in training as the generation prompt
has at inference, and every token of an untrained segment has the label -100.

* chat: the whole conversation through the model's chat template. Each trained assistant turn is a segment
  of its own: the text the template writes for it after the generation prompt (its content, tool calls and
  end-of-turn marker). The segments are cut where `apply_chat_template(messages[:i],
  add_generation_prompt=True)` and `apply_chat_template(messages[:i + 1])` end, which must both be prefixes
  of the whole rendering; a conversation for which they are not fails, naming its row.
* alpaca and custom: one prompt and one answer, the example's last trained assistant turn.

Tools and tool calls go to the chat template when it renders them (checked once per tokenizer with a probe
conversation). Otherwise they are written as text in the Hermes convention (see docs/data.md): the tool
schemas in <tools></tools> in the system message, each call as {"name", "arguments"} in
<tool_call></tool_call> in the assistant's text, the results in <tool_response></tool_response> in a user
message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .batching import IGNORE
from .data import Example
from .errors import ConfigError, DataError

ALPACA = (
    "Below is an instruction that describes a task{with_input}. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
)
TOOLS_PREAMBLE = (
    "You can call the tools described by the JSON schemas inside <tools></tools>:\n<tools>\n{tools}\n</tools>\n"
    "To call a tool, reply with a JSON object holding its name and arguments inside <tool_call></tool_call>:\n"
    '<tool_call>\n{{"name": <tool name>, "arguments": <arguments object>}}\n</tool_call>'
)
_PROBE = "kubetune_probe"


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


def _template_errors() -> tuple[type[Exception], ...]:
    from jinja2 import TemplateError

    # what a chat template raises on a conversation it cannot render (raise_exception, None + str, ...)
    return TemplateError, TypeError, ValueError, KeyError, IndexError


def renders_tools(tokenizer) -> bool:
    """Whether the tokenizer's chat template writes out both the tool schemas and an assistant's tool call."""
    tool = {"type": "function", "function": {"name": f"{_PROBE}_tool", "description": "probe",
                                             "parameters": {"type": "object", "properties": {}}}}
    call = {"type": "function", "function": {"name": f"{_PROBE}_call", "arguments": {}}}
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    try:
        text = tokenizer.apply_chat_template(messages, tools=[tool], tokenize=False)
    except _template_errors():
        return False
    return f"{_PROBE}_tool" in text and f"{_PROBE}_call" in text


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
        self.native_tools = mode == "chat" and renders_tools(tokenizer)

    # ---- text ----------------------------------------------------------------------------------------
    def segments(self, example: Example) -> list[tuple[str, bool]]:
        """The example as (text, trained) segments in order, up to the end of its last trained turn."""
        if self.mode == "chat":
            return self._chat_segments(example)
        if self.mode == "custom":
            return [(self._custom_prompt(example), False), (example.response + self.eos, True)]
        return [(alpaca_prompt(example), False), (example.response + self.eos, True)]

    def render(self, example: Example) -> tuple[str, str]:
        """(prompt text, answer text) of the example's answer (its last trained turn); the answer includes
        the end-of-turn marker the model must learn."""
        segments = self.segments(example)
        return "".join(text for text, _ in segments[:-1]), segments[-1][0]

    def _custom_prompt(self, example: Example) -> str:
        before = example.turns[: example.answer_index]
        values = {**example.field_map, "system_prompt": self.system_prompt or "",
                  "tools": json.loads(example.tools) if example.tools else [],
                  "messages": [{"role": t.role, "content": t.content, **({"tool_calls": t.calls} if t.calls else {})}
                               for t in before]}
        from jinja2 import TemplateError

        try:
            return self.custom.render(**values)
        except (TemplateError, TypeError, ValueError) as err:
            raise ConfigError(f"dataset.customTemplate failed to render a record: {err}; available "
                              f"variables: {', '.join(sorted(values))}") from None

    def _chat_segments(self, example: Example) -> list[tuple[str, bool]]:
        messages, trained = self._chat_messages(example)
        tools = json.loads(example.tools) if example.tools and self.native_tools else None

        def apply(msgs: list[dict], generation_prompt: bool = False) -> str:
            try:
                return self.tokenizer.apply_chat_template(msgs, tools=tools, tokenize=False,
                                                          add_generation_prompt=generation_prompt)
            except _template_errors() as err:
                raise DataError(f"{example.source or 'a record'}: the model's chat template cannot render this "
                                f"conversation: {err}") from None

        full = apply(messages)
        segments, done = [], 0
        for i in trained:
            before, through = apply(messages[:i], True), apply(messages[: i + 1])
            if len(before) < done or not through.startswith(before) or not full.startswith(through) \
                    or messages[i]["content"].strip() not in through[len(before):]:
                return self._unstable(example, messages, i, before, apply)
            segments += [(full[done:len(before)], False), (full[len(before):len(through)], True)]
            done = len(through)
        return segments

    def _unstable(self, example: Example, messages: list[dict], i: int, before: str, apply) -> list:
        """A template whose rendering of a turn changes once later turns follow. A plain final answer is
        still trained as its text and the end-of-sequence token (as before multi-turn support)."""
        turn = example.turns[example.answer_index]
        if i == len(messages) - 1 and len([t for t in example.turns if t.train]) == 1 and not turn.calls:
            return [(before, False), (turn.content + self.eos, True)]
        answer = messages[i]["content"]
        raise DataError(f"{example.source or 'a record'}: the model's chat template renders this conversation "
                        f"differently turn by turn (the text up to the assistant message {answer[:40]!r} changes "
                        "once later messages follow), so its assistant turns cannot be cut out for training; set "
                        "dataset.maskHistory: true to train only the last one, or use dataset.template: custom")

    def _chat_messages(self, example: Example) -> tuple[list[dict], list[int]]:
        """The messages handed to the chat template, and the indexes of the trained ones among them."""
        messages: list[dict] = []
        trained: list[int] = []
        turns = list(example.turns)
        if self.system_prompt and not any(t.role == "system" for t in turns):
            messages.append({"role": "system", "content": self.system_prompt})
        preamble = TOOLS_PREAMBLE.format(tools="\n".join(json.dumps(t, ensure_ascii=False)
                                                         for t in json.loads(example.tools))) \
            if example.tools and not self.native_tools else ""
        for turn in turns:
            if turn.role == "tool" and not self.native_tools:
                response = f"<tool_response>\n{turn.content}\n</tool_response>"
                if messages and messages[-1].get("tool_results"):
                    messages[-1]["content"] += "\n" + response
                else:
                    messages.append({"role": "user", "content": response, "tool_results": True})
                continue
            message = {"role": turn.role, "content": turn.content}
            if turn.role == "assistant" and turn.calls:
                if self.native_tools:
                    message["tool_calls"] = [{"type": "function", **({"id": c["id"]} if "id" in c else {}),
                                              "function": {"name": c["name"], "arguments": c["arguments"]}}
                                             for c in turn.calls]
                else:
                    message["content"] = turn.text
            if turn.role == "tool":
                message.update({k: v for k, v in (("name", turn.name), ("tool_call_id", turn.tool_call_id)) if v})
            if turn.train:
                trained.append(len(messages))
            messages.append(message)
        for message in messages:
            message.pop("tool_results", None)
        if preamble:
            if messages and messages[0]["role"] == "system":
                messages[0]["content"] += "\n\n" + preamble
            else:
                messages.insert(0, {"role": "system", "content": preamble})
                trained = [i + 1 for i in trained]
        return messages, trained

    # ---- tokens --------------------------------------------------------------------------------------
    def _ids(self, text: str, first: bool) -> list[int]:
        # Chat templates write their own special tokens; the other templates get the tokenizer's BOS.
        add_special = first and self.mode != "chat"
        return self.tokenizer(text, add_special_tokens=add_special)["input_ids"]

    def encode(self, example: Example) -> Encoded:
        ids, labels = [], []
        for i, (text, trained) in enumerate(self.segments(example)):
            piece = self._ids(text, first=i == 0)
            ids += piece
            labels += piece if trained else [IGNORE] * len(piece)
        truncated = len(ids) > self.max_len
        return Encoded(ids[: self.max_len], labels[: self.max_len], truncated, len(ids))

    def encode_all(self, examples: list[Example]) -> list[Encoded]:
        """Every example encoded; the records the chat template cannot render fail together."""
        encoded, problems = [], []
        for example in examples:
            try:
                encoded.append(self.encode(example))
            except DataError as err:
                problems.append(err.message)
        if problems:
            raise DataError(f"{len(problems)} record(s) cannot be rendered with the model's chat template "
                            f"(dataset.template: {self.mode})", problems)
        return encoded

    def prompt_ids(self, example: Example) -> list[int]:
        """The generation prompt of the example's answer: the ids of every segment before it, as in training."""
        ids: list[int] = []
        for i, (text, _) in enumerate(self.segments(example)[:-1]):
            ids += self._ids(text, first=i == 0)
        return ids

    def answer_ids(self, example: Example) -> list[int]:
        """The ids of the example's answer as trained (with its end-of-turn marker)."""
        return self._ids(self.segments(example)[-1][0], first=False)

    def reference(self, example: Example) -> str:
        """The answer as generation metrics compare it: its tokens decoded as generations are."""
        answer = self.segments(example)[-1][0]
        return self.tokenizer.decode(self._ids(answer, first=False), skip_special_tokens=True).strip()


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
