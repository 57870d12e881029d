"""The embedded reasoning task: multi-step arithmetic word problems with verifiable answers.

A problem tells a short story about one person and one kind of item, then asks for the final count:

    Mia has 7 shells . Mia finds 5 more . Mia gives away 3 . Mia doubles the shells .
    How many shells does Mia have now ?

and its worked solution shows one line of arithmetic per event before the boxed answer:

    <think> 7 + 5 = 12 . 12 - 3 = 9 . 9 * 2 = 18 . </think> The answer is \\boxed{ 18 } .

Words and numbers are separated by single spaces so that the word-level tokenizer (one token per
word, one token per number 0-99) round-trips the text exactly.

Splits (all deterministic from a seed):
- `arith-id`: 2 to 4 events after the start, start value 2-20, amounts 1-12.
- `arith-ood`: 2 or 3 events starting from a larger value (21-45): the same kinds of events, but
  the arithmetic happens where training data is thin, so the base model is much weaker there;
  disjoint from `arith-id` by construction (start value).
- `arith-train`: the in-distribution generator with a different seed stream, minus any problem that
  also appears in the evaluation splits; used for supervised warm-up and RL prompts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MAX_VALUE = 99  # every intermediate value stays within 0..MAX_VALUE (one token per number)

NAMES = ("Tom", "Ann", "Sam", "Mia", "Ben", "Lily", "Max", "Zoe", "Leo", "Ivy", "Noah", "Emma")
ITEMS = (
    "apples", "pens", "coins", "books", "cards", "stones",
    "shells", "stickers", "marbles", "cookies", "flowers", "shirts",
)
ADD_VERBS = ("buys", "finds", "gets", "wins", "receives")
SUB_VERBS = ("gives away", "loses", "sells", "drops", "uses")
# Vocabulary of the fixed words in templates (besides names, items and verbs).
TEMPLATE_WORDS = (
    "has", "more", "doubles", "the", "How", "many", "does", "have", "now", "?", ".",
    "The", "answer", "is", "\\boxed{", "}", "+", "-", "*", "=",
)


@dataclass(frozen=True)
class Problem:
    """One task item, in the shape of the shipped benchmark files (plus a worked solution)."""

    problem: str
    answer: str
    solution: str

    def to_json(self) -> dict[str, str]:
        return {"problem": self.problem, "answer": self.answer, "solution": self.solution}


@dataclass(frozen=True)
class SplitSpec:
    min_events: int
    max_events: int
    start_range: tuple[int, int]
    amount_range: tuple[int, int]
    seed_offset: int
    size: int  # default number of items; `generate(..., num=...)` overrides


SPLITS: dict[str, SplitSpec] = {
    "arith-id": SplitSpec(2, 4, (2, 20), (1, 12), seed_offset=1_000, size=500),
    "arith-ood": SplitSpec(2, 3, (21, 45), (1, 12), seed_offset=2_000, size=500),
    "arith-train": SplitSpec(2, 4, (2, 20), (1, 12), seed_offset=3_000, size=20_000),
}
EVAL_SPLITS = ("arith-id", "arith-ood")


def _one_problem(rng: random.Random, spec: SplitSpec) -> Problem:
    """Draw one problem; events are re-drawn until every intermediate value is in range."""
    name = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    value = rng.randint(*spec.start_range)
    sentences = [f"{name} has {value} {item} ."]
    steps: list[str] = []
    num_events = rng.randint(spec.min_events, spec.max_events)
    while len(steps) < num_events:
        kind = rng.choice(("add", "add", "sub", "sub", "double"))
        if kind == "double":
            if 2 * value > MAX_VALUE or value == 0:
                continue
            sentences.append(f"{name} doubles the {item} .")
            steps.append(f"{value} * 2 = {2 * value} .")
            value *= 2
            continue
        amount = rng.randint(*spec.amount_range)
        if kind == "add":
            if value + amount > MAX_VALUE:
                continue
            verb = rng.choice(ADD_VERBS)
            sentences.append(f"{name} {verb} {amount} more .")
            steps.append(f"{value} + {amount} = {value + amount} .")
            value += amount
        else:
            if amount > value:
                continue
            verb = rng.choice(SUB_VERBS)
            sentences.append(f"{name} {verb} {amount} .")
            steps.append(f"{value} - {amount} = {value - amount} .")
            value -= amount
    sentences.append(f"How many {item} does {name} have now ?")
    answer = str(value)
    solution = f"<think> {' '.join(steps)} </think> The answer is \\boxed{{ {answer} }} ."
    return Problem(problem=" ".join(sentences), answer=answer, solution=solution)


def split_names() -> tuple[str, ...]:
    return tuple(SPLITS)


def generate(split: str, num: int | None = None, seed: int = 0) -> list[Problem]:
    """The first `num` distinct problems of `split` for `seed` (deterministic).

    `arith-train` never contains a problem of the evaluation splits for the same seed.
    """
    from ngrpo.errors import NgrpoError

    if split not in SPLITS:
        raise NgrpoError(f"unknown task split {split!r}; choose one of {', '.join(SPLITS)}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise NgrpoError(f"seed must be a non-negative integer, got {seed!r}")
    spec = SPLITS[split]
    num = spec.size if num is None else num
    if num < 0:
        raise NgrpoError(f"number of problems must be >= 0, got {num}")
    excluded: set[str] = set()
    if split == "arith-train":
        for name in EVAL_SPLITS:
            excluded.update(p.problem for p in generate(name, seed=seed))
    rng = random.Random(seed * 1_000_003 + spec.seed_offset)
    seen: set[str] = set()
    problems: list[Problem] = []
    while len(problems) < num:
        problem = _one_problem(rng, spec)
        if problem.problem in seen or problem.problem in excluded:
            continue
        seen.add(problem.problem)
        problems.append(problem)
    return problems


def vocabulary_words() -> list[str]:
    """Every word the generator can write, numbers included (for building the tokenizer)."""
    words: list[str] = [str(n) for n in range(MAX_VALUE + 1)]
    words += list(NAMES) + list(ITEMS)
    for verb in ADD_VERBS + SUB_VERBS:
        words += verb.split()
    words += list(TEMPLATE_WORDS)
    return list(dict.fromkeys(words))
