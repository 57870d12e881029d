"""The embedded reasoning task: multi-step arithmetic word problems with verifiable answers.

A problem tells a short story about one person and one kind of item, then asks for the final count:

    Mia has seven shells . Mia gets 5 more . Mia drops three . Mia doubles the shells .
    How many shells does Mia have now ?

and its worked solution shows one line of arithmetic per event before the boxed answer:

    <think> 7 + five = 12 . so 12 - 3 = nine . then 9 * 2 = 18 . </think>
    The answer is \\boxed{ 18 } .

**Surface forms.** Equivalent words are interchangeable and drawn at random, independently at every
place, in problems and in worked solutions alike: numbers 0-20 as digits or as words (`7` /
`seven`), the verbs of one kind of event (`finds` / `gets` / `receives` / `wins` / `buys`, and
`loses` / `drops` / `uses` / `sells` / `spends`), the connective that opens each step after the
first (`so` / `thus` / `then`). A model trained on these texts spreads its probability over the
forms and learns near-identical embeddings for them, so that an embedding's nearest neighbours are
its synonyms, as in a real LLM vocabulary (` seven`, `seven`, `7`). `surface_variants` is the table.
The boxed answer is always written in digits (the graders compare numbers; a word inside
`\\boxed{}` would be graded wrong), so only the reasoning varies in form.

Words and numbers are separated by single spaces so that the word-level tokenizer (one token per
word, one token per number 0-50 and per number word) round-trips the text exactly.

Splits (all deterministic from a seed):
- `arith-id`: 2 to 4 events after the start, start value 2-20, amounts 1-10.
- `arith-ood`: the same kinds of events from a larger start value (21-40, so always in digits):
  the arithmetic happens where training data is thin (training stories start at 20 or below and
  reach larger values only after adding or doubling), so the base model is weaker there; disjoint
  from `arith-id` by construction (start value).
- `arith-long`: the second out-of-distribution axis, longer chains than training ever saw: 5-6
  events (training: 2-4) from the in-distribution start values; disjoint from every other split by
  construction (number of events).
- `arith-train`: the in-distribution generator with a different seed stream, minus any problem that
  is a paraphrase of one in `arith-id` or `arith-ood` (same story up to surface forms); used for
  supervised warm-up and RL prompts. (`arith-long` needs no exclusion, and adding it would not
  change a single training problem: its stories are longer than any training story.)

**Canonical form** (`canonicalize`): every word replaced by one representative of its
`surface_variants` class (number words by digits, the add verbs by `finds`, the take-away verbs by
`loses`, the connectives by `so`), so two texts that differ only in rephrasing have the same
canonical form. `ngrpo.evaluation.diagnostics` counts distinct canonical reasoning paths with it.

`sloppy_solution` writes the imperfect teacher's solutions the base model is warmed up on (each
event skipped with some probability): see `ngrpo.models.base_model`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

MAX_VALUE = 50  # every intermediate value stays within 0..MAX_VALUE (one token per number)
WORD_MAX = 20  # numbers 0..WORD_MAX also have a word form
NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
)  # fmt: skip
WORD_PROB = 0.5  # probability that a number 0..WORD_MAX is written as a word

NAMES = ("Tom", "Ann", "Sam", "Mia", "Ben", "Lily", "Max", "Zoe", "Leo", "Ivy", "Noah", "Emma")
ITEMS = (
    "apples",
    "pens",
    "coins",
    "books",
    "cards",
    "stones",
    "shells",
    "stickers",
    "marbles",
    "cookies",
    "flowers",
    "shirts",
)
ADD_VERBS = ("finds", "gets", "receives", "wins", "buys")
SUB_VERBS = ("loses", "drops", "uses", "sells", "spends")
CONNECTIVES = ("so", "thus", "then")
# Vocabulary of the fixed words in templates (besides names, items, verbs and connectives).
TEMPLATE_WORDS = (
    "has",
    "more",
    "doubles",
    "the",
    "How",
    "many",
    "does",
    "have",
    "now",
    "?",
    ".",
    "The",
    "answer",
    "is",
    "\\boxed{",
    "}",
    "+",
    "-",
    "*",
    "=",
)

Event = tuple[str, int]  # ("add", amount) | ("sub", amount) | ("double", 2)


@dataclass(frozen=True)
class Problem:
    """One task item, in the shape of the shipped benchmark files (plus a worked solution).

    `start` and `events` are the story behind the text (for `sloppy_solution` and paraphrase
    checks); they are not exported."""

    problem: str
    answer: str
    solution: str
    start: int = field(default=0, repr=False)
    events: tuple[Event, ...] = field(default=(), repr=False)
    key: tuple = field(default=(), repr=False, compare=False)  # the story up to surface forms

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
    "arith-id": SplitSpec(2, 4, (2, 20), (1, 10), seed_offset=1_000, size=500),
    "arith-ood": SplitSpec(2, 4, (21, 40), (1, 10), seed_offset=2_000, size=500),
    "arith-train": SplitSpec(2, 4, (2, 20), (1, 10), seed_offset=3_000, size=20_000),
    "arith-long": SplitSpec(5, 6, (2, 20), (1, 10), seed_offset=4_000, size=500),
}
EVAL_SPLITS = ("arith-id", "arith-ood", "arith-long")
# The evaluation splits `arith-train` excludes paraphrases of (fixed: the shipped base model was
# warmed up on this training split; `arith-long` cannot collide with a 2-4 event story anyway).
TRAIN_EXCLUDES = ("arith-id", "arith-ood")

_VARIANT_GROUPS: tuple[tuple[str, ...], ...] = (
    *((str(n), word) for n, word in enumerate(NUMBER_WORDS)), ADD_VERBS, SUB_VERBS, CONNECTIVES,
)  # fmt: skip
_VARIANTS: dict[str, frozenset[str]] = {
    word: frozenset(group) for group in _VARIANT_GROUPS for word in group
}


def surface_variants(token: str) -> frozenset[str]:
    """The words interchangeable with `token` in this task, `token` itself included (`"7"` ->
    `{"7", "seven"}`, `"gets"` -> the five add verbs); `{token}` for a word without variants."""
    return _VARIANTS.get(token, frozenset((token,)))


# The canonical word of each variant class: digits for numbers, the first verb / connective.
_CANONICAL: dict[str, str] = {word: group[0] for group in _VARIANT_GROUPS for word in group}


def canonical_word(token: str) -> str:
    """The representative of `token`'s surface-variant class (`"seven"` -> `"7"`, `"wins"` ->
    `"finds"`, `"then"` -> `"so"`); `token` itself when it has no variants."""
    return _CANONICAL.get(token, token)


def canonicalize(text: str) -> str:
    """`text` with every whitespace-separated word in its canonical form, joined by single spaces:
    two texts that differ only in surface forms (`7 + five = 12 . then` / `seven + 5 = 12 . so`)
    map to the same string."""
    return " ".join(canonical_word(word) for word in text.split())


def variant_classes(vocab: dict[str, int], size: int) -> list[int]:
    """A class id per token id (0..size-1): the tokens of one `surface_variants` class share an id;
    every other token has its own (its token id). `vocab` maps words to ids, as a tokenizer's."""
    classes = list(range(size))
    for group in _VARIANT_GROUPS:
        ids = [vocab[w] for w in group if w in vocab and vocab[w] < size]
        for token_id in ids:
            classes[token_id] = min(ids)
    return classes


def number_text(value: int, rng: random.Random) -> str:
    """`value` as digits, or (0..WORD_MAX, with probability WORD_PROB) as a word."""
    if value <= WORD_MAX and rng.random() < WORD_PROB:
        return NUMBER_WORDS[value]
    return str(value)


def apply_event(value: int, event: Event) -> int | None:
    """The count after `event`, or None when it would leave 0..MAX_VALUE (or double nothing)."""
    kind, amount = event
    if kind == "add":
        result = value + amount
    elif kind == "sub":
        result = value - amount
    else:
        result = 2 * value if value > 0 else -1
    return result if 0 <= result <= MAX_VALUE else None


def _draw_story(rng: random.Random, spec: SplitSpec) -> tuple[str, str, int, tuple[Event, ...]]:
    """Name, item, start value and events; events are re-drawn until every value is in range."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = start = rng.randint(*spec.start_range)
    events: list[Event] = []
    num_events = rng.randint(spec.min_events, spec.max_events)
    while len(events) < num_events:
        kind = rng.choice(("add", "add", "sub", "sub", "double"))
        event = (kind, 2 if kind == "double" else rng.randint(*spec.amount_range))
        after = apply_event(value, event)
        if after is not None:
            events.append(event)
            value = after
    return name, item, start, tuple(events)


def _problem_text(rng: random.Random, name: str, item: str, start: int, events) -> str:
    sentences = [f"{name} has {number_text(start, rng)} {item} ."]
    for kind, amount in events:
        if kind == "double":
            sentences.append(f"{name} doubles the {item} .")
        elif kind == "add":
            sentences.append(f"{name} {rng.choice(ADD_VERBS)} {number_text(amount, rng)} more .")
        else:
            sentences.append(f"{name} {rng.choice(SUB_VERBS)} {number_text(amount, rng)} .")
    sentences.append(f"How many {item} does {name} have now ?")
    return " ".join(sentences)


_OPS = {"add": "+", "sub": "-", "double": "*"}


def solution_text(rng: random.Random, start: int, events) -> tuple[str, int]:
    """The worked solution of the chain `events` from `start` (random surface forms) and its result.

    Every event must keep the value within 0..MAX_VALUE."""
    value, steps = start, []
    for i, event in enumerate(events):
        after = apply_event(value, event)
        assert after is not None, (value, event)
        opener = "" if i == 0 else f"{rng.choice(CONNECTIVES)} "
        a, b, c = (number_text(x, rng) for x in (value, event[1], after))
        steps.append(f"{opener}{a} {_OPS[event[0]]} {b} = {c} .")
        value = after
    text = f"<think> {' '.join(steps)} </think> The answer is \\boxed{{ {value} }} ."
    return text, value


def _one_problem(rng: random.Random, spec: SplitSpec) -> Problem:
    name, item, start, events = _draw_story(rng, spec)
    problem = _problem_text(rng, name, item, start, events)
    solution, value = solution_text(rng, start, events)
    return Problem(problem, str(value), solution, start, events, (name, item, start, events))


def sloppy_solution(problem: Problem, rng: random.Random, skip_rate: float) -> str:
    """A worked solution by an imperfect teacher: each event is skipped with probability
    `skip_rate` (the chain goes on from the previous value, so the boxed answer is wrong); an
    event that the skips made impossible (a value out of range) is skipped too; at least one step
    stays."""
    value, kept = problem.start, []
    for event in problem.events:
        after = apply_event(value, event)
        if after is None or rng.random() < skip_rate:
            continue
        kept.append(event)
        value = after
    if not kept:
        kept = [problem.events[0]]
    return solution_text(rng, problem.start, kept)[0]


def split_names() -> tuple[str, ...]:
    return tuple(SPLITS)


def generate(split: str, num: int | None = None, seed: int = 0) -> list[Problem]:
    """The first `num` distinct problems of `split` for `seed` (deterministic).

    Distinct means distinct stories (name, item, start, events), whatever the surface forms;
    `arith-train` never contains a paraphrase of a problem of `arith-id` / `arith-ood` for `seed`
    (nor of `arith-long`, whose stories are longer).
    """
    from ngrpo.utils.errors import NgrpoError

    if split not in SPLITS:
        raise NgrpoError(f"unknown task split {split!r}; choose one of {', '.join(SPLITS)}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise NgrpoError(f"seed must be a non-negative integer, got {seed!r}")
    spec = SPLITS[split]
    num = spec.size if num is None else num
    if num < 0:
        raise NgrpoError(f"number of problems must be >= 0, got {num}")
    excluded: set[tuple] = set()
    if split == "arith-train":
        for name in TRAIN_EXCLUDES:
            excluded.update(p.key for p in generate(name, seed=seed))
    rng = random.Random(seed * 1_000_003 + spec.seed_offset)
    seen: set[tuple] = set()
    problems: list[Problem] = []
    while len(problems) < num:
        problem = _one_problem(rng, spec)
        if problem.key in seen or problem.key in excluded:
            continue
        seen.add(problem.key)
        problems.append(problem)
    return problems


def vocabulary_words() -> list[str]:
    """Every word the generator can write, numbers included (for building the tokenizer)."""
    words: list[str] = [str(n) for n in range(MAX_VALUE + 1)] + list(NUMBER_WORDS)
    words += list(NAMES) + list(ITEMS) + list(ADD_VERBS) + list(SUB_VERBS) + list(CONNECTIVES)
    words += list(TEMPLATE_WORDS)
    return list(dict.fromkeys(words))
