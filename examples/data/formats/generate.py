"""Small example files, one per record layout kubetune reads, all from the fictional Nordvik Outfitters shop.

    python generate.py      # rewrites the files below (deterministic)

formats/ (16 records each; docs/data.md shows one record of each):
  alpaca.json               JSON array of {instruction, input, output} (as LLaMA-Factory's alpaca demos)
  prompt-completion.jsonl   {prompt, completion}
  messages.jsonl            OpenAI-style multi-turn chat with a system message
  messages-parts.jsonl      content as typed parts ({type: text, value|text}), per-message loss_weight,
                            tool calls as tool_call parts (LLaMA-Factory's messages layout)
  messages-tools.jsonl      OpenAI tool calling: tools, assistant tool_calls, tool messages
  sharegpt.json             ShareGPT: conversations of human/gpt/function_call/observation turns, a tools
                            column as a JSON string and a system column (as LLaMA-Factory's glaive demo)

nordvik-tools/ (train 16, eval 8; product/colour/size combinations of eval never occur in train):
  two-tool conversations in the messages-tools layout, for `kubetune run examples/smollm2-tools.yaml`.
"""

import json
import random
from pathlib import Path

PRODUCTS = {"tent": "KAV", "sleeping bag": "DUN", "rain jacket": "REG", "hiking boots": "FJL",
            "backpack": "RYG", "headlamp": "LYS"}
COLOURS = {"red": "RD", "blue": "BL", "green": "GR", "black": "BK"}
SIZES = {"small": "S", "medium": "M", "large": "L"}
SYSTEM = "You are the order assistant of Nordvik Outfitters."
TOOLS = [
    {"name": "lookup_sku", "description": "SKU of a product", "parameters": {"type": "object", "properties": {
        "product": {"type": "string"}, "colour": {"type": "string"}, "size": {"type": "string"}}}},
    {"name": "check_stock", "description": "Items in stock", "parameters": {"type": "object", "properties": {
        "sku": {"type": "string"}}}},
]
ASK = ["What is the SKU of the {colour} {product} in {size}?", "SKU for a {size} {colour} {product}, please.",
       "Which code does the {product} have in {colour}, size {size}?"]
STOCK = ["Is the {size} {colour} {product} in stock?", "Do you have the {colour} {product} in {size} in stock?",
         "How many {colour} {product}s in {size} are left?"]


def sku(product: str, colour: str, size: str) -> str:
    return f"NV-{PRODUCTS[product]}-{COLOURS[colour]}-{SIZES[size]}"


def openai_tools() -> list[dict]:
    return [{"type": "function", "function": tool} for tool in TOOLS]


def tool_conversation(rng: random.Random, product: str, colour: str, size: str) -> dict:
    """The steps of one order conversation, independent of the layout."""
    code, count = sku(product, colour, size), rng.choice([0, 2, 5, 11])
    return {
        "ask": rng.choice(ASK).format(product=product, colour=colour, size=size),
        "lookup": {"product": product, "colour": colour, "size": size}, "sku": code,
        "found": f"The SKU is {code}.", "count": count,
        "stock_question": rng.choice(STOCK).format(product=product, colour=colour, size=size),
        "stock_answer": f"Yes, {count} in stock." if count else f"Sorry, {code} is out of stock.",
    }


def as_openai(c: dict, i: int) -> dict:
    def call(n: int, name: str, args: dict) -> dict:  # OpenAI: arguments as a JSON string
        return {"id": f"call_{i}_{n}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}

    return {"messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": c["ask"]},
        {"role": "assistant", "content": None, "tool_calls": [call(1, "lookup_sku", c["lookup"])]},
        {"role": "tool", "tool_call_id": f"call_{i}_1", "name": "lookup_sku", "content": json.dumps({"sku": c["sku"]})},
        {"role": "assistant", "content": c["found"]},
        {"role": "user", "content": c["stock_question"]},
        {"role": "assistant", "content": None, "tool_calls": [call(2, "check_stock", {"sku": c["sku"]})]},
        {"role": "tool", "tool_call_id": f"call_{i}_2", "name": "check_stock",
         "content": json.dumps({"in_stock": c["count"]})},
        {"role": "assistant", "content": c["stock_answer"]},
    ], "tools": openai_tools()}


def as_sharegpt(c: dict) -> dict:
    def function_call(name: str, args: dict) -> str:
        return json.dumps({"name": name, "arguments": args})

    return {"conversations": [
        {"from": "human", "value": c["ask"]},
        {"from": "function_call", "value": function_call("lookup_sku", c["lookup"])},
        {"from": "observation", "value": json.dumps({"sku": c["sku"]})},
        {"from": "gpt", "value": c["found"]},
        {"from": "human", "value": c["stock_question"]},
        {"from": "function_call", "value": function_call("check_stock", {"sku": c["sku"]})},
        {"from": "observation", "value": json.dumps({"in_stock": c["count"]})},
        {"from": "gpt", "value": c["stock_answer"]},
    ], "system": SYSTEM, "tools": json.dumps(TOOLS)}


def as_parts(c: dict, with_tools: bool) -> dict:
    """LLaMA-Factory's messages layout: typed parts, a loss_weight on every message; the first answer is
    context only (loss_weight 0)."""
    def text(value: str, key: str = "value") -> list[dict]:
        return [{"type": "text", key: value}]

    if not with_tools:
        return {"messages": [
            {"role": "system", "content": text(SYSTEM), "loss_weight": 0.0},
            {"role": "user", "content": [{"type": "text", "value": "Hello! "}, {"type": "text", "text": c["ask"]}],
             "loss_weight": 0.0},
            {"role": "assistant", "content": text(c["found"]), "loss_weight": 0.0},
            {"role": "user", "content": text(f"Thanks. And the {c['lookup']['product']} in black?", "text"),
             "loss_weight": 0.0},
            {"role": "assistant", "content": text(f"That is {sku(c['lookup']['product'], 'black', c['lookup']['size'])}."),
             "loss_weight": 1.0},
        ]}
    return {"messages": [
        {"role": "user", "content": text(c["ask"]), "loss_weight": 0.0},
        {"role": "assistant", "content": [{"type": "tool_call", "value": json.dumps(
            {"name": "lookup_sku", "arguments": c["lookup"]})}], "loss_weight": 1.0},
        {"role": "tool", "content": text(json.dumps({"sku": c["sku"]})), "loss_weight": 0.0},
        {"role": "assistant", "content": text(c["found"]), "loss_weight": 1.0},
    ], "tools": openai_tools()}


def as_chat(c: dict, other: str) -> dict:
    product, size = c["lookup"]["product"], c["lookup"]["size"]
    return {"messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": c["ask"]},
        {"role": "assistant", "content": c["found"]},
        {"role": "user", "content": f"And in {other}?"},
        {"role": "assistant", "content": f"The {other} one is {sku(product, other, size)}."},
    ]}


def write(path: Path, rows: list[dict], array: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        if array:
            json.dump(rows, f, indent=2)
            f.write("\n")
        else:
            f.writelines(json.dumps(row) + "\n" for row in rows)


def main() -> None:
    rng = random.Random(11)
    combos = [(p, c, s) for p in PRODUCTS for c in COLOURS for s in SIZES]
    rng.shuffle(combos)
    here = Path(__file__).parent
    small = [(combo, tool_conversation(rng, *combo)) for combo in combos[:16]]
    write(here / "alpaca.json", [
        {"instruction": c["ask"], "input": "", "output": c["sku"]} if i % 2 else
        {"instruction": "Give the Nordvik SKU of this item.", "input": ", ".join(combo), "output": c["sku"]}
        for i, (combo, c) in enumerate(small)], array=True)
    write(here / "prompt-completion.jsonl", [{"prompt": c["ask"], "completion": c["sku"]} for _, c in small])
    write(here / "messages.jsonl", [as_chat(c, rng.choice([k for k in COLOURS if k != combo[1]]))
                                    for combo, c in small])
    write(here / "messages-parts.jsonl", [as_parts(c, with_tools=i % 2 == 1) for i, (_, c) in enumerate(small)])
    write(here / "messages-tools.jsonl", [as_openai(c, i) for i, (_, c) in enumerate(small)])
    write(here / "sharegpt.json", [as_sharegpt(c) for _, c in small], array=True)
    tools = [as_openai(tool_conversation(rng, *combo), i) for i, combo in enumerate(combos[:24])]
    write(here.parent / "nordvik-tools" / "train.jsonl", tools[:16])
    write(here.parent / "nordvik-tools" / "eval.jsonl", tools[16:])
    print("wrote", ", ".join(p.name for p in sorted(here.iterdir()) if p.suffix != ".py"), "and nordvik-tools/")


if __name__ == "__main__":
    main()
