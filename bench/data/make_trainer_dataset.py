"""Generate the trainer-throughput benchmark dataset: bench/data/nordvik-support/{train,eval}.jsonl.

    .venv/bin/python bench/data/make_trainer_dataset.py [--train 400] [--eval 48] [--seed 7]

Instruction/response pairs (alpaca schema) from a fictional outdoor shop's support desk, with a long-tailed
spread of lengths like real instruction data: most are short questions with short answers, some ask for
descriptions or summaries, a few are long order lists, packing lists or troubleshooting guides. With
SmolLM2's chat template and a one-line system prompt, examples run from about 40 to about 500 tokens
(median near 110). The answers follow fixed facts (a catalogue of codes, prices, materials, policies), so
a model can learn them and a held-out loss moves with training. Deterministic for a given seed; the
committed files were made with the defaults. It prints token-length statistics when the bundled SmolLM2
tokenizer is at hand.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "nordvik-support"

PRODUCTS = {  # name: (code, price in EUR, material, weight in grams)
    "tent": ("KAV", 349, "ripstop nylon", 2100), "boots": ("FJL", 189, "full-grain leather", 1350),
    "backpack": ("RYG", 149, "recycled polyester", 1200), "lamp": ("LYS", 39, "anodised aluminium", 90),
    "sleeping bag": ("SOV", 229, "responsibly sourced down", 1100), "jacket": ("STM", 279, "three-layer shell", 480),
    "trekking poles": ("STV", 89, "carbon fibre", 420), "water bottle": ("FLK", 25, "stainless steel", 310),
    "stove": ("KOK", 69, "titanium", 85), "gloves": ("HND", 45, "merino wool", 70),
    "hammock": ("HNG", 79, "parachute nylon", 540), "compass": ("NRD", 35, "brass", 60),
}
COLOURS = {"red": "RD", "blue": "BL", "green": "GR", "black": "BK", "orange": "OR", "grey": "GY"}
SIZES = {"small": "S", "medium": "M", "large": "L", "extra large": "XL"}
ACTIVITIES = ["a weekend in the mountains", "a week of hut-to-hut trekking", "winter camping", "a canoe trip",
              "a summer festival", "a coastal walk", "a family camping holiday", "an alpine climb"]
PROBLEMS = {
    "stove": ["the flame is weak", "it will not light", "it smells of gas"],
    "lamp": ["it flickers", "it does not charge", "the beam is dim"],
    "tent": ["a pole section is bent", "the zip is stuck", "water comes in at the seams"],
    "jacket": ["it wets out in rain", "the hood cord is loose", "the zip is stiff"],
    "boots": ["they rub at the heel", "the sole squeaks", "the laces keep loosening"],
}
STEPS = {
    "stove": ["Check that the canister is screwed on fully and is not empty.", "Clean the jet with the pin from the repair kit.",
              "Shelter the stove from wind before lighting it.", "Warm the canister in your jacket on cold mornings.",
              "Inspect the O-ring and replace it if it is cracked.", "Test the stove outdoors at full flow for one minute."],
    "lamp": ["Charge the lamp for four hours with the supplied cable.", "Clean the contacts with a dry cloth.",
             "Switch the lamp to boost mode and back to normal.", "Update the firmware from the Nordvik app.",
             "Store the lamp at room temperature overnight.", "Try a different USB-C power adapter."],
    "tent": ["Pitch the tent in the garden and check each pole section.", "Use the splint from the repair kit on the bent section.",
             "Run a candle stub along the zip teeth.", "Reseal the seams with the Nordvik seam sealer.",
             "Let the sealer cure for twenty-four hours.", "Re-tension the guy lines after the first night."],
    "jacket": ["Wash the jacket with technical wash at thirty degrees.", "Tumble dry on low heat to restore the DWR.",
               "Re-proof with spray-on DWR if beading does not return.", "Replace the hood cord toggle from the spares kit.",
               "Rub the zip with the zip lubricant stick.", "Hang the jacket to dry away from direct heat."],
    "boots": ["Wear thicker merino socks for the first walks.", "Lace with a heel-lock knot.", "Apply leather balm to soften the heel cup.",
              "Check that the insole lies flat.", "Walk short distances for the first week.", "Bring them to a store for stretching."],
}
POLICY = ("Nordvik accepts returns within 60 days with the receipt. Items must be clean and unused outdoors. "
          "Refunds go to the original payment method within five working days. Repairs under the three-year "
          "warranty are free; shipping to the repair centre in Tromsø is paid by Nordvik.")


def sku(product: str, colour: str, size: str) -> str:
    return f"NV-{PRODUCTS[product][0]}-{COLOURS[colour]}-{SIZES[size]}"


def pick(rng: random.Random) -> tuple[str, str, str]:
    return rng.choice(list(PRODUCTS)), rng.choice(list(COLOURS)), rng.choice(list(SIZES))


def long_tail(rng: random.Random, median: float, sigma: float, low: int, high: int) -> int:
    """An integer from a log-normal distribution, clipped to [low, high]."""
    return max(low, min(high, round(math.exp(rng.gauss(math.log(median), sigma)))))


def q_sku(rng):
    p, c, s = pick(rng)
    asks = [f"What is the SKU for a {c} {p} in size {s}?", f"Item code for the {p}, {c}, {s}?",
            f"I need the Nordvik code of the {c} {p} ({s})."]
    return rng.choice(asks), "", sku(p, c, s)


def q_price(rng):
    p = rng.choice(list(PRODUCTS))
    code, price, material, weight = PRODUCTS[p]
    return (f"How much does the Nordvik {p} cost and what does it weigh?", "",
            f"The {p} ({code}) costs {price} EUR and weighs {weight} g.")


def q_describe(rng):
    p, c, s = pick(rng)
    code, price, material, weight = PRODUCTS[p]
    extra = rng.sample(["It is made in Norway.", "It comes with a three-year warranty.",
                        "Spare parts are sold separately.", "It packs into its own stuff sack.",
                        "It is tested in the Lofoten winter.", "It is PFC-free."], k=rng.randint(1, 4))
    text = (f"The Nordvik {p} in {c} (SKU {sku(p, c, s)}) is made of {material} and weighs {weight} g in size "
            f"{s}. It costs {price} EUR. " + " ".join(extra))
    return f"Write a short product description for the {c} {p} in size {s}.", "", text


def q_order(rng):
    n = long_tail(rng, 3, 0.9, 1, 13)
    lines, total = [], 0
    items = []
    for _ in range(n):
        p, c, s = pick(rng)
        qty = rng.randint(1, 4)
        items.append(f"{qty} x {c} {p} ({s})")
        price = PRODUCTS[p][1] * qty
        total += price
        lines.append(f"- {sku(p, c, s)}: {qty} x {PRODUCTS[p][1]} EUR = {price} EUR")
    shipping = 0 if total >= 100 else 9
    answer = "\n".join(lines) + f"\nShipping: {shipping} EUR\nTotal: {total + shipping} EUR"
    return "Turn this order into SKU lines with prices and a total.", "; ".join(items), answer


def q_troubleshoot(rng):
    p = rng.choice(list(PROBLEMS))
    problem = rng.choice(PROBLEMS[p])
    k = long_tail(rng, 3, 0.5, 2, 6)
    steps = STEPS[p][:k]
    body = "\n".join(f"{i}. {step}" for i, step in enumerate(steps, start=1))
    tail = " If that does not help, send it to us under the warranty." if k >= 4 else ""
    return (f"My Nordvik {p} has a problem: {problem}. What should I do?", "",
            f"Sorry to hear that {problem}. Please try these steps:\n{body}\n{tail.strip()}".strip())


def q_packing(rng):
    trip = rng.choice(ACTIVITIES)
    n = long_tail(rng, 4, 0.7, 2, 12)
    chosen = rng.sample(list(PRODUCTS), k=min(n, len(PRODUCTS)))
    lines = []
    for p in chosen:
        c, s = rng.choice(list(COLOURS)), rng.choice(list(SIZES))
        code, price, material, weight = PRODUCTS[p]
        lines.append(f"- {p.capitalize()} ({sku(p, c, s)}), {material}, {weight} g, {price} EUR")
    weight = sum(PRODUCTS[p][3] for p in chosen)
    return (f"Put together a Nordvik packing list for {trip}.", "",
            "\n".join(lines) + f"\nTotal weight: {weight} g.")


def q_policy(rng):
    p = rng.choice(list(PRODUCTS))
    asks = [f"Can I return my {p}?", f"What is your warranty on the {p}?", f"My {p} broke after a year. Is it covered?"]
    return rng.choice(asks), "", POLICY


def q_compare(rng):
    a, b = rng.sample(list(PRODUCTS), k=2)
    ca, pa, ma, wa = PRODUCTS[a]
    cb, pb, mb, wb = PRODUCTS[b]
    lighter = a if wa < wb else b
    cheaper = a if pa < pb else b
    return (f"Compare the Nordvik {a} and {b}.", "",
            f"The {a} ({ca}) is {ma}, {wa} g, {pa} EUR. The {b} ({cb}) is {mb}, {wb} g, {pb} EUR. "
            f"The {lighter} is lighter and the {cheaper} is cheaper.")


# (kind, generator, weight): short questions dominate, long lists are the tail.
KINDS = [("sku", q_sku, 0.26), ("price", q_price, 0.12), ("policy", q_policy, 0.08), ("compare", q_compare, 0.1),
         ("describe", q_describe, 0.16), ("troubleshoot", q_troubleshoot, 0.1), ("packing", q_packing, 0.08),
         ("order", q_order, 0.1)]


def generate(n: int, rng: random.Random, seen: set) -> list[dict]:
    rows = []
    while len(rows) < n:
        kind, make, _ = rng.choices(KINDS, weights=[w for *_, w in KINDS])[0]
        instruction, extra, output = make(rng)
        key = (instruction, extra)
        if key in seen:
            continue
        seen.add(key)
        rows.append({"instruction": instruction, "input": extra, "output": output, "kind": kind})
    return rows


def token_stats(paths: list[Path]) -> None:
    try:
        from transformers import AutoTokenizer

        from kubetune_trainer.bundled import bundled_model
    except ImportError:
        return
    tokenizer = AutoTokenizer.from_pretrained(bundled_model("bundled://smollm2-135m-instruct"))
    for path in paths:
        lengths = []
        for line in path.read_text().splitlines():
            row = json.loads(line)
            user = row["instruction"] + (f"\n\n{row['input']}" if row["input"] else "")
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user},
                        {"role": "assistant", "content": row["output"]}]
            lengths.append(len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]))
        lengths.sort()
        q = [lengths[int(f * (len(lengths) - 1))] for f in (0, 0.25, 0.5, 0.75, 0.9, 0.99, 1)]
        print(f"{path.name}: {len(lengths)} examples, tokens min/p25/p50/p75/p90/p99/max {q}, "
              f"mean {sum(lengths) / len(lengths):.0f}")


SYSTEM = "You are the support assistant of Nordvik Outfitters."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--eval", type=int, default=48)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng, seen = random.Random(args.seed), set()
    OUT.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, n in (("train", args.train), ("eval", args.eval)):
        path = OUT / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in generate(n, rng, seen)))
        paths.append(path)
    token_stats(paths)


if __name__ == "__main__":
    main()
