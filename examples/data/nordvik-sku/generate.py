"""Generate the Nordvik Outfitters SKU dataset (a fictional company's product codes).

Each record asks for the SKU of a product in a colour and size; the answer is `NV-<product>-<colour>-<size>`
with product and colour codes that exist nowhere but here, so a base model cannot guess them, while the
pattern is regular enough to learn from a few hundred examples. The eval set holds product/colour/size
combinations that never occur in the training set. Run `python generate.py` to rewrite the files; the
output is deterministic.
"""

import json
import random
from pathlib import Path

PRODUCTS = {
    "tent": "KAV", "sleeping bag": "DUN", "rain jacket": "REG", "hiking boots": "FJL",
    "backpack": "RYG", "trekking poles": "STV", "headlamp": "LYS", "water bottle": "FLK",
}
COLOURS = {"red": "RD", "blue": "BL", "green": "GR", "black": "BK", "orange": "OR", "grey": "GY"}
SIZES = {"small": "S", "medium": "M", "large": "L", "extra large": "XL"}
PHRASES = [
    "What is the Nordvik SKU for a {colour} {product} in size {size}?",
    "SKU please: {product}, {colour}, {size}.",
    "A customer wants the {size} {colour} {product}. Which SKU is that?",
    "Look up the item code for our {product} ({colour}, size {size}).",
    "Nordvik code for {colour} {product}, {size}?",
    "I need the SKU of the {product} in {colour}, size {size}.",
]


def record(product: str, colour: str, size: str, phrase: str) -> dict:
    phrase = phrase.format(product=product, colour=colour, size=size)
    return {
        "instruction": phrase,
        "input": "",
        "output": f"NV-{PRODUCTS[product]}-{COLOURS[colour]}-{SIZES[size]}",
    }


def main() -> None:
    rng = random.Random(7)
    combos = [(p, c, s) for p in PRODUCTS for c in COLOURS for s in SIZES]
    rng.shuffle(combos)
    held_out, seen = combos[:40], combos[40:]
    # Two different phrasings of every training combination, so there are no duplicate records.
    train = [record(*combo, phrase) for combo in seen for phrase in rng.sample(PHRASES, 2)]
    rng.shuffle(train)
    evaluation = [record(*combo, rng.choice(PHRASES)) for combo in held_out]
    here = Path(__file__).parent
    for name, rows in (("train.jsonl", train), ("eval.jsonl", evaluation)):
        with open(here / name, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    print(f"{len(train)} train, {len(evaluation)} eval records")


if __name__ == "__main__":
    main()
