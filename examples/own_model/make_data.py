"""Write your own data: 200 chat-message problems in Parquet and 40 GSM8K-style rows in JSONL.

    python make_data.py OUT_DIR

- `train.parquet`: a `prompt` column of chat messages (system + user turn) and an `answer`;
- `test.jsonl`: GSM8K's form, `question` and an `answer` whose text after `####` is the gold
  answer (ngrpo reads both forms; any other column reaches the reward functions).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SYSTEM = "Solve the problem. End with #### and the number."


def problems(num: int, seed: int) -> list[tuple[str, str, str]]:
    """(question, worked steps, answer) for small sums and differences."""
    rng = random.Random(seed)
    out = []
    for _ in range(num):
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        if rng.random() < 0.5:
            out.append((f"Ann has {a} pens and buys {b} more. How many pens?",
                        f"{a} + {b} = {a + b}", str(a + b)))  # fmt: skip
        else:
            a, b = max(a, b), min(a, b)
            out.append((f"Tom has {a} coins and gives away {b}. How many coins?",
                        f"{a} - {b} = {a - b}", str(a - b)))  # fmt: skip
    return out


def main(out_dir: str) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
         "answer": answer}
        for q, _, answer in problems(200, seed=0)
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), out / "train.parquet")
    with (out / "test.jsonl").open("w", encoding="utf-8") as handle:
        for q, steps, answer in problems(40, seed=2):
            handle.write(json.dumps({"question": q, "answer": f"{steps}\n#### {answer}"}) + "\n")
    return out


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else "own_data"))
