"""Write train.jsonl for the keyword task (deterministic): `python make_data.py [N] [SEED]`.

Each row is a chat conversation in the `prompt` column (a system turn with the word budget, a user
turn naming the keyword) plus the two columns the reward functions read: `keyword` and
`max_words`. Every word comes from the embedded tokenizer's vocabulary (names, items, numbers,
template words), so the toy model can read the whole prompt.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

NAMES = ("Tom", "Ann", "Sam", "Mia", "Ben", "Lily", "Max", "Zoe", "Leo", "Ivy", "Noah", "Emma")
ITEMS = ("apples", "pens", "coins", "books", "cards", "stones", "shells", "stickers", "marbles",
         "cookies", "flowers", "shirts")  # fmt: skip


def rows(num: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(num):
        name, item, count = rng.choice(NAMES), rng.choice(ITEMS), rng.randint(2, 20)
        budget = rng.choice((3, 4, 5))
        out.append({
            "id": f"keyword/{i}",
            "prompt": [
                {"role": "system", "content": f"{budget} ."},
                {"role": "user", "content": f"{name} has {count} {item} . {item} ?"},
            ],
            "keyword": item,
            "max_words": budget,
        })  # fmt: skip
    return out


if __name__ == "__main__":
    num = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    path = Path(__file__).with_name("train.jsonl")
    path.write_text("".join(json.dumps(row) + "\n" for row in rows(num, seed)), encoding="utf-8")
    print(path)
