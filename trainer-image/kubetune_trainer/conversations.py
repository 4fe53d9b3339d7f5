"""Chat records into turns: roles, text parts, tool calls, tool results, tools and loss weights.

Two layouts carry conversations: `messages` (OpenAI style: role/content, `tool_calls` on assistant messages,
`tool` messages with the results) and `sharegpt` (a `conversations` list of from/value turns: human, gpt,
system, function_call, observation). Both may carry a `tools` column (a list of tool schemas, or that list
as a JSON string) and a `system` column. Both are read by the same code: the keys inside a message are
found per message (role or from, content or value) unless columnMapping names them, and the role names of
both layouts are accepted. Pure and tokenizer-free: every problem names the record, the 1-based message and
what is accepted. docs/data.md describes the formats.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

# Role names accepted per role; columnMapping's `<role>Role` key replaces the defaults of that role.
ROLE_NAMES = {
    "system": ("system",),
    "user": ("user", "human"),
    "assistant": ("assistant", "gpt"),
    "tool": ("tool", "observation"),
    "toolCall": ("function_call",),  # ShareGPT: an assistant turn whose value is the tool call
}
MAPPING_KEYS = {role: f"{role}Role" for role in ROLE_NAMES}
TEXT_PARTS = "text parts ({type: text, text: ...} or {type: text, value: ...})"
MEDIA_COLUMNS = ("images", "videos", "audios")  # LLaMA-Factory's multimodal records


@dataclass(frozen=True)
class Turn:
    """One message of a conversation, normalised."""

    role: str  # system, user, assistant or tool
    content: str = ""
    tool_calls: str = ""  # assistant: JSON list of {"name", "arguments"(, "id")}; "" when none
    train: bool = False  # the loss covers this turn's tokens (assistant turns only)
    name: str = ""  # tool results: the tool's name, when the record gives it
    tool_call_id: str = ""

    @property
    def calls(self) -> list[dict]:
        return json.loads(self.tool_calls) if self.tool_calls else []

    @property
    def text(self) -> str:
        """The turn as plain text: its content, then each tool call as a JSON object in <tool_call> tags
        (the fallback form for chat templates without tool support, and the generation reference)."""
        blocks = [f"<tool_call>\n{json.dumps({'name': c['name'], 'arguments': c['arguments']}, ensure_ascii=False)}"
                  "\n</tool_call>" for c in self.calls]
        return "\n".join(([self.content] if self.content else []) + blocks)


class _Keys:
    """How one dataset spells messages: the role and content keys and the role names."""

    def __init__(self, mapping: dict[str, str]):
        self.role_key, self.content_key = mapping.get("roleKey"), mapping.get("contentKey")
        self.roles: dict[str, str] = {}
        for role, defaults in ROLE_NAMES.items():
            if MAPPING_KEYS[role] not in mapping:
                self.roles.update(dict.fromkeys(defaults, role))
        for role, key in MAPPING_KEYS.items():  # the user's names win over a default spelled the same
            if key in mapping:
                self.roles[mapping[key]] = role

    def of(self, msg: dict) -> tuple[str, str]:
        role = self.role_key or ("role" if "role" in msg else "from" if "from" in msg else "role")
        content = self.content_key or ("content" if "content" in msg else "value" if "value" in msg else "content")
        return role, content

    def accepted(self) -> str:
        return ", ".join(self.roles)


def parse_conversation(record: dict, column: str, mapping: dict[str, str], where: str,
                       mask_history: bool) -> tuple[tuple[Turn, ...], str, list[str]]:
    """(turns, tools as a JSON list or "", problems) of one record whose conversation is in `column`."""
    media = [c for c in MEDIA_COLUMNS if record.get(c)]
    if media:
        return (), "", [f"{where}: field {media[0]!r} holds media; kubetune tunes text models, so a record with "
                        "images, video or audio cannot be trained on: remove the column and the placeholders "
                        "(<image>) from the text to train on the text alone"]
    if "chosen" in record and "rejected" in record:
        return (), "", [f"{where}: fields 'chosen' and 'rejected' hold a preference pair (DPO data); kubetune "
                        "fine-tunes on conversations and their answers: make the chosen answer the last "
                        "assistant message and drop 'rejected'"]
    value = record.get(column)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            return (), "", [f"{where}: field {column!r} is a string but not JSON ({err.msg}); expected a list of "
                            "messages"]
    if not isinstance(value, list) or not value:
        got = "empty" if value == [] else "null" if value is None else f"a {type(value).__name__}"
        return (), "", [f"{where}: field {column!r} is {got}; expected a non-empty list of messages"]
    keys = _Keys(mapping)
    turns, weights, problems = [], [], []
    for n, msg in enumerate(value, start=1):
        turn, weight, found = _message(msg, f"{where}: field {column!r} message {n}", keys)
        problems += found
        if turn is not None:
            turns.append(turn)
            weights.append(weight)
    tools, found = _tools(record, mapping.get("tools", "tools"), where)
    problems += found
    system_column = mapping.get("system", "system")
    system = record.get(system_column)
    if system not in (None, "") and not isinstance(system, str):
        problems.append(f"{where}: field {system_column!r} is a {type(system).__name__}; expected a string")
    elif system and turns and turns[0].role == "system":
        problems.append(f"{where}: both field {system_column!r} and a system message are given; keep one")
    if problems or (problems := _structure(turns, weights, f"{where}: field {column!r}")):
        return (), "", problems
    trained = [i for i, t in enumerate(turns) if t.role == "assistant" and weights[i] != 0]
    if mask_history:
        trained = trained[-1:]
    head = (Turn("system", system),) if system else ()
    return head + tuple(replace(t, train=i in trained) for i, t in enumerate(turns)), tools, []


def _message(msg: object, at: str, keys: _Keys) -> tuple[Turn | None, float | None, list[str]]:
    if not isinstance(msg, dict):
        return None, None, [f"{at} is a {type(msg).__name__}; expected an object with a role and content"]
    role_key, content_key = keys.of(msg)
    raw = msg.get(role_key)
    if raw is None:
        return None, None, [f"{at} has no {role_key!r} key (its keys: {', '.join(map(str, msg)) or 'none'}); "
                            "set dataset.columnMapping.roleKey to the key that holds the role"]
    role = keys.roles.get(raw) if isinstance(raw, str) else None
    if role is None:
        return None, None, [f"{at} has role {raw!r}; accepted roles: {keys.accepted()}; map other role names "
                            "with dataset.columnMapping (" + ", ".join(MAPPING_KEYS.values()) + ")"]
    problems: list[str] = []
    content, calls = "", []
    value = msg.get(content_key)
    if role == "toolCall":  # ShareGPT's function_call turn: its value is the call
        role, calls = "assistant", _calls(value, f"{at} ({raw})", problems)
    else:
        content, calls = _content(value, f"{at} ({raw})", content_key, role, problems)
    if role == "assistant" and msg.get("tool_calls") is not None:
        calls += _calls(msg["tool_calls"], f"{at} (assistant) tool_calls", problems)
    elif msg.get("tool_calls") is not None:
        problems.append(f"{at} ({raw}) has tool_calls; only assistant messages call tools")
    weight = msg.get("loss_weight", msg.get("weight"))
    if weight is not None and (not isinstance(weight, int | float) or weight not in (0, 1)):
        problems.append(f"{at} ({raw}): loss_weight {weight!r} is not accepted; use 0 (not trained) or 1 (trained)")
    elif weight == 1 and role != "assistant":
        problems.append(f"{at} ({raw}): loss_weight 1 on a {role} message; only assistant messages are trained")
    if problems:
        return None, None, problems
    turn = Turn(role, content, json.dumps(calls, ensure_ascii=False) if calls else "",
                name=_text_or_empty(msg.get("name")), tool_call_id=_text_or_empty(msg.get("tool_call_id")))
    return turn, weight, []


def _text_or_empty(value: object) -> str:
    return value if isinstance(value, str) else ""


def _content(value: object, at: str, key: str, role: str, problems: list[str]) -> tuple[str, list[dict]]:
    """The text of a message's content (a string or a list of parts joined in order) and any tool_call
    parts (LLaMA-Factory's messages carry tool calls that way)."""
    if value is None or isinstance(value, str):
        return value or "", []
    if not isinstance(value, list):
        problems.append(f"{at}: {key!r} is a {type(value).__name__}; expected a string or a list of {TEXT_PARTS}")
        return "", []
    texts, calls = [], []
    for j, part in enumerate(value, start=1):
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str):
            problems.append(f"{at}: content part {j} is {_describe(part)}; expected one of {TEXT_PARTS}")
        elif kind == "text":
            text = next((part[k] for k in ("text", "value") if isinstance(part.get(k), str)), None)
            if text is None:
                problems.append(f"{at}: content part {j} (type text) has no string 'text' or 'value'")
            else:
                texts.append(text)
        elif kind == "tool_call" and role == "assistant":
            calls += _calls(part.get("value", part.get("text")), f"{at} content part {j} (tool_call)", problems)
        else:
            problems.append(f"{at}: content part {j} has type {kind!r}; only text parts can be trained on "
                            "(kubetune tunes text models; and tool_call parts in assistant messages)")
    return "".join(texts), calls


def _describe(value: object) -> str:
    return f"an object without a string 'type' ({', '.join(map(str, value))})" if isinstance(value, dict) \
        else f"a {type(value).__name__}"


def _calls(value: object, at: str, problems: list[str]) -> list[dict]:
    """Tool calls as [{"name", "arguments": {...}(, "id")}] from an OpenAI tool_calls list, one call or a
    list of calls as {name, arguments}, or either as a JSON string (ShareGPT's function_call value)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            problems.append(f"{at}: not a JSON tool call ({err.msg}); expected "
                            '{"name": ..., "arguments": {...}} or a list of them')
            return []
    items = value if isinstance(value, list) else [value]
    calls = []
    for k, item in enumerate(items, start=1):
        where = at + (f" call {k}" if len(items) > 1 else "")
        function = item.get("function") if isinstance(item, dict) and isinstance(item.get("function"), dict) else item
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            problems.append(f"{where}: expected a tool call with a name, "
                            '{"name": ..., "arguments": {...}} or {"type": "function", "function": {...}}')
            continue
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError:
                arguments = None
        if not isinstance(arguments, dict):
            problems.append(f"{where}: the arguments of {name!r} are not a JSON object")
            continue
        call = {"name": name, "arguments": arguments}
        if isinstance(item.get("id"), str):
            call["id"] = item["id"]
        calls.append(call)
    return calls


def _tools(record: dict, column: str, where: str) -> tuple[str, list[str]]:
    """The record's tool schemas as a JSON list in the form chat templates take
    ({"type": "function", "function": {name, description, parameters}}), or ""."""
    value = record.get(column)
    if value in (None, ""):
        return "", []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            return "", [f"{where}: field {column!r} is not valid JSON ({err.msg}); expected a list of tool schemas"]
    items = value if isinstance(value, list) else [value]
    tools, problems = [], []
    for k, tool in enumerate(items, start=1):
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict) and tool["function"].get("name"):
            tools.append({**tool, "type": tool.get("type") or "function"})
        elif isinstance(tool, dict) and isinstance(tool.get("name"), str) and tool["name"]:
            tools.append({"type": "function", "function": tool})
        else:
            problems.append(f"{where}: field {column!r} tool {k} is not a tool schema; expected "
                            "{name, description, parameters} or {type: function, function: {name, ...}}")
    return (json.dumps(tools, ensure_ascii=False) if tools else ""), problems


def _structure(turns: list[Turn], weights: list, at: str) -> list[str]:
    """Rules on the order of the turns, checked once every message is valid on its own."""
    problems = []
    for i, turn in enumerate(turns):
        if turn.role == "assistant" and not turn.content.strip() and not turn.tool_calls:
            problems.append(f"{at} message {i + 1} (assistant) is empty: no content and no tool calls")
        if turn.role == "tool" and not any(t.tool_calls for t in turns[:i]):
            problems.append(f"{at} message {i + 1} is a tool result with no assistant tool call before it")
    if turns[-1].role != "assistant":
        problems.append(f"{at}: the last message must be an assistant answer, not a {turns[-1].role} message")
    trained = [i for i, t in enumerate(turns) if t.role == "assistant" and weights[i] != 0]
    if not trained:
        problems.append(f"{at}: no assistant message is trained (each has loss_weight 0)")
    elif not any(t.role == "user" for t in turns[: trained[0]]):
        problems.append(f"{at}: expected a user message before the first trained assistant message "
                        f"(message {trained[0] + 1})")
    return problems
