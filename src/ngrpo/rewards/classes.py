"""Equivalence classes of sampled answers, for majority voting (`maj@n`).

`0.5`, `1/2` and `\\frac{1}{2}` are one answer to a grader, so they must be one vote. For each
problem, the `MAX_DISTINCT` most frequent distinct answers (after text normalisation; ties by first
appearance) are compared pairwise with the grader's own equivalence: screening and the quick check
in this process, math-verify in the worker pool for the rest, all pairs of all problems in one
batch under the pool's per-pair deadline (a pair that times out counts as different). Equivalent
answers are merged (transitively) and every answer is replaced by the key of its class's first
appearance. Answers beyond the `MAX_DISTINCT` most frequent keep their own text key: they are too
rare to win a vote unless several of them are equivalent to each other, which is then missed —
the price of a bound of `MAX_DISTINCT·(MAX_DISTINCT−1)/2` comparisons per problem.

Kinds other than `math` / `math_lenient` compare normalised text (their grader's own rule).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from ngrpo.rewards.equivalence import normalize_gold, normalize_text, quick_equal, screen_answer
from ngrpo.rewards.pool import GradingPool, default_pool

MAX_DISTINCT = 8
SYMBOLIC_KINDS = ("math", "math_lenient")


def _find(parent: dict[str, str], key: str) -> str:
    while parent[key] != key:
        parent[key] = parent[parent[key]]
        key = parent[key]
    return key


def _candidates(keys: Sequence[str | None]) -> list[str]:
    counts = Counter(key for key in keys if key is not None)
    first = {key: i for i, key in reversed(list(enumerate(keys))) if key is not None}
    return sorted(counts, key=lambda k: (-counts[k], first[k]))[:MAX_DISTINCT]


def _decide(a: str, b: str) -> bool | None:
    """In-process verdict on two answers, or None to ask math-verify."""
    gold = normalize_gold(b)
    if screen_answer(a, gold) is not None or screen_answer(b, normalize_gold(a)) is not None:
        return False
    return quick_equal(a, gold)


def equivalence_classes(
    answers: Sequence[Sequence[str | None]],
    kind: str = "math",
    pool: GradingPool | None = None,
) -> list[list[str | None]]:
    """Per problem, each answer replaced by its equivalence-class key (None stays None)."""
    keys = [[None if a is None else normalize_text(a) for a in row] for row in answers]
    if kind not in SYMBOLIC_KINDS:
        return keys
    parents: list[dict[str, str]] = []
    undecided: list[tuple[int, str, str]] = []  # (problem, a, b)
    for p, row in enumerate(keys):
        candidates = _candidates(row)
        parent = {key: key for key in candidates}
        parents.append(parent)
        for i, a in enumerate(candidates):
            for b in candidates[i + 1 :]:
                verdict = _decide(a, b)
                if verdict is None:
                    undecided.append((p, a, b))
                elif verdict:
                    parent[_find(parent, b)] = _find(parent, a)
    if undecided:
        pairs = [(a, normalize_gold(b).text) for _, a, b in undecided]
        for (p, a, b), same in zip(undecided, (pool or default_pool()).check(pairs), strict=True):
            if same:
                parent = parents[p]
                parent[_find(parent, b)] = _find(parent, a)
    out = []
    for row, parent in zip(keys, parents, strict=True):
        # the class key: its earliest member in sample order
        first: dict[str, str] = {}
        for key in row:
            if key is not None and key in parent:
                first.setdefault(_find(parent, key), key)
        out.append([
            None if key is None else first[_find(parent, key)] if key in parent else key
            for key in row
        ])  # fmt: skip
    return out
